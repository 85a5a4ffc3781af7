"""What a session does with the lines its protocol reads: act on addresses (the policy, the
expectation, the rewrite), on RFC 959's default data port, on refusals, and on TLS.

`Dialogue` is `Session`'s base: the stream mechanics (segments, holds, the kernel's record)
live in alg/core/session.py, the reading of lines here. Methods that may need an answer from
the kernel are generators (`Work`): they yield the question (`Reserve`) and go on with the
answer.
"""

from __future__ import annotations

from collections.abc import Generator

from alg.core.commands import Command, DataExpectation, FlowKey, Reserve, Withdraw
from alg.core.context import Context
from alg.core.grammar import format_span
from alg.core.policy import Plan, decide, decide_default
from alg.core.protocol import (
    Address,
    Blind,
    Closing,
    DefaultPort,
    Notice,
    Protocol,
    Refused,
    Signal,
    State,
)
from alg.core.reports import EventKind, Reason, Report
from alg.core.seqadj import MASK, seq_diff
from alg.core.stream import Stream
from alg.core.text import show_addr, show_line
from alg.core.tls import TlsWalker

Work = Generator[Reserve, "int | None", None]


class Dialogue:
    """The line-reading half of a session (see the module docstring)."""

    __slots__ = ("closing_at", "expect", "expect_deadline")
    # Set by Session.__init__:
    ctx: Context
    id: int
    family: int
    tuples: tuple[FlowKey, FlowKey]
    protocol: Protocol
    orig: Stream
    reply: Stream

    def __init__(self) -> None:
        self.closing_at: float | None = None  # when the connection began to end
        self.expect: DataExpectation | None = None  # the one outstanding per session
        self.expect_deadline = 0.0

    def report(self, out: list[Command], report: Report) -> None:
        self.ctx.report(out, report)

    def _read(self, half: Stream, new: bytes, start: int, now: float, out: list[Command]) -> Work:
        if half.tls is not None:
            idx = half.tls.feed(new)
            if idx < 0:
                return
            half.tls = None
            half.lines.reset(start + idx)
            self._clear_text(half, new[idx : idx + 60], out)
            new, start = new[idx:], start + idx
        config = self.ctx.config
        from_client = half is self.orig
        for line, line_start, overflow in half.lines.feed(new, start, config.max_line):
            if half.tls is not None:
                break  # AUTH TLS took effect inside this segment: the rest is TLS
            if self.protocol.state is State.BLIND:
                break  # the server's clear text while the client stays in TLS: not a reply
            if from_client:
                meaning = self.protocol.command(line, overflow)
            else:
                meaning = self.protocol.reply(line, overflow)
            if meaning is None:
                continue
            if isinstance(meaning, Address):
                yield from self._address(half, meaning, line_start, now, out)
            elif isinstance(meaning, Refused):
                self._refuse(out, meaning)
            elif isinstance(meaning, Notice):
                self.report(out, Report(meaning.kind, self.id, meaning.message))
            elif isinstance(meaning, Blind):
                self._go_blind(out)
            elif isinstance(meaning, DefaultPort):
                yield from self._default_port(meaning.line, now, out)
            elif isinstance(meaning, Closing) and self.closing_at is None:
                self.closing_at = now  # the gateway forgets the session after `linger`
        if half.tls is not None and half.lines.partial:
            half.lines.reset(0)

    def _clear_text(self, half: Stream, text: bytes, out: list[Command]) -> None:
        """Clear text where the next TLS record should be. The CCC that ends TLS (RFC 4217
        12.3) is itself encrypted: the client's next command in clear text is the sign that
        it was sent and accepted. Clear text from the server alone is something else (vsftpd
        writes `500 OOPS: vsf_sysutil_recv_peek` after a client dropped TLS): say what."""
        seen = show_line(text, 60)
        if half is self.orig:
            self.protocol.signal(Signal.CLEAR_TEXT)
            message = f"back in clear text after the client's CCC: '{seen}'"
        elif self.protocol.state is State.BLIND:
            message = (
                f"the server wrote clear text while the client stays in TLS (no CCC): '{seen}'"
            )
        else:
            message = f"the server's side back in clear text after the client's CCC: '{seen}'"
        self.report(out, Report(EventKind.CLEAR, self.id, message))

    def _refuse(self, out: list[Command], refused: Refused) -> None:
        self.report(
            out,
            Report(
                EventKind.REFUSAL,
                self.id,
                refused.message,
                refused.reason,
                before=show_line(refused.line),
            ),
        )

    def _go_blind(self, out: list[Command]) -> None:
        for half in (self.orig, self.reply):
            half.tls = TlsWalker()
            half.lines.reset(0)
        self.report(
            out,
            Report(
                EventKind.BLIND,
                self.id,
                "AUTH TLS accepted (234): the control connection is encrypted from "
                "here on; PORT/PASV cannot be seen or rewritten until the client sends CCC "
                "(active mode behind NAT will fail; passive works only if the server names its "
                "public address)",
            ),
        )

    # ---- addresses -----------------------------------------------------------------------

    def _address(
        self, half: Stream, address: Address, line_start: int, now: float, out: list[Command]
    ) -> Work:
        """Policy, then the expectation and the rewrite of one address-bearing line."""
        hp, line = address
        config = self.ctx.config
        plan = self._settled(
            decide(hp, line, half is self.orig, self.id, self.family, self.tuples, config),
            line,
            out,
        )
        if plan is None:
            return
        what = hp.kind.value
        span = (line_start + hp.start) & MASK
        if not plan.fixed:
            if len(half.exact.active) >= config.max_corrections:
                self._refuse(
                    out,
                    Refused(
                        Reason.TOO_MANY_REWRITES,
                        f"{what}: {len(half.exact.active)} rewrites not yet acknowledged",
                        line,
                    ),
                )
                return
            if seq_diff(span, half.sent_upto) < 0:
                self._refuse(
                    out,
                    Refused(
                        Reason.SPLIT_RELEASED,
                        f"{what}: part of the address already left the gateway unchanged "
                        "(hold timed out)",
                        line,
                    ),
                )
                return
        exp = yield from self._reserve(plan, what, line, now, out)
        if exp is not None:
            self._rewrite(half, plan, exp, address, span, out)

    def _default_port(self, line: bytes, now: float, out: list[Command]) -> Work:
        """A transfer with no PORT/PASV in effect: expect the server's connection from port 20
        on the control connection's outside port, sent on to the client's control port."""
        config = self.ctx.config
        decided = decide_default(line, self.id, self.family, self.tuples, config)
        plan = self._settled(decided, line, out)
        if plan is None:
            return
        exp = yield from self._reserve(plan, "default data port", line, now, out)
        if exp is None:
            return
        self.report(
            out,
            Report(
                EventKind.FORWARD,
                self.id,
                f"default data port (RFC 959 3.2, no PORT or PASV before this transfer): "
                f"expecting {show_addr(exp.peer)} (port 20 by the RFC, any accepted) -> "
                f"{show_addr(exp.outside)}:{exp.outside_port}, sent on to "
                f"{show_addr(exp.inside)}:{exp.inside_port}",
                before=show_line(line),
            ),
        )

    def _settled(
        self, plan: Plan | Refused | Notice, line: bytes, out: list[Command]
    ) -> Plan | None:
        """The plan to act on; None when the policy refused or only noted the line (said)."""
        if isinstance(plan, Refused):
            self._refuse(out, plan)
            return None
        if isinstance(plan, Notice):
            self.report(out, Report(plan.kind, self.id, plan.message, before=show_line(line)))
            return None
        return plan

    def _reserve(
        self, plan: Plan, what: str, line: bytes, now: float, out: list[Command]
    ) -> Generator[Reserve, int | None, DataExpectation | None]:
        """The session's one expectation (newest wins): the adapter creates it and says
        which outside port it got, or None."""
        if self.expect is not None:
            out.append(Withdraw(self.expect))
            self.expect = None
        port = yield Reserve(plan.proposal, plan.fixed)
        if port is None:
            self._refuse(
                out,
                Refused(Reason.NO_PORT, f"{what}: no outside port could be reserved", line),
            )
            return None
        exp = plan.proposal._replace(outside_port=port)
        self.expect, self.expect_deadline = exp, now + exp.timeout
        return exp

    def _rewrite(
        self,
        half: Stream,
        plan: Plan,
        exp: DataExpectation,
        address: Address,
        span: int,
        out: list[Command],
    ) -> None:
        hp, line = address
        what = hp.kind.value
        old = line[hp.start : hp.end]
        new = old if plan.fixed else format_span(hp, plan.announce, exp.outside_port)
        if new == old:
            self.report(
                out,
                Report(
                    EventKind.FORWARD,
                    self.id,
                    f"{what} port {exp.outside_port}: text unchanged, data connection sent on "
                    f"to {show_addr(exp.inside)}",
                    before=show_line(line),
                ),
            )
            return
        half.exact.add(span, len(old), new)
        after = line[: hp.start] + new + line[hp.end :]
        self.ctx.count(f"rewrite.{hp.kind.value.lower()}")  # by kind: port, eprt, 227, ...
        self.report(
            out,
            Report(
                EventKind.REWRITE,
                self.id,
                f"{what} {show_addr(exp.inside)}:{hp.port} -> {show_addr(exp.outside)}:"
                f"{exp.outside_port} (delta {len(new) - len(old):+d})",
                before=show_line(line),
                after=show_line(after),
            ),
        )

    # ---- lifetime ------------------------------------------------------------------------
