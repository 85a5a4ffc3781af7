"""`python -m alg.doctor`: the doctor alone, without the other subcommands' imports."""

from __future__ import annotations

import argparse
import sys

from alg.doctor.command import add_options, doctor

parser = argparse.ArgumentParser(prog="python -m alg.doctor")
add_options(parser)
sys.exit(doctor(parser.parse_args()))
