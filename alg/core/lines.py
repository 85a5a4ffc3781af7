"""Reassembly of FTP control lines from the in-order bytes of one direction.

RFC 959 ends lines with CRLF; bare LF is accepted too (RFC 1123 4.1.2.11 asks servers and
clients to be tolerant). A line longer than `max_line` is not kept: its head is reported once
and the rest skipped up to the next LF, so memory per session stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

from alg.core.seqadj import MASK


class LineBuffer:
    """The incomplete tail of a direction's stream: the current line so far."""

    __slots__ = ("overflow", "partial", "start")

    def __init__(self) -> None:
        self.partial = b""
        self.start = 0  # sequence number of the current line's first byte
        self.overflow = False

    def reset(self, seq: int) -> None:
        self.partial = b""
        self.start = seq & MASK
        self.overflow = False

    def feed(self, data: bytes, seq: int, max_line: int) -> Iterator[tuple[bytes, int, bool]]:
        """Yield (line, start_seq, overflowed) for each line `data` completes.

        `data` starts at sequence number `seq` and follows the bytes fed before. An overflowed
        line yields only its first `max_line` bytes.
        """
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                if not self.partial and not self.overflow:
                    self.start = (seq + pos) & MASK
                if not self.overflow:
                    rest = self.partial + data[pos:]
                    if len(rest) > max_line:
                        yield rest[:max_line], self.start, True
                        self.overflow = True
                        rest = b""
                    self.partial = rest
                return
            if self.overflow:
                self.overflow = False
            elif self.partial:
                line = self.partial + data[pos : nl + 1]
                if len(line) > max_line:
                    yield line[:max_line], self.start, True
                else:
                    yield line, self.start, False
            elif nl + 1 - pos > max_line:
                yield data[pos : pos + max_line], (seq + pos) & MASK, True
            else:
                yield data[pos : nl + 1], (seq + pos) & MASK, False
            self.partial = b""
            pos = nl + 1
