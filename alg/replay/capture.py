"""Reading and writing captures (pcap, pcapng, gzipped) with scapy's raw readers.

The raw readers give each frame's bytes without dissecting it: the link-layer header is
peeled off here and the IP packet handed on, so the replay stays fast on big captures.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scapy.utils import RawPcapNgReader, RawPcapReader, RawPcapWriter

# Link types (tcpdump.org/linktypes.html) and the bytes before the IP header.
ETHERNET, NULL, RAW, LINUX_SLL, LOOP, LINUX_SLL2 = 1, 0, 101, 113, 108, 276
_RAW_ALIASES = {12, 14, RAW, 228, 229}
_VLAN = {0x8100, 0x88A8, 0x9100}


@dataclass(slots=True)
class Frame:
    """One captured frame: `head` is its link-layer header, `ip` the packet after it."""

    index: int  # 1-based, as Wireshark numbers frames
    time: float
    linktype: int
    head: bytes
    ip: bytes | None  # None: not IPv4/IPv6 (ARP, truncated, unknown link type)


def _split(linktype: int, frame: bytes) -> tuple[bytes, bytes | None]:
    if linktype == ETHERNET:
        off = 12
        ethertype = struct.unpack_from("!H", frame, off)[0] if len(frame) >= 14 else 0
        while ethertype in _VLAN and len(frame) >= off + 6:
            off += 4
            ethertype = struct.unpack_from("!H", frame, off)[0]
        off += 2
        if ethertype in (0x0800, 0x86DD):
            return frame[:off], frame[off:]
        return frame, None
    if linktype in (NULL, LOOP):
        return frame[:4], frame[4:]
    if linktype in _RAW_ALIASES:
        return b"", frame
    if linktype == LINUX_SLL:
        return frame[:16], frame[16:]
    if linktype == LINUX_SLL2:
        return frame[:20], frame[20:]
    return frame, None


def _timestamp(meta: Any) -> float:
    if hasattr(meta, "sec"):
        return float(meta.sec) + float(meta.usec) / 1e6
    ticks = (int(meta.tshigh) << 32) | int(meta.tslow)  # pcapng
    return ticks / float(meta.tsresol)


def read(path: str) -> Iterator[Frame]:
    """Every frame of a pcap/pcapng capture (gzip is handled by scapy)."""
    reader: Any = RawPcapReader(path)
    with reader:
        ng = isinstance(reader, RawPcapNgReader)
        for index, (data, meta) in enumerate(reader, 1):
            linktype = int(meta.linktype) if ng else int(reader.linktype)
            head, ip = _split(linktype, bytes(data))
            if ip is not None and len(ip) and ip[0] >> 4 not in (4, 6):
                ip = None
            yield Frame(index, _timestamp(meta), linktype, head, ip)


class Writer:
    """Writes frames back with their link-layer headers (pcap, one link type per file)."""

    def __init__(self, path: str, linktype: int) -> None:
        self._linktype = linktype
        self._out: Any = RawPcapWriter(path, linktype=linktype, sync=False)

    def write(self, frame: Frame, ip: bytes | None) -> None:
        data = frame.head + ip if ip is not None else frame.head
        if frame.linktype != self._linktype:
            data = ip or b""  # mixed link types (pcapng): keep the packet itself
        if not self._out.header_present:
            self._out.write_header(None)
        sec = int(frame.time)
        self._out.write_packet(data, sec=sec, usec=round((frame.time - sec) * 1e6))

    def close(self) -> None:
        self._out.close()
