"""SeqAdj: the exact map between a sender's and a receiver's sequence space."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from alg.core.seqadj import MASK, SeqAdj, seq_diff


def stream_with_rewrites(
    base: int, text: bytes, spans: list[tuple[int, int, bytes]]
) -> tuple[SeqAdj, bytes]:
    adj = SeqAdj()
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
    spans, pos = [], 0
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
    adj = SeqAdj()
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
    adj = SeqAdj()
    adj.add(MASK - 4, 10, b"z" * 13)  # span crosses 2**32
    assert adj.to_out(10) == 13
    assert adj.to_in(13) == 10
    assert adj.emit(MASK - 9, b"a" * 5 + b"b" * 10 + b"c") == b"a" * 5 + b"z" * 13 + b"c"
