"""IPv4/IPv6 + TCP packets: read the header fields the gateway needs, write a changed copy.

Parsing is done by hand with `struct` because it sits in the per-packet path; scapy is far
too slow there. A `Segment` is a view on the original bytes; `rebuild` returns new bytes
with a new seq/ack, mapped SACK blocks and optionally a new payload, with valid checksums.
Input checksums are never verified: captures often carry offloaded (wrong) ones.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from alg.core.checksum import finish, ones_sum, update32
from alg.core.errors import NotControlTraffic, PacketError

TCP = 6
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_TCP_HEAD = struct.Struct("!HHIIH")
_U16 = struct.Struct("!H")
_U32X2 = struct.Struct("!II")
# IPv6 extension headers that may stand between the fixed header and TCP (RFC 8200 4.1).
_V6_SKIPPABLE = frozenset((0, 43, 60))
_V6_FRAGMENT = 44
_SACK = 5

SackMap = Callable[[int, int], tuple[int, int]]


class Segment:
    """Header fields of one TCP/IP packet, with offsets into its original bytes."""

    __slots__ = (
        "ack",
        "data",
        "dport",
        "dst",
        "end",
        "flags",
        "l4",
        "poff",
        "seq",
        "sport",
        "src",
        "version",
    )

    data: bytes
    version: int
    src: bytes
    dst: bytes
    l4: int
    poff: int
    end: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int

    def __init__(
        self, data: bytes, version: int, src: bytes, dst: bytes, l4: int, end: int
    ) -> None:
        if end - l4 < 20:
            raise PacketError("TCP header truncated")
        sport, dport, seq, ack, off_flags = _TCP_HEAD.unpack_from(data, l4)
        doff = (off_flags >> 12) * 4
        if doff < 20 or l4 + doff > end:
            raise PacketError(f"bad TCP data offset {doff}")
        self.data = data
        self.version = version
        self.src = src
        self.dst = dst
        self.l4 = l4
        self.poff = l4 + doff
        self.end = end
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = off_flags & 0x1FF

    @property
    def payload(self) -> bytes:
        return self.data[self.poff : self.end]

    @property
    def payload_len(self) -> int:
        return self.end - self.poff

    @property
    def options(self) -> bytes:
        return self.data[self.l4 + 20 : self.poff]


def parse(data: bytes) -> Segment:
    """Read an IPv4 or IPv6 packet carrying TCP; raise PacketError or NotControlTraffic."""
    n = len(data)
    if n < 20:
        raise PacketError(f"{n} bytes is too short for an IP header")
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        total = (data[2] << 8) | data[3]
        if ihl < 20 or total < ihl or total > n:
            raise PacketError(f"bad IPv4 lengths (header {ihl}, total {total}, have {n})")
        if data[9] != TCP:
            raise NotControlTraffic(f"IP protocol {data[9]}")
        if (data[6] & 0x3F) or data[7]:
            raise NotControlTraffic("IPv4 fragment")
        return Segment(data, 4, data[12:16], data[16:20], ihl, total)
    if version == 6:
        if n < 40:
            raise PacketError(f"{n} bytes is too short for an IPv6 header")
        end = 40 + ((data[4] << 8) | data[5])
        if end > n:
            raise PacketError(f"IPv6 payload length {end - 40} exceeds the {n - 40} bytes present")
        nh, off = data[6], 40
        for _ in range(8):  # bounded walk of the extension header chain
            if nh == TCP:
                return Segment(data, 6, data[8:24], data[24:40], off, end)
            if nh == _V6_FRAGMENT:
                raise NotControlTraffic("IPv6 fragment")
            if nh not in _V6_SKIPPABLE or off + 8 > end:
                raise NotControlTraffic(f"IPv6 next header {nh}")
            nh, off = data[off], off + (data[off + 1] + 1) * 8
        raise NotControlTraffic("IPv6 extension header chain too long")
    raise PacketError(f"IP version {version}")


def _tcp_checksum(buf: bytearray | bytes, seg: Segment, tcp_len: int) -> int:
    if seg.version == 4:
        pseudo = seg.src + seg.dst + bytes((0, TCP)) + _U16.pack(tcp_len)
    else:
        pseudo = seg.src + seg.dst + tcp_len.to_bytes(4, "big") + bytes((0, 0, 0, TCP))
    return finish(ones_sum(pseudo) + ones_sum(memoryview(buf)[seg.l4 : seg.l4 + tcp_len]))


def _update_sum(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for a span whose ones' complement sum went from `old` to `new`."""
    total = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _map_sack(buf: bytearray, seg: Segment, sack: SackMap, check: int) -> int:
    """Map every SACK block in place (RFC 2018), keeping the checksum right incrementally.

    Options need no alignment, so an edge may start at an odd offset from the TCP header
    (one NOP before the SACK option); its bytes then straddle the checksum's 16-bit words.
    """
    i, end = seg.l4 + 20, seg.poff
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2:
            break  # malformed option list: leave the rest as it is
        length = buf[i + 1]
        if kind == _SACK:
            j = i + 2
            while j + 8 <= i + length and j + 8 <= end:
                left, right = _U32X2.unpack_from(buf, j)
                nleft, nright = sack(left, right)
                if (nleft, nright) == (left, right):
                    pass
                elif (j - seg.l4) & 1 == 0:
                    _U32X2.pack_into(buf, j, nleft, nright)
                    check = update32(update32(check, left, nleft), right, nright)
                else:  # edges straddle 16-bit words: update over the aligned span around them
                    old = ones_sum(memoryview(buf)[j - 1 : j + 9])
                    _U32X2.pack_into(buf, j, nleft, nright)
                    check = _update_sum(check, old, ones_sum(memoryview(buf)[j - 1 : j + 9]))
                j += 8
        i += length
    return check


def has_sack(seg: Segment) -> bool:
    """Cheap pre-filter: could the options hold a SACK block at all?"""
    return seg.poff - seg.l4 > 20 and b"\x05" in seg.data[seg.l4 + 20 : seg.poff]


def rebuild(
    seg: Segment,
    seq: int,
    ack: int,
    payload: bytes | None = None,
    sack: SackMap | None = None,
    full_checksum: bool = False,
) -> bytes:
    """The packet with a new seq/ack, SACK blocks mapped and optionally a new payload.

    Without a new payload the TCP checksum is updated incrementally (valid whenever the input
    one was, which the queue guarantees); with one, or with `full_checksum`, both the TCP and
    the IPv4 header checksums are computed anew, so even offloaded captures come out valid.
    """
    data = seg.data
    l4 = seg.l4
    if payload is None:
        buf = bytearray(data[: seg.end])
    else:
        buf = bytearray(data[: seg.poff])
        buf += payload
        if seg.version == 4:
            buf[2:4] = _U16.pack(len(buf))
        else:
            buf[4:6] = _U16.pack(len(buf) - 40)
    _U32X2.pack_into(buf, l4 + 4, seq, ack)
    if payload is None and not full_checksum:
        check = (buf[l4 + 16] << 8) | buf[l4 + 17]
        check = update32(update32(check, seg.seq, seq), seg.ack, ack)
        if sack is not None:
            check = _map_sack(buf, seg, sack, check)
        buf[l4 + 16 : l4 + 18] = _U16.pack(check)
        return bytes(buf)
    if sack is not None:
        _map_sack(buf, seg, sack, 0)
    if seg.version == 4:
        buf[10:12] = b"\0\0"
        buf[10:12] = _U16.pack(finish(ones_sum(memoryview(buf)[:l4])))
    buf[l4 + 16 : l4 + 18] = b"\0\0"
    buf[l4 + 16 : l4 + 18] = _U16.pack(_tcp_checksum(buf, seg, len(buf) - l4))
    return bytes(buf)


def tcp_checksum_ok(data: bytes) -> bool:
    """True when the packet's TCP checksum is right (for tests and the replay's report)."""
    seg = parse(data)
    buf = bytearray(data[: seg.end])
    stored: int = _U16.unpack_from(buf, seg.l4 + 16)[0]
    buf[seg.l4 + 16 : seg.l4 + 18] = b"\0\0"
    return _tcp_checksum(buf, seg, seg.end - seg.l4) == stored


def ipv4_checksum_ok(data: bytes) -> bool:
    return data[0] >> 4 != 4 or ones_sum(data[: (data[0] & 0x0F) * 4]) == 0xFFFF


def build(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    options: bytes = b"",
    ttl: int = 64,
) -> bytes:
    """A new IPv4 or IPv6 TCP packet with correct checksums (for benchmarks, tests and
    synthetic captures; the gateway itself only rewrites packets)."""
    doff = (20 + len(options)) // 4
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            doff << 4,
            flags,
            65535,
            0,
            0,
        )
        + options
        + payload
    )
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
    tcp[16:18] = struct.pack("!H", finish(ones_sum(pseudo) + ones_sum(tcp)))
    if len(src) == 4:
        head = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, ttl, 6, 0, src, dst)
        )
        head[10:12] = struct.pack("!H", finish(ones_sum(head)))
        return bytes(head + tcp)
    return struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, ttl, src, dst) + bytes(tcp)
