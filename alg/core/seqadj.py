"""Sequence number adjustment for one direction of a connection whose payload was rewritten.

Two models side by side, in the vocabulary of the kernel's `nf_conntrack_seqadj`:

- `SeqAdjRecord` and its functions are the kernel's record: ONE correction per direction
  (correction position, offset before, offset after). The kernel holds it in the conntrack
  entry and shifts seq, ack and SACK of every packet with it (so it survives a restart of the
  daemon and follows a failover through conntrackd). The core writes it and never holds any
  other offset state of its own that the kernel does not also have.
- `ExactMap` is the truth the far side must see: every correction kept until the receiver
  has acknowledged past it, so a retransmission of an older rewritten segment, however it is
  cut, is rewritten identically. Where the record alone would let a wrong number out, the
  stream (alg.core.stream) pre-compensates the packet so that the kernel's shift lands it on
  the exact number (`seq_for`, `ack_for`).

The map m from the sender's positions to the receiver's is exact: bytes outside a rewritten
span move by the sum of the deltas before them; a position inside a span of `old_len` bytes
replaced by `new` maps to the span's start plus min(distance, len(new)). A segment [s, e)
therefore carries the receiver's bytes [m(s), m(e)): cut inside a span, the first part carries
the beginning of the new text and the next part the rest. All comparisons are modulo 2**32.
"""

from __future__ import annotations

from typing import NamedTuple

MASK = 0xFFFFFFFF
_HALF = 1 << 31
_MOD = 1 << 32


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed distance on the 2**32 circle (RFC 793 sequence arithmetic)."""
    d = (a - b) & MASK
    return d - _MOD if d >= _HALF else d


class Correction:
    """`old_len` bytes at `pos` (sender's space) replaced by `new`."""

    __slots__ = ("delta", "new", "old_len", "pos")

    def __init__(self, pos: int, old_len: int, new: bytes) -> None:
        self.pos = pos & MASK
        self.old_len = old_len
        self.new = new
        self.delta = len(new) - old_len

    @property
    def end(self) -> int:
        return (self.pos + self.old_len) & MASK


class ExactMap:
    """The corrections of one direction: `base` is the offset of all acknowledged ones."""

    __slots__ = ("active", "base")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        # Most streams never see a correction: they share the empty tuple until they do.
        self.active: list[Correction] | tuple[Correction, ...] = ()

    @property
    def identity(self) -> bool:
        return not self.active and not (self.base & MASK)

    @property
    def offset(self) -> int:
        """The total of every delta so far: how far later bytes have moved."""
        return self.base + sum(c.delta for c in self.active)

    def add(self, pos: int, old_len: int, new: bytes) -> Correction:
        """Record a rewrite; spans arrive in stream order and never overlap."""
        corr = Correction(pos, old_len, new)
        if isinstance(self.active, tuple):
            self.active = []
        self.active.append(corr)
        return corr

    def to_out(self, x: int) -> int:
        """m(x): where the sender's position x lands in the receiver's stream."""
        off = self.base
        for c in self.active:
            d = seq_diff(x, c.pos)
            if d <= 0:
                break
            if d < c.old_len:
                return (c.pos + off + min(d, len(c.new))) & MASK
            off += c.delta
        return (x + off) & MASK

    def to_in(self, a: int) -> int:
        """The largest x with m(x) <= a: what an ack of `a` by the receiver acknowledges.

        Exact at every position outside a span. Inside a span made shorter, the receiver's
        last byte of the new text stands for the whole old span; the gateway cuts a span only
        when it releases a complete line, so the sender has sent all of it by then.
        """
        return self._back(a, largest=True)

    def to_in_left(self, a: int) -> int:
        """The smallest x with m(x) >= a: a SACK block's left edge, mapped conservatively."""
        return self._back(a, largest=False)

    def _back(self, a: int, largest: bool) -> int:
        """m inverted: inside a replaced span, the largest or the smallest sender position."""
        off = self.base
        for c in self.active:
            k = seq_diff(a, c.pos + off)
            if k <= 0:
                break
            if k < len(c.new):
                return (c.pos + min(k, c.old_len - largest)) & MASK
            off += c.delta
        return (a - off) & MASK

    def sack(self, left: int, right: int) -> tuple[int, int]:
        return self.to_in_left(left), self.to_in(right)

    def emit(self, seq: int, payload: bytes) -> bytes:
        """The receiver's bytes [m(seq), m(seq + len)) for the sender's segment at `seq`."""
        length = len(payload)
        out: list[bytes] = []
        cursor = 0
        for c in self.active:
            s = seq_diff(c.pos, seq)
            e = s + c.old_len
            if e <= 0:
                continue
            if s >= length:
                break
            if s > cursor:
                out.append(payload[cursor:s])
            new_len = len(c.new)
            lo = min(max(-s, 0), new_len)
            hi = new_len if e <= length else min(length - s, new_len)
            out.append(c.new[lo:hi])
            cursor = min(e, length)
        if not out:
            return payload
        out.append(payload[cursor:])
        return b"".join(out)

    def acked(self, x: int) -> None:
        """The receiver has everything before the sender's position x: fold finished spans."""
        active = self.active
        if not isinstance(active, list):
            return
        while active and seq_diff(x, active[0].end) >= 0:
            self.base += active.pop(0).delta


# ---- the kernel's record ---------------------------------------------------------------------


def _after(a: int, b: int) -> bool:
    """The kernel's after(): a is later than b on the 2**32 circle."""
    return seq_diff(a, b) > 0


def _u32(x: int) -> int:
    return x & MASK


class SeqAdjRecord(NamedTuple):
    """struct nf_ct_seqadj: a packet whose seq is after `correction_pos` moves by
    `offset_after`, any other by `offset_before` (offsets are signed)."""

    correction_pos: int = 0
    offset_before: int = 0
    offset_after: int = 0

    @property
    def identity(self) -> bool:
        return self.offset_before == 0 and self.offset_after == 0

    def seq(self, seq: int) -> int:
        """nf_ct_seq_adjust on the sender's seq."""
        off = self.offset_after if _after(seq, self.correction_pos) else self.offset_before
        return _u32(seq + off)

    def ack(self, ack: int) -> int:
        """nf_ct_seq_adjust on the receiver's ack (and nf_ct_sack_block_adjust on SACK edges)."""
        if _after(ack - self.offset_before, self.correction_pos):
            return _u32(ack - self.offset_after)
        return _u32(ack - self.offset_before)

    def seq_for(self, want: int) -> int | None:
        """The seq to send so that the kernel's shift makes it `want` (None: impossible)."""
        for off in (self.offset_before, self.offset_after):
            seq = _u32(want - off)
            if self.seq(seq) == want:
                return seq
        return None

    def ack_for(self, want: int) -> int | None:
        """The ack to send so that the kernel's shift makes it `want` (None: impossible)."""
        for off in (self.offset_before, self.offset_after):
            ack = _u32(want + off)
            if self.ack(ack) == want:
                return ack
        return None
