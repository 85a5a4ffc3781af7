"""One control connection: its two streams, its protocol state, and what it asks the kernel.

`segment` is a generator (mitmproxy's layers): it appends commands to `out` and, when it
needs the kernel to answer (`Reserve`: create an expectation, which port?), it yields the
question and receives the answer, then goes on where it stopped. The gateway drives it.
"""

from __future__ import annotations

from alg.core.commands import (
    Command,
    Dir,
    Drop,
    FlowKey,
    Handle,
    Withdraw,
)
from alg.core.context import Context
from alg.core.dialogue import Dialogue, Work
from alg.core.packet import ACK, FIN, RST, SYN, Segment
from alg.core.protocol import (
    SEARCHED,
    Protocol,
    State,
)
from alg.core.reports import EventKind, Report
from alg.core.seqadj import MASK, SeqAdjRecord, seq_diff
from alg.core.stream import COALESCE_MAX, Held, Stream, verdict
from alg.core.text import show_line


class Session(Dialogue):
    """State of one control connection, from its first queued segment until conntrack
    forgets it."""

    __slots__ = (
        "busy",
        "conn_id",
        "ctx",
        "family",
        "id",
        "last_seen",
        "orig",
        "parked",
        "protocol",
        "reply",
        "suspended",
        "tuples",
    )

    def __init__(
        self,
        ctx: Context,
        tuples: tuple[FlowKey, FlowKey],
        family: int,
        now: float,
        records: tuple[SeqAdjRecord | None, SeqAdjRecord | None],
        fresh: bool,
        from_login: bool = False,
    ) -> None:
        self.ctx = ctx
        self.id = ctx.next_id
        ctx.next_id += 1
        self.tuples = tuples  # conntrack's (original, reply): the NAT mapping
        self.family = family
        config = ctx.config
        self.protocol = Protocol(
            State.GREETING if fresh else State.COMMANDS,
            config.max_pending,
            config.max_line,
            from_login=from_login,
        )
        self.orig = Stream(Dir.ORIGINAL)
        self.reply = Stream(Dir.REPLY)
        for stream, record in zip((self.orig, self.reply), records, strict=True):
            if record is not None and not record.identity:
                stream.resume(record)
        super().__init__()
        self.last_seen = now
        self.conn_id = 0  # conntrack's id of the connection, when the adapter knows it
        self.suspended: Work | None = None  # waiting for an answer
        self.busy: Handle | None = None  # the packet the suspended work is about
        # Packets that arrived while the work waited for an answer (a list only then).
        self.parked: list[tuple[Stream, Segment, Handle]] | None = None

    def __repr__(self) -> str:
        return f"session {self.id}"

    def peer(self, stream: Stream) -> Stream:
        return self.reply if stream is self.orig else self.orig

    # ---- segments ------------------------------------------------------------------------

    def segment(
        self, half: Stream, seg: Segment, handle: Handle, now: float, out: list[Command]
    ) -> Work:
        self.last_seen = now
        other = self.peer(half)
        flags = seg.flags
        ack = None
        if flags & ACK:
            ack = other.true_ack(seg.ack)
            other.note_ack(ack)
            if half is self.orig and self.ctx.config.replies_unqueued:
                half.answered(ack)  # the server's acks ride on replies we do not see
            if other.held and other.record_end is None:
                self.drain(other, now, out)  # a rewrite waiting for this ack may go now
            if other.hole_passed():
                yield from self._skip_hole(other, now, out)
        if flags & SYN:
            half.start(seg.seq + 1)
        if flags & (FIN | RST):
            half.fin = half.fin or bool(flags & FIN)
            if (flags & RST or (half.fin and other.fin)) and self.closing_at is None:
                self.closing_at = now
        if seg.end == seg.poff or flags & (SYN | RST):
            out.append(verdict(handle, half.build(other, seg, seg.seq, None, ack, self.ctx.config)))
            return
        yield from self._data(half, seg, handle, ack, now, out)

    def _data(
        self,
        half: Stream,
        seg: Segment,
        handle: Handle,
        ack: int | None,
        now: float,
        out: list[Command],
    ) -> Work:
        config = self.ctx.config
        seq, length = seg.seq, seg.end - seg.poff
        if half.next_seq is None:
            # The first payload seen (SYNs are not queued). The peer's ack, when known, says
            # where the stream stands: a segment after it arrived out of order.
            acked = half.acked
            ahead = acked is not None and 0 < seq_diff(seq, acked) < config.max_line
            half.start(acked if ahead and acked is not None else seq)
        assert half.next_seq is not None
        rel = seq_diff(seq, half.next_seq)
        if rel > 0:
            twin = half.ooo.get(seq)
            if twin is not None:  # a copy of a segment already waiting: keep the longer one
                keep_new = len(seg.payload) > len(twin[1].payload)
                out.append(Drop(twin[0] if keep_new else handle))
                self.ctx.count("held.retransmission-dropped")
                if keep_new:
                    half.keep_ooo(seq, (handle, seg, ack))
                return
            if half is self.reply and config.replies_unqueued and self._unqueued(half, seg):
                self._gap(half, seq, rel, now, out, quiet=True)
                rel = 0
            if rel > 0 and len(half.ooo) < config.max_held:
                half.keep_ooo(seq, (handle, seg, ack))
                if half.hole_passed():
                    yield from self._skip_hole(half, now, out)
                    return
                if half.hold_deadline is None:
                    half.hold_deadline = now + config.hold_timeout
                self.ctx.count("held.out-of-order")
                return
            if rel > 0:
                self._gap(half, seq, rel, now, out)
                rel = 0
        if rel + length <= 0:  # nothing new: a retransmission
            if half.held and seq_diff(seq + length, half.held[0].seq) > 0:
                self.ctx.count("held.retransmission-dropped")
                out.append(Drop(handle))
                return
            start, data = seq, None
            acked = half.acked
            if acked is not None and seq_diff(acked, seq) > 0:
                # The receiver has the front of it: send only what it may lack. The exact map
                # no longer knows how acknowledged bytes were rewritten, and the kernel's
                # record may place them wrongly; a segment from `acked` on is exact.
                cut = seq_diff(acked, seq)
                start, data = (acked, b"") if cut >= length else (seq + cut, seg.payload[cut:])
                self.ctx.count("retransmission-trimmed")
            built = half.build(self.peer(half), seg, start & MASK, data, ack, config)
            if not isinstance(built, bytes | None):
                self.ctx.count("retransmission-unplaceable")
            out.append(verdict(handle, built))
            return
        start = half.next_seq
        new = seg.payload[-rel:] if rel < 0 else seg.payload
        half.next_seq = (seq + length) & MASK
        self.busy = handle
        yield from self._read(half, new, start, now, out)
        self.busy = None
        half.held.append(Held(handle, seg, start, new, ack))
        if self._may_hold(half):
            if not half.line_hold:
                half.line_hold, half.hold_line = True, half.lines.start
                if half.hold_deadline is None:
                    half.hold_deadline = now + config.hold_timeout
            self.ctx.count("held")
        else:
            if half.line_hold:
                half.line_hold = False
                half.coalesce(self.ctx, out)
            self.drain(half, now, out)
        if half.ooo:  # the rest of a split line may be waiting there, out of order
            yield from self._in_order(half, now, out)

    def _may_hold(self, half: Stream) -> bool:
        partial = half.lines.partial
        if not partial or half.lines.overflow or half.tls is not None:
            return False
        if not self.protocol.may_carry_address(half is self.orig, partial):
            return False
        room = half.held_bytes + self.ctx.config.max_line - len(partial)
        if len(half.held) > self.ctx.config.max_held or room > COALESCE_MAX:
            # Too much to coalesce into one segment: let it go; should the line carry an
            # address after all, its rewrite is refused (split-released).
            self.ctx.count("held.too-large")
            return False
        return True

    def drain(self, half: Stream, now: float, out: list[Command], force: bool = False) -> None:
        half.drain(self.peer(half), self.tuples[0], now, self.ctx, out, force)

    def _unqueued(self, half: Stream, seg: Segment) -> bool:
        """Is this hole in the reply stream plain replies the kernel's skip rule let pass,
        so that reading may resume at `seg` without waiting for the client's ack?

        Skipped segments are whole lines, so a segment after them starts a line. The hole
        could also be a loss before the router, whose retransmission would then arrive as
        old bytes and pass unread: harmless unless it is the 227/228/229 of a passive
        command still waiting (a client that pipelined PASV and LIST, the 227 lost, the
        150 first). Then only that reply itself resumes reading at once."""
        payload = seg.payload
        code = payload[:3]
        if half.ooo or not code.isdigit() or payload[3:4] not in (b" ", b"-"):
            return False
        return code in SEARCHED or not self.protocol.awaits_passive()

    def _skip_hole(self, half: Stream, now: float, out: list[Command]) -> Work:
        """The far side acknowledged bytes of the hole: they passed without us."""
        first = half.first_ooo()
        quiet = half is self.reply and self.ctx.config.replies_unqueued
        self._gap(half, first, seq_diff(first, half.next_seq or first), now, out, quiet)
        yield from self._in_order(half, now, out)

    def _in_order(self, half: Stream, now: float, out: list[Command]) -> Work:
        """Out-of-order segments whose turn has come, in sequence order."""
        while half.ooo:
            assert half.next_seq is not None
            seq = half.first_ooo()
            if seq_diff(seq, half.next_seq) > 0:
                return
            handle, seg, ack = half.ooo.pop(seq)
            yield from self._data(half, seg, handle, ack, now, out)

    def _gap(
        self,
        half: Stream,
        seq: int,
        missing: int,
        now: float,
        out: list[Command],
        quiet: bool = False,
    ) -> None:
        """Bytes before `seq` were never seen (lost before us, not captured, or `quiet`:
        replies the kernel let pass unqueued, only counted): resync."""
        if half is self.orig:
            self.protocol.commands_lost()
        else:
            self.protocol.replies_lost()
        self.drain(half, now, out, force=True)
        half.start(seq)
        if quiet:
            self.ctx.count("replies-unqueued")
            return
        self.report(
            out,
            Report(
                EventKind.GAP,
                self.id,
                f"{missing} bytes of the {half.dir.name} stream never seen; "
                "reading resumes at this segment",
            ),
        )

    def expire(self, now: float, out: list[Command]) -> Work:
        """Hold deadlines: a split line's segments leave as they are, a rewrite waiting for
        an acknowledgement replaces the record anyway, a hole in the stream becomes a gap."""
        for half in (self.orig, self.reply):
            if half.hold_deadline is None or half.hold_deadline > now:
                continue
            half.hold_deadline = None
            if half.held:
                what = (
                    f"line '{show_line(half.lines.partial, 80)}' still incomplete"
                    if half.line_hold
                    else "a rewrite still waiting for the previous one's acknowledgement"
                )
                self.report(
                    out,
                    Report(
                        EventKind.HOLD_TIMEOUT,
                        self.id,
                        f"{half.dir.name} {what} after {self.ctx.config.hold_timeout:g} s: "
                        "its segments leave",
                    ),
                )
                self.drain(half, now, out, force=True)
            if half.ooo:
                first = half.first_ooo()
                self._gap(half, first, seq_diff(first, half.next_seq or first), now, out)
                yield from self._in_order(half, now, out)

    def end(self, reason: str, now: float) -> list[Command]:
        """Forget the session: every queued packet it holds gets its verdict, the
        outstanding expectation is withdrawn."""
        out: list[Command] = []
        if self.suspended is not None:
            self.suspended.close()
            self.suspended = None
        if self.busy is not None:
            out.append(verdict(self.busy, None))
            self.busy = None
        for _, _, handle in self.parked or ():
            out.append(verdict(handle, None))
        self.parked = None
        for half in (self.orig, self.reply):
            self.drain(half, now, out, force=True)
            for handle, _, _ in half.ooo.values():
                out.append(verdict(handle, None))
            half.ooo.clear()
        if self.expect is not None:
            out.append(Withdraw(self.expect))
            self.expect = None
        self.report(
            out,
            Report(
                EventKind.SESSION_END,
                self.id,
                f"{reason}; seq offsets ORIGINAL {self.orig.exact.offset:+d}, "
                f"REPLY {self.reply.exact.offset:+d}",
            ),
        )
        return out
