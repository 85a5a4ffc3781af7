"""Synthetic FTP captures for what the shared ones lack (see tests/captures/MANIFEST.md).

LPRT/228, a PORT split across segments, a 227 without parentheses, IPv6 EPRT, and one session
with many rewrites. Built packet by packet with correct seq/acks, written with scapy.
"""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.utils import RawPcapWriter

from alg.core.packet import ACK, FIN, PSH, SYN
from tests.tcpsim import build, ip


class Convo:
    """A well-behaved TCP conversation: each side acks everything it has received."""

    def __init__(self, client: str, server: str, cport: int = 40000, sport: int = 21) -> None:
        self.c, self.s = ip(client), ip(server)
        self.cport, self.sport = cport, sport
        self.cseq, self.sseq = 100000, 700000
        self.packets: list[bytes] = []
        self._syn()

    def _pkt(self, from_client: bool, flags: int, payload: bytes = b"") -> None:
        if from_client:
            pkt = build(
                self.c, self.s, self.cport, self.sport, self.cseq, self.sseq, flags, payload
            )
            self.cseq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        else:
            pkt = build(
                self.s, self.c, self.sport, self.cport, self.sseq, self.cseq, flags, payload
            )
            self.sseq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        self.packets.append(pkt)

    def _syn(self) -> None:
        self._pkt(True, SYN)
        self._pkt(False, SYN | ACK)
        self._pkt(True, ACK)

    def client(self, *parts: bytes, ack: bool = True) -> Convo:
        for part in parts:
            self._pkt(True, PSH | ACK, part)
        if ack:
            self._pkt(False, ACK)
        return self

    def server(self, *parts: bytes, ack: bool = True) -> Convo:
        for part in parts:
            self._pkt(False, PSH | ACK, part)
        if ack:
            self._pkt(True, ACK)
        return self

    def close(self) -> Convo:
        self._pkt(True, FIN | ACK)
        self._pkt(False, FIN | ACK)
        self._pkt(True, ACK)
        return self


def write(path: Path, packets: list[bytes]) -> None:
    out = RawPcapWriter(str(path), linktype=1, sync=True)
    out.write_header(None)
    for i, pkt in enumerate(packets):
        ethertype = 0x0800 if pkt[0] >> 4 == 4 else 0x86DD
        frame = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01" + struct.pack("!H", ethertype) + pkt
        out.write_packet(frame, sec=1700000000 + i // 10, usec=(i % 10) * 100000)
    out.close()


def lprt_228() -> Convo:
    v = Convo("192.168.0.10", "198.51.100.20")
    v.server(b"220 synthetic\r\n").client(b"LPRT 4,4,192,168,0,10,2,19,137\r\n")
    v.server(b"200 LPRT ok\r\n").client(b"LPSV\r\n")
    v.server(b"228 Entering Long Passive Mode (4,4,198,51,100,20,2,195,80)\r\n")
    return v.client(b"QUIT\r\n").server(b"221 bye\r\n").close()


def split_port() -> Convo:
    v = Convo("192.168.0.10", "198.51.100.20", cport=40001)
    v.server(b"220 synthetic\r\n")
    v.client(b"PORT 192,168,", b"0,10,19,", b"137\r\n")
    v.server(b"200 PORT ok\r\n").client(b"EPRT |1|192.168", b".0.10|5001|\r\nNOOP\r\n")
    return v.server(b"200 EPRT ok\r\n200 NOOP ok\r\n").close()


def pasv_no_parens() -> Convo:
    v = Convo("198.51.100.30", "10.0.0.5", cport=40002)
    v.server(b"220 synthetic\r\n").client(b"PASV\r\n")
    v.server(b"227 Entering Passive Mode 10,0,0,5,195,80\r\n").client(b"PASV\r\n")
    v.server(b"227 entering passive mode (10,0,0,5,195,81).\r\n").client(b"EPSV\r\n")
    v.server(b"229 Entering Extended Passive Mode (|||50002|)\r\n")
    return v.close()


def ipv6_eprt() -> Convo:
    v = Convo("fd00:1::10", "2001:db8:2::20", cport=40003)
    v.server(b"220 synthetic\r\n").client(b"EPRT |2|fd00:1::10|5003|\r\n")
    v.server(b"200 EPRT ok\r\n").client(b"EPSV\r\n")
    v.server(b"229 Entering Extended Passive Mode (|||50003|)\r\n")
    return v.close()


def many_rewrites(n: int = 60) -> Convo:
    v = Convo("192.168.0.10", "198.51.100.20", cport=40004)
    v.server(b"220 synthetic\r\n")
    for i in range(n):
        v.client(f"PORT 192,168,0,10,{20 + i % 200},{i}\r\n".encode(), ack=i % 3 == 0)
        v.server(b"200 PORT command successful\r\n", ack=i % 2 == 0)
    return v.close()


CAPTURES = {
    "lprt-228": lprt_228,
    "split-port": split_port,
    "pasv-no-parens": pasv_no_parens,
    "ipv6-eprt": ipv6_eprt,
    "many-rewrites": many_rewrites,
}


def make_all(folder: Path) -> dict[str, Path]:
    out = {}
    for name, make in CAPTURES.items():
        path = folder / f"{name}.pcap"
        write(path, make().packets)
        out[name] = path
    return out
