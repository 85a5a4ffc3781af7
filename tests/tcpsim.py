"""A small TCP world for the core's tests: build packets by hand and run them through a Gateway.

Packets are built with struct (not scapy) so property tests can make thousands of them. The
`Link` plays the daemon's part: it carries out Release/Drop actions for held packets and
delivers what the gateway lets through to the far `Receiver`, which reassembles the stream.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from alg.core import Drop, Gateway, Outcome, Release, Verdict
from alg.core.packet import ACK, PSH, SYN, build, parse

MASK = 0xFFFFFFFF


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def sack_option(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", a & MASK, b & MASK) for a, b in blocks)
    return b"\x01\x01" + bytes((5, 2 + len(body))) + body


@dataclass
class Receiver:
    """Reassembles what arrives in one direction, as the far TCP would."""

    nxt: int
    stream: bytearray = field(default_factory=bytearray)
    ooo: dict[int, bytes] = field(default_factory=dict)

    def take(self, seq: int, payload: bytes) -> None:
        self.ooo[seq & MASK] = payload
        progressed = True
        while progressed:
            progressed = False
            for s, data in list(self.ooo.items()):
                off = (self.nxt - s) & MASK
                if off < 0x80000000 and off <= len(data):  # starts at or before nxt
                    del self.ooo[s]
                    if off < len(data):
                        self.stream += data[off:]
                        self.nxt = (self.nxt + len(data) - off) & MASK
                        progressed = True
                elif off < 0x80000000:
                    del self.ooo[s]  # entirely old


@dataclass
class Peer:
    addr: bytes  # its own address
    port: int
    seq: int  # next sequence number to send
    seen_as: bytes = b""  # its address as the other side knows it (NAT); own address if empty

    def __post_init__(self) -> None:
        self.seen_as = self.seen_as or self.addr


@dataclass
class Link:
    """Client and server talking through a Gateway; records what each side receives."""

    gw: Gateway
    client: Peer
    server: Peer
    now: float = 0.0
    # What the gateway emitted, per direction: (packet bytes) in order.
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    held: dict[int, tuple[bytes, bool]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    _handle: int = 0

    def __post_init__(self) -> None:
        self.at_server = Receiver(self.client.seq)
        self.at_client = Receiver(self.server.seq)
        c, s = self.client, self.server
        self.gw.bind((c.addr, c.port, s.seen_as, s.port), (s.addr, s.port, c.seen_as, c.port))

    def handshake(self) -> None:
        c, s = self.client, self.server
        self.send(True, SYN, seq=c.seq - 1, ack=0)
        c, s = self.client, self.server
        self.gw.bind((c.addr, c.port, s.seen_as, s.port), (s.addr, s.port, c.seen_as, c.port))
        self.send(False, SYN | ACK, seq=s.seq - 1, ack=c.seq)
        self.send(True, ACK, seq=c.seq, ack=s.seq)

    def send(
        self,
        from_client: bool,
        flags: int = ACK | PSH,
        payload: bytes = b"",
        seq: int | None = None,
        ack: int | None = None,
        options: bytes = b"",
        advance: bool = True,
    ) -> Outcome:
        me, peer = (self.client, self.server) if from_client else (self.server, self.client)
        if seq is None:
            seq = me.seq
        if ack is None:
            recv = self.at_client if from_client else self.at_server
            ack = recv.nxt  # acks what this side has received, in its own space
        pkt = build(me.addr, peer.seen_as, me.port, peer.port, seq, ack, flags, payload, options)
        if advance and seq == me.seq:
            me.seq = (me.seq + len(payload)) & MASK
        return self.feed(pkt, from_client)

    def feed(self, pkt: bytes, from_client: bool) -> Outcome:
        self._handle += 1
        handle = self._handle
        out = self.gw.packet(handle, pkt, self.now)
        self.outcomes.append(out)
        self.apply(out.actions)
        if out.verdict is Verdict.ACCEPT:
            self.deliver(out.data if out.data is not None else pkt, from_client)
        elif out.verdict is Verdict.HOLD:
            self.held[handle] = (pkt, from_client)
        return out

    def apply(self, actions: tuple[object, ...] | list[object]) -> None:
        for action in actions:
            if isinstance(action, Release):
                pkt, from_client = self.held.pop(action.handle)  # type: ignore[call-overload]
                self.deliver(action.data if action.data is not None else pkt, from_client)
            elif isinstance(action, Drop):
                self.held.pop(action.handle)  # type: ignore[call-overload]
            else:
                self.events.append(action)

    def tick(self, dt: float) -> None:
        self.now += dt
        self.apply(self.gw.tick(self.now))

    def deliver(self, pkt: bytes, from_client: bool) -> None:
        (self.to_server if from_client else self.to_client).append(pkt)
        seg = parse(pkt)
        if seg.payload_len:
            (self.at_server if from_client else self.at_client).take(seg.seq, seg.payload)
