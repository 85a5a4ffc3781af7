"""Coverage-guided fuzzing (atheris, libFuzzer) of the grammar and packet parse/rebuild.

The first input byte picks the target (command line, reply line, packet); the rest is the
input. The invariants are those of the hypothesis tests (parser_invariants.py): any escaping
exception or failed assertion is a finding, and libFuzzer saves the input as crash-*.

    .venv/bin/pip install atheris
    .venv/bin/python -m tests.core.fuzz_atheris -runs=200000 -max_len=512

Not collected by pytest (the name does not start with test_).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

with atheris.instrument_imports(include=["alg"]):
    from tests.core.parser_invariants import check_command, check_packet, check_reply

_TARGETS = (check_command, check_reply, check_packet)


def one_input(data: bytes) -> None:
    if not data:
        return
    _TARGETS[data[0] % len(_TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
