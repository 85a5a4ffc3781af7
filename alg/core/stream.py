"""One direction of a control connection as bytes: order, lines, holds and sequence numbers.

The kernel holds the offsets. Every length-changing rewrite becomes the direction's seqadj
record (`WriteSeqAdj`, carried out before the verdict of the segment that carries it); the
kernel then shifts seq, ack and SACK of every later packet, queued or not, and pure ACKs
never leave it. The stream keeps the exact map beside the record and touches a packet only
where the record alone would let a wrong number out:

- a segment carrying a rewrite leaves with its new payload, after its record is written;
- a second rewrite waits (bounded by `hold_timeout`) until the receiver has acknowledged the
  segment of the first (or, its acks unseen, answered it: `answered`), since the kernel keeps
  one correction per direction and would map the receiver's older ACKs wrongly once it is
  replaced;
- a line split over several segments is coalesced into one segment (no record can shift two
  halves of one rewritten span differently), when the result stays small enough;
- a retransmission of older data, and an ACK or SACK edge the record would map wrongly, is
  pre-compensated: given the number the kernel will produce from it, the right one.
Held segments always end in a verdict: released, coalesced (the others dropped), or, at
`hold_timeout`, let go as they are.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from alg.core.commands import Accept, Command, Dir, Drop, FlowKey, Handle, WriteSeqAdj
from alg.core.config import Config
from alg.core.context import Context
from alg.core.lines import LineBuffer
from alg.core.packet import Segment, has_sack, rebuild
from alg.core.seqadj import MASK, ExactMap, SeqAdjRecord, seq_diff
from alg.core.tls import TlsWalker

# Largest payload a coalesced segment may carry: the TCP payload of a 1280-byte IPv6 packet
# (the smallest MTU IPv6 allows), so it fits any path the parts came through.
NO_RECORD = SeqAdjRecord()  # shared: records are immutable, most streams never change
COALESCE_MAX = 1220


class Placement(Enum):
    UNPLACEABLE = "the kernel's record cannot land this segment where it belongs"


class Held(NamedTuple):
    """A segment of new bytes that has not left yet: [seq, seq + len(data))."""

    handle: Handle
    seg: Segment
    seq: int
    data: bytes
    ack: int | None  # its ack as the sender means it (mapped back on arrival)


# The table of out-of-order segments of every stream that has none: never written to
# (`Stream.keep_ooo` replaces it first).
_NO_OOO: dict[int, tuple[Handle, Segment, int | None]] = {}


class Stream:
    """The bytes one side sends, as they cross the gateway."""

    __slots__ = (
        "acked",
        "dir",
        "exact",
        "fin",
        "held",
        "hold_deadline",
        "hold_line",
        "horizon",
        "line_hold",
        "lines",
        "next_seq",
        "ooo",
        "record",
        "record_end",
        "record_peer_ack",
        "sent_upto",
        "tls",
        "unseen_ack",
    )

    def __init__(self, direction: Dir) -> None:
        self.dir = direction
        self.exact = ExactMap()
        self.record = NO_RECORD  # the kernel's record, as last written or read
        self.record_end: int | None = None  # end of the segment that set it, until acked
        # That segment's own ack of the far side's stream (see `answered`).
        self.record_peer_ack: int | None = None
        self.acked: int | None = None  # the receiver has every byte before this
        # An ack past every byte seen: the far side got bytes that never reached the queue
        # (lost before the capture point, or not queued); a hole before it will not fill.
        self.unseen_ack: int | None = None
        self.lines = LineBuffer()
        self.next_seq: int | None = None
        self.horizon = 0  # the first byte this session saw: older ones are the kernel's
        self.sent_upto = 0
        self.held: list[Held] = []
        self.line_hold = False  # the last held bytes end in a possibly address-bearing line
        self.hold_line = 0  # where that line starts
        self.hold_deadline: float | None = None
        # Out-of-order segments by seq, with their acks as the sender means them. Rare: every
        # stream shares one empty table until `keep_ooo` gives it its own (memory per idle
        # session).
        self.ooo: dict[int, tuple[Handle, Segment, int | None]] = _NO_OOO
        self.tls: TlsWalker | None = None
        self.fin = False

    def start(self, seq: int) -> None:
        self.next_seq = self.sent_upto = self.horizon = seq & MASK
        self.lines.reset(seq)

    def resume(self, record: SeqAdjRecord) -> None:
        """Take over the kernel's record of a connection met mid-stream: every byte from
        here on moves by its offset after, as the kernel has been moving them."""
        self.record = record
        self.exact = ExactMap(record.offset_after)
        self.record_end = None

    def front(self) -> int | None:
        """How far the stream is known to reach: its bytes seen, or further where the far
        side acknowledged bytes that never reached us (replies the kernel let pass)."""
        unseen, seen = self.unseen_ack, self.next_seq
        if unseen is None or seen is None or seq_diff(unseen, seen) <= 0:
            return seen
        return unseen

    def keep_ooo(self, seq: int, item: tuple[Handle, Segment, int | None]) -> None:
        if self.ooo is _NO_OOO:
            self.ooo = {}
        self.ooo[seq] = item

    @property
    def held_bytes(self) -> int:
        return sum(len(h.data) for h in self.held)

    # ---- held and out-of-order segments --------------------------------------------------

    def first_ooo(self) -> int:
        """The out-of-order segment nearest to what the stream expects next."""
        return min(self.ooo, key=lambda s: seq_diff(s, self.next_seq or 0))

    def hole_passed(self) -> bool:
        """The far side acknowledged bytes past a hole we hold segments behind: it got them
        without us (lost before the capture point, not queued), so the hole never fills."""
        unseen, expected = self.unseen_ack, self.next_seq
        if not self.ooo or unseen is None or expected is None:
            return False
        return seq_diff(unseen, expected) > 0

    def coalesce(self, ctx: Context, out: list[Command]) -> None:
        """The line that was split is complete: its segments leave as ONE segment (built
        from the newest packet), so the kernel's record can shift it as a whole."""
        held = self.held
        first = next(
            (i for i, h in enumerate(held) if seq_diff(h.seq + len(h.data), self.hold_line) > 0),
            len(held),
        )
        group = held[first:]
        if len(group) < 2 or sum(len(h.data) for h in group) > COALESCE_MAX:
            return
        last = group[-1]
        data = b"".join(h.data for h in group)
        out.extend(Drop(h.handle) for h in group[:-1])
        held[first:] = [Held(last.handle, last.seg, group[0].seq, data, last.ack)]
        ctx.count("held.coalesced", len(group) - 1)

    def drain(
        self,
        peer: Stream,
        original: FlowKey,
        now: float,
        ctx: Context,
        out: list[Command],
        force: bool = False,
    ) -> None:
        """Let held segments go, oldest first, each after the record it needs. A segment
        whose record would replace one the receiver has not acknowledged yet waits (until
        `force`, at the hold deadline)."""
        config = ctx.config
        while self.held:
            item = self.held[0]
            end = (item.seq + len(item.data)) & MASK
            if self.line_hold and not force and seq_diff(end, self.hold_line) > 0:
                break  # the split line's segments wait for the rest of it
            record = self.record_for(item.seq, end)
            if record is not None:
                if not self.may_replace_record() and not force:
                    if self.hold_deadline is None:
                        self.hold_deadline = now + config.hold_timeout
                    break
                if not self.may_replace_record():
                    ctx.count("seqadj-replaced-unacknowledged")
                out.append(WriteSeqAdj(original, self.dir, record))
                self.record, self.record_end = record, end
                self.record_peer_ack = item.ack
            built = self.build(peer, item.seg, item.seq, item.data, item.ack, config)
            out.append(verdict(item.handle, built))
            self.sent_upto = end
            del self.held[0]
        if not self.held:
            self.line_hold = False
            if not self.ooo:
                self.hold_deadline = None

    # ---- acknowledgements ----------------------------------------------------------------

    def true_ack(self, ack: int) -> int:
        """What the receiver's `ack` acknowledges in this stream's (sender's) numbering."""
        return ack if self.exact.identity else self.exact.to_in(ack)

    def note_ack(self, true_ack: int) -> None:
        if self.next_seq is not None and seq_diff(true_ack, self.next_seq) > 0:
            self.unseen_ack = true_ack  # bytes never seen: not part of what we can map
            return
        if self.acked is None or seq_diff(true_ack, self.acked) > 0:
            self.acked = true_ack
        self.exact.acked(true_ack)
        if self.record_end is not None and seq_diff(true_ack, self.record_end) >= 0:
            self.record_end = None

    def answered(self, peer_ack: int) -> None:
        """The sender now acknowledges more of the far side's stream than it did in the
        segment that set the record: the far side has answered that segment, so it has it.

        For the command stream when the kernel lets plain replies pass unqueued: the server's
        "200 PORT command successful", which carries its ack of the PORT, never reaches us,
        nor do its pure ACKs, but the client's next command acknowledges the 200. The
        inference needs a client that sent the rewritten command with no reply still on its
        way to it (the reply it now acknowledges then answers that command). After one that
        pipelined it, a server ACK older than the rewrite, overtaken on the wire by later
        segments, would leave the replaced record off by the rewrite's offset (a few bytes):
        the one case where the kernel's record alone could let a wrong number out."""
        if self.record_end is None or self.record_peer_ack is None:
            return
        if seq_diff(peer_ack, self.record_peer_ack) > 0:
            self.exact.acked(self.record_end)
            self.record_end = None

    def ack_out(self, true_ack: int) -> int:
        """The ack to send so that the kernel's shift gives the sender `true_ack`."""
        fixed = self.record.ack_for(true_ack)
        return true_ack if fixed is None else fixed

    def sack_out(self, left: int, right: int) -> tuple[int, int]:
        exact = self.exact
        lo = left if exact.identity else exact.to_in_left(left)
        hi = right if exact.identity else exact.to_in(right)
        return self.ack_out(lo), self.ack_out(hi)

    # ---- records -------------------------------------------------------------------------

    def settled_at(self, seq: int) -> bool:
        """The kernel's record alone puts `seq` (and everything after it) where the exact
        map does: no correction waits for its acknowledgement, and the record's offset for
        this position is the total. The common case, and the fast one."""
        exact, rec = self.exact, self.record
        if exact.active or rec.offset_after != exact.base:
            return False
        return rec.offset_before == rec.offset_after or seq_diff(seq, rec.correction_pos) > 0

    def record_for(self, seq: int, end: int) -> SeqAdjRecord | None:
        """The record that lands [seq, end) and every later byte where the exact map says,
        or None when the current one already does."""
        if self.settled_at(seq):
            return None
        exact, cur = self.exact, self.record
        want = exact.to_out(seq)
        after = seq_diff(exact.to_out(end), end)
        cur_after = cur.offset_after if seq_diff(end, cur.correction_pos) > 0 else cur.offset_before
        if cur.seq(seq) == want and cur_after == after:
            return None
        return SeqAdjRecord(seq & MASK, seq_diff(want, seq), after)

    def may_replace_record(self) -> bool:
        """Replacing the record is safe once the receiver acknowledged the segment that set
        it: no ACK the new one would map wrongly can come any more."""
        return self.record.identity or self.record_end is None

    # ---- building the packet that leaves -------------------------------------------------

    def build(
        self,
        peer: Stream,
        seg: Segment,
        seq: int,
        data: bytes | None,
        ack: int | None,
        config: Config,
    ) -> bytes | Placement | None:
        """The packet as it leaves for the kernel to shift: `seg`'s headers carrying this
        stream's bytes [seq, seq + len(data)) (its own payload when `data` is None), its ack
        mapped for `peer`'s record. None: it leaves unchanged."""
        payload = seg.payload if data is None else data
        before_horizon = seq_diff(seq, self.horizon) < 0
        out_seq: int | None
        if not before_horizon and self.settled_at(seq):
            out_payload, out_seq = payload, seq
        elif self.exact.identity or before_horizon:
            out_payload = payload
            out_seq = (
                seq
                if self.record.identity or before_horizon
                else (self.record.seq_for(self.exact.to_out(seq)))
            )
        else:
            out_payload = self.exact.emit(seq, payload) if self.exact.active else payload
            out_seq = self.record.seq_for(self.exact.to_out(seq))
        if out_seq is None:
            return Placement.UNPLACEABLE  # the sender will send it again
        if ack is None:
            out_ack = seg.ack
        else:
            prec = peer.record
            # The kernel maps this ack with the record's offset after (or both offsets are
            # one): when that offset is the peer's whole shift, the ack is right as it is.
            ack_settled = peer.settled_at((seg.ack - prec.offset_before) & MASK)
            out_ack = seg.ack if ack_settled else peer.ack_out(ack)
        sack = None
        if has_sack(seg) and not (peer.exact.identity and peer.record.identity):
            sack = peer.sack_out
        changed_payload = None if out_payload == seg.payload else out_payload
        if (
            out_seq == seg.seq
            and out_ack == seg.ack
            and changed_payload is None
            and sack is None
            and not config.full_checksum
        ):
            return None
        return rebuild(seg, out_seq, out_ack, changed_payload, sack, config.full_checksum)


def verdict(handle: Handle, built: bytes | Placement | None) -> Command:
    """The command that lets a queued packet go as `build` decided."""
    return Drop(handle) if isinstance(built, Placement) else Accept(handle, built)
