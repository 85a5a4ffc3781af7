"""The `ftp-alg` command: one subcommand per adapter, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module exposes `register(subparsers)`, adding its subcommand(s) with a `func` default
# that takes the parsed namespace and returns an exit status.
_COMMAND_MODULES = (
    "alg.replay.command",
    "alg.bench",
    "alg.daemon.command",
    "alg.daemon.ha",
    "alg.kernel.rules_command",
    "alg.lab.command",
    "alg.doctor.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftp-alg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that adapter is not built in this tree
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
