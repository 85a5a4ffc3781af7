"""Line reassembly: every sample whole, split at every byte, and with trailing data."""

from __future__ import annotations

import pytest

from alg.core.lines import LineBuffer

SAMPLES = [
    b"PORT 192,168,0,1,4,1\r\n",
    b"220-Welcome\r\n220-to the\n220 server\r\n",
    b"USER anonymous\r\nPASS x@y\r\nPASV\r\n",
    b"EPRT |2|fd00::1|5282|\n",
    b"NOOP\x00junk\r\n",
]


def feed_all(chunks: list[bytes], max_line: int = 512) -> tuple[list[tuple[bytes, int]], bytes]:
    buf = LineBuffer()
    buf.reset(1000)
    seq, lines = 1000, []
    for chunk in chunks:
        lines += [(line, start) for line, start, _ in buf.feed(chunk, seq, max_line)]
        seq += len(chunk)
    return lines, buf.partial


def expected(sample: bytes) -> list[tuple[bytes, int]]:
    out, pos = [], 0
    for part in sample.split(b"\n")[:-1]:
        out.append((part + b"\n", 1000 + pos))
        pos += len(part) + 1
    return out


@pytest.mark.parametrize("sample", SAMPLES)
def test_whole_split_at_every_byte_and_trailing(sample: bytes) -> None:
    assert feed_all([sample]) == (expected(sample), b"")
    for k in range(1, len(sample)):
        assert feed_all([sample[:k], sample[k:]]) == (expected(sample), b"")
    assert feed_all([bytes([b]) for b in sample]) == (expected(sample), b"")
    lines, partial = feed_all([sample + b"PORT 1,2"])
    assert lines == expected(sample) and partial == b"PORT 1,2"


def test_overlong_line_reported_once_and_skipped() -> None:
    buf = LineBuffer()
    buf.reset(0)
    got = list(buf.feed(b"A" * 30, 0, 16)) + list(buf.feed(b"B" * 30, 30, 16))
    got += list(buf.feed(b"C\r\nNOOP\r\n", 60, 16))
    assert got == [(b"A" * 16, 0, True), (b"NOOP\r\n", 63, False)]
    assert buf.partial == b"" and not buf.overflow


def test_overlong_line_completed_in_one_go_is_cut() -> None:
    buf = LineBuffer()
    buf.reset(0)
    assert list(buf.feed(b"X" * 20 + b"\r\n", 0, 16)) == [(b"X" * 16, 0, True)]
