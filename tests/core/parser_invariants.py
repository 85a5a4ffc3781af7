"""What must hold for any input to the grammar and the packet code (shared by the hypothesis
tests in test_fuzz_parsers.py and the atheris target fuzz_atheris.py).

The contract (h11's): only the core's own exceptions leave it, and what it accepts it can
write back. Each check takes raw bytes, raises AssertionError on a broken invariant and lets
any other exception escape, which is the bug a fuzzer is looking for.
"""

from __future__ import annotations

import struct

from alg.core.errors import NotControlTraffic, PacketError
from alg.core.grammar import HostPort, Kind, Malformed, format_span, parse_command, parse_reply
from alg.core.packet import Segment, ipv4_checksum_ok, parse, rebuild, tcp_checksum_ok

_REPLY_KINDS = {Kind.PASV_227: b"227", Kind.LPSV_228: b"228", Kind.EPSV_229: b"229"}


def _reparse(kind: Kind, line: bytes) -> HostPort | None:
    if kind in _REPLY_KINDS:
        return parse_reply(_REPLY_KINDS[kind], line)
    return parse_command(line)


def _values(hp: HostPort) -> tuple[Kind, int, bytes | None, int]:
    return hp.kind, hp.family, hp.addr, hp.port


def check_span(line: bytes, hp: HostPort, addr: bytes, port: int) -> None:
    """The span of a parsed line, rewritten to `addr`/`port`, parses back to exactly those,
    and rewritten to its own values parses back unchanged."""
    assert 0 <= hp.start <= hp.end <= len(line)
    own = line[: hp.start] + format_span(hp, hp.addr or b"", hp.port) + line[hp.end :]
    again = _reparse(hp.kind, own)
    assert again is not None and _values(again) == _values(hp), (line, own)
    if hp.addr is not None:
        addr = addr[: len(hp.addr)].ljust(len(hp.addr), b"\0")
    new = line[: hp.start] + format_span(hp, addr, port) + line[hp.end :]
    moved = _reparse(hp.kind, new)
    assert moved is not None, new
    assert (moved.addr, moved.port) == (None if hp.addr is None else addr, port), (line, new)


def check_command(line: bytes, addr: bytes = bytes(16), port: int = 1) -> HostPort | None:
    try:
        hp = parse_command(line)
    except Malformed:
        return None
    if hp is not None:
        check_span(line, hp, addr, port)
    return hp


def check_reply(line: bytes, addr: bytes = bytes(16), port: int = 1) -> HostPort | None:
    code = line[:3]
    try:
        hp = parse_reply(code, line)
    except Malformed:
        return None
    assert code in _REPLY_KINDS.values()
    check_span(line, hp, addr, port)
    return hp


def check_packet(data: bytes, seq: int = 1, ack: int = 2, payload: bytes = b"x") -> Segment | None:
    """parse raises only PacketError/NotControlTraffic; an accepted packet rebuilds with valid
    checksums and the new values, and an incremental update keeps a valid checksum valid."""
    try:
        seg = parse(data)
    except (PacketError, NotControlTraffic):
        return None
    assert seg.l4 + 20 <= seg.poff <= seg.end <= len(data)
    assert seg.payload == data[seg.poff : seg.end]
    out = rebuild(seg, seq, ack, payload, sack=lambda a, b: (a ^ 1, b ^ 1))
    again = parse(out)
    assert (again.seq, again.ack, again.payload) == (seq, ack, payload)
    assert (again.sport, again.dport, again.src, again.dst) == (
        seg.sport,
        seg.dport,
        seg.src,
        seg.dst,
    )
    assert tcp_checksum_ok(out) and ipv4_checksum_ok(out)
    full = rebuild(seg, seq, ack, full_checksum=True)
    assert tcp_checksum_ok(full) and ipv4_checksum_ok(full)
    if tcp_checksum_ok(data):
        incremental = rebuild(seg, seq, ack, sack=lambda a, b: ((a + seq) & 0xFFFFFFFF, b))
        assert tcp_checksum_ok(incremental)
        assert struct.unpack_from("!II", incremental, seg.l4 + 4) == (seq, ack)
    return seg
