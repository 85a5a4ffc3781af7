"""The executor of the core's commands: verdicts, kernel questions, seqadj writes, log lines.

Queued packets are netfilterqueue Packet objects: a verdict may be given long after the
callback returned (netfilterqueue keeps the Packet valid), so the core's handle is the object.
A question (`Lookup`, `Reserve`) is always the last command of its list; its answer goes back
to the core at once and the commands it yields run before anything else, in order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

from alg.core import (
    Accept,
    Command,
    DataExpectation,
    Dir,
    Drop,
    FlowKey,
    Found,
    Gateway,
    Lookup,
    NotFound,
    Report,
    Reserve,
    Reserved,
    SeqAdjRecord,
    Withdraw,
    WriteSeqAdj,
)
from alg.core.text import show_addr
from alg.daemon.conntrack import expected_tuple
from alg.daemon.ftps import FtpsRanges
from alg.daemon.ratelimit import CHECKED

log = logging.getLogger("ftp-alg")


LogGate = Callable[[tuple[Hashable, Hashable], int], bool]


def log_report(report: Report, gate: LogGate | None = None) -> None:
    """One log line for `report`. `gate` (the rate limiter's `allows`) is asked before the
    record is built: a refused line then costs a dictionary look-up, not a LogRecord."""
    level = int(report.kind.level)
    if not log.isEnabledFor(level):
        return
    reason = f" [{report.reason}]" if report.reason else ""
    key = f"{report.kind}{reason}"
    if gate is not None and not gate((report.session, key), level):
        return
    detail = ""
    if report.before:
        detail += f" before={report.before!r}"
    if report.after:
        detail += f" after={report.after!r}"
    log.log(
        level,
        "session %d %s%s: %s%s",
        report.session,
        report.kind,
        reason,
        report.message,
        detail,
        # The rate limiter's key: bounce and low-port refusals are limited separately.
        extra={"session": report.session, "kind": key, CHECKED: gate is not None},
    )


class ConntrackSide(Protocol):
    """What the executor asks of conntrack (ConntrackAdapter; a scripted kernel in tests)."""

    def lookup(self, key: FlowKey, from_server: bool = False) -> Found | NotFound: ...
    def reserve(self, exp: DataExpectation, fixed: bool = False) -> int | None: ...
    def write_seqadj(self, original: FlowKey, direction: Dir, record: SeqAdjRecord) -> bool: ...
    def withdraw(self, exp: DataExpectation) -> None: ...


class Executor:
    """Runs the core's commands against the queue, the kernel and the log."""

    def __init__(self, gw: Gateway, kernel: ConntrackSide, clock: Callable[[], float]) -> None:
        self.gw = gw
        self.kernel = kernel
        self.clock = clock
        self.counters = gw.counters  # one tally: the core's events and the verdicts beside them
        self.ftps = FtpsRanges((), gw.session_tuples, self.counters)  # loop.py sets the ranges
        self.log_gate: LogGate | None = None  # loop.py sets the rate limiter's `allows`

    def run(self, commands: Iterable[Command]) -> None:
        todo: deque[Command] = deque(commands)
        self.ftps.tick(self.clock())
        while todo:
            cmd = todo.popleft()
            try:
                more = self._one(cmd)
            except Exception:  # one failed command must not cost the others their turn
                self.counters["errors"] += 1
                log.exception("internal error carrying out %s", type(cmd).__name__)
                if isinstance(cmd, Accept | Drop):
                    self._fallback(cmd)
                continue
            if more:
                todo.extendleft(reversed(more))

    def _fallback(self, cmd: Accept | Drop) -> None:
        """The packet still gets its verdict: as it came, or dropped if that was the order."""
        pkt: Any = cmd.handle
        try:
            pkt.drop() if isinstance(cmd, Drop) else pkt.accept()
        except Exception:  # the verdict was given before the failure
            log.debug("no second verdict for a packet", exc_info=True)

    def _one(self, cmd: Command) -> list[Command] | None:
        if isinstance(cmd, Accept):
            pkt: Any = cmd.handle
            if cmd.data is not None:
                pkt.set_payload(cmd.data)
                self.counters["packets-changed"] += 1
            pkt.accept()
        elif isinstance(cmd, Drop):
            self.counters["packets-dropped"] += 1
            cmd.handle.drop()  # type: ignore[attr-defined]
        elif isinstance(cmd, Report):
            log_report(cmd, self.log_gate)
            self.ftps.on_report(cmd)
        elif isinstance(cmd, WriteSeqAdj):
            self.kernel.write_seqadj(cmd.original, cmd.direction, cmd.record)
        elif isinstance(cmd, Withdraw):
            self.kernel.withdraw(cmd.expectation)
        elif isinstance(cmd, Lookup):
            return self.gw.answer(self.kernel.lookup(cmd.key, cmd.from_server), self.clock())
        elif isinstance(cmd, Reserve):
            exp = cmd.proposal
            port = self.kernel.reserve(exp, cmd.fixed)
            if port is not None:
                log.debug(
                    "session %d expectation %s => %s:%d",
                    exp.session,
                    expected_tuple(exp, port),
                    show_addr(exp.inside),
                    exp.inside_port,
                )
            return self.gw.answer(Reserved(exp.session, port), self.clock())
        return None
