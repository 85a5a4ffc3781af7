"""Command-line values the commands share (`run`, `rules`, `replay`): one parser each."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def parse_ports(text: str) -> tuple[int, ...]:
    """'21,2121' -> (21, 2121); duplicates dropped, order kept. The one parser of port lists
    on the command line (`run`, `rules`, `replay` all use it)."""
    ports: list[int] = []
    for item in text.split(","):
        try:
            port = int(item.strip())
        except ValueError:
            raise ValueError(f"not a port list: {text!r}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"ports are 1..65535, not {port} in {text!r}")
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def parse_balance(text: str) -> tuple[int, int]:
    """'2:5' -> (2, 5): the queues A..B of `--queue-balance` (A < B <= 65535)."""
    first, sep, last = text.partition(":")
    if sep and first.isdigit() and last.isdigit() and int(first) < int(last) <= 65535:
        return int(first), int(last)
    raise ValueError(f"queue balance must be A:B with A < B <= 65535, not {text!r}")


def cli_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` as an argparse type: its ValueError becomes the option's error message."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert
