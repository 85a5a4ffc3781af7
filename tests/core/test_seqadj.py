"""ExactMap and SeqAdjRecord: the exact map between a sender's and a receiver's sequence space, and
the kernel's one-correction record the gateway writes into conntrack."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from alg.core.seqadj import MASK, ExactMap, SeqAdjRecord, seq_diff


def stream_with_rewrites(
    base: int, text: bytes, spans: list[tuple[int, int, bytes]]
) -> tuple[ExactMap, bytes]:
    adj = ExactMap()
    out, cursor = [], 0
    for start, length, new in spans:
        adj.add(base + start, length, new)
        out += [text[cursor:start], new]
        cursor = start + length
    out.append(text[cursor:])
    return adj, b"".join(out)


@st.composite
def rewritten(draw: st.DrawFn) -> tuple[int, bytes, list[tuple[int, int, bytes]]]:
    base = draw(st.integers(0, MASK))  # any start, wrap-around included
    text = draw(st.binary(min_size=1, max_size=200))
    spans: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(text) and len(spans) < 6:
        gap = draw(st.integers(0, 30))
        length = draw(st.integers(1, 20))
        if pos + gap + length > len(text):
            break
        spans.append((pos + gap, length, draw(st.binary(min_size=1, max_size=30))))
        pos += gap + length
    return base, text, spans


@given(rewritten(), st.data())
def test_any_segmentation_delivers_the_rewritten_stream(case, data) -> None:  # type: ignore[no-untyped-def]
    base, text, spans = case
    adj, expected = stream_with_rewrites(base, text, spans)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(text)), max_size=8))) | {0, len(text)})
    received = bytearray()
    for a, b in itertools.pairwise(cuts):
        out_seq = adj.to_out(base + a)
        assert out_seq == (base + len(received)) & MASK  # contiguous in the receiver's space
        chunk = adj.emit((base + a) & MASK, text[a:b])
        assert adj.to_out(base + b) == (out_seq + len(chunk)) & MASK
        received += chunk
        # Every ack of what has arrived maps back to what was sent, never beyond it, except
        # that a cut inside a shrunk span may acknowledge that span whole: the gateway only
        # cuts spans when releasing a complete line, so the sender has sent all of it.
        back = adj.to_in((base + len(received)) & MASK)
        limit = next((st + n for st, n, _ in spans if st < b < st + n), b)
        assert 0 <= seq_diff(back, base) <= limit
    assert bytes(received) == expected
    assert adj.to_in((base + len(expected)) & MASK) == (base + len(text)) & MASK


@given(rewritten())
def test_acks_at_segment_boundaries_map_back_exactly(case) -> None:  # type: ignore[no-untyped-def]
    base, text, spans = case
    adj, _ = stream_with_rewrites(base, text, spans)
    inside = {s + i for s, n, _ in spans for i in range(1, n)}
    for x in range(len(text) + 1):
        if x not in inside:
            assert adj.to_in(adj.to_out(base + x)) == (base + x) & MASK
            assert adj.to_in_left(adj.to_out(base + x)) == (base + x) & MASK


@given(rewritten(), st.integers(0, 200), st.integers(1, 60))
def test_retransmission_is_rewritten_identically(case, start, length) -> None:  # type: ignore[no-untyped-def]
    base, text, spans = case
    adj, _ = stream_with_rewrites(base, text, spans)
    start = min(start, len(text) - 1)
    seg = text[start : start + length]
    assert adj.emit(base + start, seg) == adj.emit(base + start, seg)


def test_acked_corrections_fold_into_the_base() -> None:
    adj = ExactMap()
    adj.add(100, 15, b"x" * 18)  # +3
    adj.add(200, 5, b"y" * 2)  # -3
    assert adj.offset == 0 and len(adj.active) == 2
    adj.acked(110)  # inside the first span: nothing folds
    assert len(adj.active) == 2
    adj.acked(115)
    assert (adj.base, len(adj.active)) == (3, 1)
    assert adj.to_out(150) == 153 and adj.to_in(153) == 150
    adj.acked(205)
    assert adj.base == 0 and adj.identity


def test_wraparound() -> None:
    adj = ExactMap()
    adj.add(MASK - 4, 10, b"z" * 13)  # span crosses 2**32
    assert adj.to_out(10) == 13
    assert adj.to_in(13) == 10
    assert adj.emit(MASK - 9, b"a" * 5 + b"b" * 10 + b"c") == b"a" * 5 + b"z" * 13 + b"c"


# ---- SeqAdjRecord: the kernel's record ------------------------------------------------------


def test_record_shifts_like_the_kernel_after_a_longer_port() -> None:
    """docs/kernel-facts.md: a PORT made 3 bytes longer at seq 1000 (record 1000, 0, +3)."""
    rec = SeqAdjRecord(1000, 0, 3)
    assert rec.seq(1000) == 1000  # the rewritten segment itself: offset_before
    assert rec.seq(1022) == 1025  # every segment starting after it: offset_after
    assert rec.ack(1025) == 1022  # the server's ack of the whole line maps back
    assert rec.ack(1000) == 1000  # an ack of bytes before the line is untouched


def test_record_wraps_around_the_sequence_space() -> None:
    rec = SeqAdjRecord(MASK - 5, 0, -2)
    assert rec.seq(10) == 8
    assert rec.ack(8) == 10
    assert rec.seq(MASK - 10) == MASK - 10


records = st.builds(
    SeqAdjRecord, st.integers(0, MASK), st.integers(-500, 500), st.integers(-500, 500)
)


@given(records, st.integers(0, MASK))
def test_seq_for_lands_exactly_where_asked(rec: SeqAdjRecord, want: int) -> None:
    """Pre-compensation: when the core picks a seq for the kernel to shift, the kernel's
    shift of it is exactly the wanted number (or the core knows it cannot be)."""
    seq = rec.seq_for(want)
    if seq is not None:
        assert rec.seq(seq) == want
    ack = rec.ack_for(want)
    if ack is not None:
        assert rec.ack(ack) == want


@given(records, st.integers(0, MASK))
def test_acks_of_segment_ends_after_the_correction_map_back(rec: SeqAdjRecord, x: int) -> None:
    """Far side acks the end of a segment sent after the correction: the kernel maps the ack
    back to the sender's space (what tcp_in_window and the sender need)."""
    if not 0 < seq_diff(x, rec.correction_pos) < (1 << 30):
        return
    if seq_diff(x + rec.offset_after - rec.offset_before, rec.correction_pos) <= 0:
        return  # a shrink larger than the distance: no segment can end there
    assert rec.ack(rec.seq(x)) == x
