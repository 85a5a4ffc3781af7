"""One FTP control connection: its two directions and what flows through them.

Each direction (`Half`) follows the sender's in-order stream: bytes up to `next_seq` have
been seen, bytes up to `sent_upto` have left the gateway. New bytes are cut into lines and
handed to `ftp` (the protocol rules); a rewrite becomes a correction in the direction's
`SeqAdj`, which then shapes every packet of that direction (seq, payload) and of the other
(ack, SACK).

Split lines. No segment may leave carrying part of an address that will need changing, so
when a segment ends in a partial line that may still become address-bearing ("PORT 10,7" or
"22" while a PASV awaits its answer) the segment is held. Its continuation completes the
line; the rewrite is decided; the held segments are released rewritten up to where they end
and the continuation carries the rest (`SeqAdj.emit`). A hold ends within `hold_timeout` in
every case: on expiry the held segments leave unchanged and, if the line then turns out to
carry an address whose text already left, that rewrite is refused with a reason.
"""

from __future__ import annotations

from alg.core import ftp
from alg.core.context import Context
from alg.core.events import (
    ACCEPT,
    Action,
    Dir,
    Drop,
    Event,
    Expectation,
    FlowKey,
    Outcome,
    Release,
    Unexpect,
    Verdict,
)
from alg.core.lines import LineBuffer
from alg.core.packet import ACK, FIN, RST, SYN, Segment, has_sack, rebuild
from alg.core.seqadj import MASK, SeqAdj, seq_diff
from alg.core.text import show_line
from alg.core.tls import TlsWalker

Held = tuple[object, Segment, int]  # (handle, segment, its ack as mapped on arrival)


class Half:
    """One direction of the control connection, named by conntrack's direction."""

    __slots__ = (
        "adj",
        "dir",
        "fin",
        "held",
        "hold_deadline",
        "lines",
        "next_seq",
        "peer",
        "sent_upto",
        "session",
        "tls",
    )

    def __init__(self, session: Session, direction: Dir) -> None:
        self.session = session
        self.dir = direction
        self.adj = SeqAdj()
        self.lines = LineBuffer()
        self.next_seq: int | None = None
        self.sent_upto = 0
        self.held: list[Held] | None = None
        self.hold_deadline = 0.0
        self.tls: TlsWalker | None = None
        self.fin = False
        self.peer: Half = self  # set by Session

    def start(self, seq: int) -> None:
        self.next_seq = self.sent_upto = seq & MASK
        self.lines.reset(seq)


class Session:
    """State of one control connection, from its first packet until conntrack forgets it."""

    __slots__ = (
        "closing_at",
        "ctx",
        "expect",
        "expect_deadline",
        "family",
        "greeted",
        "id",
        "key",
        "last_seen",
        "multiline",
        "orig",
        "pending",
        "reply",
        "reply_found",
        "reply_key",
        "tls_reported",
    )

    def __init__(self, ctx: Context, key: FlowKey, family: int, now: float, greeted: bool):
        self.ctx = ctx
        self.id = ctx.next_id
        ctx.next_id += 1
        self.key = key
        self.reply_key: FlowKey | None = None
        self.family = family
        self.orig = Half(self, Dir.ORIGINAL)
        self.reply = Half(self, Dir.REPLY)
        self.orig.peer, self.reply.peer = self.reply, self.orig
        self.pending: list[bytes] | None = None  # verbs awaiting their replies
        self.greeted = greeted  # the server's greeting has been seen (or we joined midway)
        self.multiline: bytes | None = None  # code of the multi-line reply in progress
        self.reply_found = False  # the reply in progress already had its address handled
        self.expect: Expectation | None = None
        self.expect_deadline = 0.0
        self.last_seen = now
        self.closing_at: float | None = None
        self.tls_reported = False

    def __repr__(self) -> str:
        return f"session {self.id}"

    # ---- packets -------------------------------------------------------------------------

    def segment(self, half: Half, seg: Segment, handle: object, now: float) -> Outcome:
        self.last_seen = now
        other = half.peer
        flags = seg.flags
        ack = seg.ack
        if flags & ACK and not other.adj.identity:
            ack = other.adj.to_in(ack)
            if other.next_seq is not None and seq_diff(ack, other.next_seq) <= 0:
                other.adj.acked(ack)
        if flags & SYN:
            half.start(seg.seq + 1)
        if flags & (FIN | RST):
            self._closing(half, flags, now)
        if seg.end == seg.poff or flags & (SYN | RST):
            data = self._build(half, seg, ack, None)
            return ACCEPT if data is None else Outcome(Verdict.ACCEPT, data)
        return self._data(half, seg, handle, ack, now)

    def _closing(self, half: Half, flags: int, now: float) -> None:
        if flags & FIN:
            half.fin = True
        if (flags & RST or (half.fin and half.peer.fin)) and self.closing_at is None:
            self.closing_at = now

    def _data(self, half: Half, seg: Segment, handle: object, ack: int, now: float) -> Outcome:
        seq, length = seg.seq, seg.end - seg.poff
        out: list[Action] = []
        if half.next_seq is None:
            half.start(seq)  # joined an established connection: assume a line starts here
        rel = seq_diff(seq, half.next_seq)  # type: ignore[arg-type]
        if rel > 0:
            self._gap(half, seq, rel, out)
            rel = 0
        if rel + length <= 0:  # nothing new: a retransmission
            if half.held and seq_diff(seq + length, half.sent_upto) > 0:
                self.ctx.count("held.retransmission-dropped")
                return Outcome(Verdict.DROP)
            data = self._build(half, seg, ack, seg.payload)
            return _outcome(data, out)
        start = half.next_seq
        new = seg.data[seg.poff - rel : seg.end] if rel < 0 else seg.payload
        half.next_seq = (seq + length) & MASK
        self._read(half, new, start, now, out)  # type: ignore[arg-type]
        if self._may_hold(half):
            return self._hold(half, seg, handle, ack, now, out)
        self._release(half, out, seg)
        half.sent_upto = half.next_seq
        data = self._build(half, seg, ack, seg.payload)
        return _outcome(data, out)

    def _gap(self, half: Half, seq: int, missing: int, out: list[Action]) -> None:
        """Bytes before `seq` were never seen (lost before us, or not captured): resync."""
        self._release(half, out)
        self.ctx.event(
            out,
            Event(
                "gap",
                self.id,
                f"{missing} bytes of the {half.dir.name} stream never seen; "
                "reading resumes at this segment",
            ),
        )
        half.start(seq)
        self.multiline = None if half.dir is Dir.REPLY else self.multiline

    def _read(self, half: Half, new: bytes, start: int, now: float, out: list[Action]) -> None:
        if half.tls is not None:
            idx = half.tls.feed(new)
            if idx < 0:
                return
            half.tls = None
            half.lines.reset(start + idx)
            self.ctx.event(
                out,
                Event(
                    "clear", self.id, f"{half.dir.name} stream back in clear text after TLS (CCC)"
                ),
            )
            new, start = new[idx:], start + idx
        max_line = self.ctx.config.max_line
        for line, line_start, overflow in half.lines.feed(new, start, max_line):
            if half.tls is not None:
                break  # AUTH TLS took effect inside this segment: the rest is TLS
            ftp.on_line(self, half, line, line_start, overflow, now, out)
        if half.tls is not None and half.lines.partial:
            half.lines.reset(0)

    def _may_hold(self, half: Half) -> bool:
        partial = half.lines.partial
        if not partial or half.lines.overflow or half.tls is not None:
            return False
        return ftp.may_carry_address(self, half, partial)

    def _hold(
        self, half: Half, seg: Segment, handle: object, ack: int, now: float, out: list[Action]
    ) -> Outcome:
        if half.held is None:
            half.held = []
            half.hold_deadline = now + self.ctx.config.hold_timeout
        elif len(half.held) >= self.ctx.config.max_held:
            self.ctx.event(
                out,
                Event(
                    "hold-limit", self.id, f"{len(half.held)} segments held for one line: released"
                ),
            )
            self._release(half, out, seg)
            half.sent_upto = half.next_seq  # type: ignore[assignment]
            return _outcome(self._build(half, seg, ack, seg.payload), out)
        half.held.append((handle, seg, ack))
        self.ctx.count("held")
        return Outcome(Verdict.HOLD, None, tuple(out))

    def _release(self, half: Half, out: list[Action], covering: Segment | None = None) -> None:
        """Let every held segment of `half` go, rewritten as far as the lines are known."""
        if not half.held:
            half.held = None
            return
        for handle, seg, ack in half.held:
            if covering is not None and _covers(covering, seg):
                out.append(Drop(handle))  # a retransmission carries all of it again
            else:
                out.append(Release(handle, self._build(half, seg, ack, seg.payload)))
        half.held = None
        half.sent_upto = half.next_seq  # type: ignore[assignment]

    def expire_hold(self, half: Half, now: float) -> list[Action]:
        out: list[Action] = []
        self.ctx.event(
            out,
            Event(
                "hold-timeout",
                self.id,
                f"{half.dir.name} line '{show_line(half.lines.partial, 80)}' still incomplete "
                f"after {self.ctx.config.hold_timeout:g} s: its segments leave unchanged",
            ),
        )
        self._release(half, out)
        return out

    def _build(self, half: Half, seg: Segment, ack: int, payload: bytes | None) -> bytes | None:
        """The packet as it leaves, or None when it leaves unchanged."""
        adj, other = half.adj, half.peer.adj
        seq = seg.seq
        new_payload = None
        if not adj.identity:
            seq = adj.to_out(seq)
            if payload is not None and adj.active:
                emitted = adj.emit(seg.seq, payload)
                if emitted is not payload:
                    new_payload = emitted
        sack = other.sack if not other.identity and has_sack(seg) else None
        full = self.ctx.config.full_checksum
        if seq == seg.seq and ack == seg.ack and new_payload is None and sack is None and not full:
            return None
        return rebuild(seg, seq, ack, new_payload, sack, full)

    # ---- lifetime ------------------------------------------------------------------------

    def end(self, reason: str) -> list[Action]:
        """Forget the session: held segments go, the outstanding expectation is withdrawn."""
        out: list[Action] = []
        for half in (self.orig, self.reply):
            self._release(half, out)
        if self.expect is not None:
            out.append(Unexpect(self.expect))
            self.expect = None
        self.ctx.event(
            out,
            Event(
                "session-end",
                self.id,
                f"{reason}; seq offsets ORIGINAL {self.orig.adj.offset:+d}, "
                f"REPLY {self.reply.adj.offset:+d}",
            ),
        )
        return out


def _covers(seg: Segment, inner: Segment) -> bool:
    return (
        seq_diff(inner.seq, seg.seq) >= 0
        and seq_diff(seg.seq + (seg.end - seg.poff), inner.seq + (inner.end - inner.poff)) >= 0
    )


def _outcome(data: bytes | None, out: list[Action]) -> Outcome:
    if data is None and not out:
        return ACCEPT
    return Outcome(Verdict.ACCEPT, data, tuple(out))
