"""What every session shares: the policy, session ids and the counters."""

from __future__ import annotations

from collections import Counter

from alg.core.commands import Command
from alg.core.config import Config
from alg.core.reports import Report


class Context:
    __slots__ = ("config", "counters", "next_id")

    def __init__(self, config: Config, counters: Counter[str] | None = None) -> None:
        self.config = config
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.next_id = 1

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def report(self, out: list[Command], report: Report) -> None:
        """Append `report` to the commands and count it under its kind (and reason): the
        counters count every event, whatever the log later keeps of them."""
        self.count(report.kind.value)
        if report.reason is not None:
            self.count(f"{report.kind.value}.{report.reason.value}")
        out.append(report)
