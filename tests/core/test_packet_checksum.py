"""TCP checksums after SACK mapping, whatever the alignment of the SACK option (issue 10 item 5).

The incremental update treats a changed 32-bit edge as two 16-bit words of the checksum; that
only holds when the edge starts at an even offset from the TCP header. One NOP before the SACK
option (kind 5) puts its edges at odd offsets. Each output is checked against a checksum
computed from scratch, by our own code and by scapy.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6

from alg.core.packet import ACK, build, parse, rebuild, tcp_checksum_ok
from tests.tcpsim import ip

C4, S4 = ip("192.168.0.1"), ip("198.51.100.2")
C6, S6 = ip("fd00::1"), ip("2001:db8::2")
u32 = st.integers(0, 0xFFFFFFFF)
NOP = b"\x01"


def sack(*blocks: tuple[int, int]) -> bytes:
    return bytes((5, 2 + 8 * len(blocks))) + b"".join(struct.pack("!II", *b) for b in blocks)


def pad(options: bytes) -> bytes:
    return options + NOP * (-len(options) % 4)


def scapy_checksum_ok(data: bytes) -> bool:
    """scapy's own recomputation of the TCP checksum agrees with the one in `data`."""
    pkt = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    stored = pkt["TCP"].chksum
    del pkt["TCP"].chksum
    fresh = pkt.__class__(bytes(pkt))
    return bool(fresh["TCP"].chksum == stored)


def test_one_nop_before_sack_puts_the_edges_at_odd_offsets_and_checksum_stays_right() -> None:
    options = pad(NOP + sack((0x01020304, 0x0A0B0C0D)))
    seg = parse(build(C4, S4, 40000, 21, 1, 2, ACK, b"", options))
    assert (seg.options.index(b"\x05") + 2 + 20) % 2 == 1  # left edge at an odd TCP offset
    out = rebuild(seg, 1, 2, sack=lambda a, b: (a + 0x123457, b + 0x123457))
    assert parse(out).options[3:11] == struct.pack("!II", 0x0114375B, 0x0A1D4064)
    assert tcp_checksum_ok(out)
    assert scapy_checksum_ok(out)


def test_odd_offset_sack_with_payload_and_ipv6() -> None:
    options = pad(NOP + NOP + NOP + sack((5, 9), (100, 200)))
    seg = parse(build(C6, S6, 40000, 21, 1, 2, ACK, b"NOOP\r\n", options))
    out = rebuild(seg, 77, 88, sack=lambda a, b: (a - 3, b - 3))
    assert tcp_checksum_ok(out) and scapy_checksum_ok(out)


_OTHER = st.sampled_from(
    [
        NOP,
        bytes((2, 4, 5, 180)),  # MSS
        bytes((3, 3, 7)),  # window scale
        bytes((4, 2)),  # SACK permitted
        bytes((8, 10)) + bytes(range(8)),  # timestamps
    ]
)


@st.composite
def layouts(draw: st.DrawFn) -> bytes:
    """Random option lists holding one SACK option anywhere, at most 40 bytes."""
    before = b"".join(draw(st.lists(_OTHER, max_size=2)))
    after = b"".join(draw(st.lists(_OTHER, max_size=1)))
    blocks = draw(st.lists(st.tuples(u32, u32), min_size=1, max_size=4))
    while len(pad(before + sack(*blocks) + after)) > 40:
        if len(blocks) > 1:
            blocks.pop()
        else:
            after = b""
    return pad(before + sack(*blocks) + after)


@given(
    layouts(),
    u32,
    u32,
    u32,
    st.booleans(),
    st.binary(max_size=9),
)
def test_any_option_layout_leaves_a_valid_checksum(
    options: bytes, seq: int, ack: int, delta: int, v6: bool, payload: bytes
) -> None:
    src, dst = (C6, S6) if v6 else (C4, S4)
    seg = parse(build(src, dst, 40000, 21, 1000, 2000, ACK, payload, options))
    out = rebuild(seg, seq, ack, sack=lambda a, b: ((a + delta) & 0xFFFFFFFF, (b ^ delta)))
    assert tcp_checksum_ok(out)
    full = rebuild(
        seg, seq, ack, sack=lambda a, b: ((a + delta) & 0xFFFFFFFF, (b ^ delta)), full_checksum=True
    )
    assert out == full
