"""Packets: parse and re-serialize IPv4/IPv6 + TCP; checksums checked against scapy's."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.packet import Raw

from alg.core.errors import NotControlTraffic, PacketError
from alg.core.packet import (
    ACK,
    PSH,
    has_sack,
    ipv4_checksum_ok,
    parse,
    rebuild,
    tcp_checksum_ok,
)
from tests.tcpsim import build, ip, sack_option

C4, S4 = ip("192.168.0.1"), ip("198.51.100.2")
C6, S6 = ip("fd00::1"), ip("2001:db8::2")
u32 = st.integers(0, 0xFFFFFFFF)


def scapy_v4(
    payload: bytes = b"PORT 1,2,3,4,5,6\r\n", options: Sequence[object] | None = None
) -> bytes:
    pkt = (
        IP(src="192.168.0.1", dst="198.51.100.2")
        / TCP(sport=40000, dport=21, seq=1000, ack=2000, flags="PA", options=options or [])
        / Raw(payload)
    )
    return bytes(pkt)


def test_parse_ipv4_fields() -> None:
    seg = parse(scapy_v4())
    assert (seg.version, seg.src, seg.dst, seg.sport, seg.dport) == (4, C4, S4, 40000, 21)
    assert (seg.seq, seg.ack, seg.flags & (PSH | ACK)) == (1000, 2000, PSH | ACK)
    assert seg.payload == b"PORT 1,2,3,4,5,6\r\n"


def test_parse_ipv6_through_extension_headers() -> None:
    pkt = bytes(
        IPv6(src="fd00::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / TCP(sport=40000, dport=21, seq=7)
        / Raw(b"EPSV\r\n")
    )
    seg = parse(pkt)
    assert (seg.version, seg.src, seg.dst, seg.seq, seg.payload) == (6, C6, S6, 7, b"EPSV\r\n")


@pytest.mark.parametrize(
    ("pkt", "error"),
    [
        (b"", PacketError),
        (b"\x45" + b"\0" * 10, PacketError),
        (bytes(IP(dst="1.2.3.4") / Raw(b"x" * 30))[:30], PacketError),  # total > present
        (bytes(IP(dst="1.2.3.4", proto=17) / Raw(b"x" * 20)), NotControlTraffic),
        (bytes(IP(dst="1.2.3.4", flags="MF") / TCP() / Raw(b"x")), NotControlTraffic),
        (bytes(IP(dst="1.2.3.4", frag=10) / Raw(b"x" * 20)), NotControlTraffic),
        (bytes(IPv6(dst="::1") / IPv6ExtHdrFragment() / TCP()), NotControlTraffic),
        (bytes(IP(dst="1.2.3.4") / TCP(dataofs=15)), PacketError),
        (bytes(IP(dst="1.2.3.4") / TCP())[:30], PacketError),
        (b"\x70" + b"\0" * 40, PacketError),
    ],
)
def test_bad_packets_raise_the_cores_own_errors(pkt: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse(pkt)


@given(u32, u32)
def test_incremental_checksum_matches_a_full_one(seq: int, ack: int) -> None:
    for src, dst in ((C4, S4), (C6, S6)):
        seg = parse(build(src, dst, 40000, 21, 1, 2, ACK, b"NOOP\r\n", sack_option((5, 9))))
        out = rebuild(seg, seq, ack, sack=lambda a, b: (a + 1, b + 1))
        assert tcp_checksum_ok(out) and ipv4_checksum_ok(out)
        full = rebuild(seg, seq, ack, sack=lambda a, b: (a + 1, b + 1), full_checksum=True)
        assert out == full


def test_new_payload_fixes_lengths_and_both_checksums_like_scapy() -> None:
    seg = parse(scapy_v4())
    out = rebuild(seg, 1000, 2000, b"PORT 203,0,113,7,5,6\r\n")
    ref = IP(scapy_v4(b"PORT 203,0,113,7,5,6\r\n"))
    del ref[IP].chksum, ref[TCP].chksum
    assert out == bytes(ref)
    seg6 = parse(build(C6, S6, 40000, 21, 1, 2, ACK, b"EPRT |2|fd00::1|5282|\r\n"))
    out6 = rebuild(seg6, 5, 6, b"EPRT |2|2001:db8::7|5282|\r\n")
    assert tcp_checksum_ok(out6)
    assert struct.unpack_from("!H", out6, 4)[0] == len(out6) - 40


def test_offloaded_input_checksum_is_never_refused_and_full_mode_repairs_it() -> None:
    raw = bytearray(scapy_v4())
    raw[36:38] = b"\xde\xad"  # a wrong TCP checksum, as captured with offload
    raw[10:12] = b"\xbe\xef"
    seg = parse(bytes(raw))
    out = rebuild(seg, 5, 6, full_checksum=True)
    assert tcp_checksum_ok(out) and ipv4_checksum_ok(out)


def test_sack_blocks_are_mapped_and_other_options_kept() -> None:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6)), ("SAck", (100, 200, 300, 400))]
    seg = parse(scapy_v4(b"", opts))
    assert has_sack(seg)
    out = rebuild(seg, 1000, 2000, sack=lambda a, b: (a - 3, b - 3))
    parsed = IP(out)
    assert dict(parsed[TCP].options)["SAck"] == (97, 197, 297, 397)
    assert dict(parsed[TCP].options)["Timestamp"] == (5, 6)
    assert tcp_checksum_ok(out)
    assert not has_sack(parse(scapy_v4(b"", [("Timestamp", (1, 2))])))


@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_core_errors(data: bytes) -> None:
    """Anything parse accepts rebuilds into a valid packet carrying the new numbers and the
    same payload; anything else is refused with one of the core's two errors."""
    for head in (b"", b"\x45\x00", b"\x60\x00\x00\x00\x00\x14\x06\x40" + b"\0" * 32):
        try:
            seg = parse(head + data)
        except (PacketError, NotControlTraffic):
            continue
        out = rebuild(seg, 1, 2, sack=lambda a, b: (a, b), full_checksum=True)
        again = parse(out)
        assert (again.seq, again.ack, again.payload) == (1, 2, seg.payload)
        assert tcp_checksum_ok(out)
