"""A small NAT router for the core's tests: the daemon's part, the kernel's part, two peers.

Packets are built with struct (not scapy) so property tests can make thousands of them. The
`Link` plays what runs on a router:
- the queue: only segments that carry payload reach the gateway (the rules' BPF match);
  pure ACKs, SYNs and FINs without data go straight to the kernel. With `skip_login`, the
  skip rules too (alg/kernel/rules_skip.py, modelled here on their own): until the daemon's
  look-up marks the connection, whole login lines pass unqueued, and plain replies always;
- the daemon: it carries out the gateway's commands in order, answers `Lookup` from the
  kernel's records and `Reserve` with a port, and counts verdicts per queued packet (every
  packet must get exactly one);
- the kernel: conntrack's seqadj, written only by `WriteSeqAdj`, shifts seq, ack and SACK of
  every packet that leaves, queued or not. `KernelSeqAdj` below follows
  net/netfilter/nf_conntrack_seqadj.c on its own, apart from the core's model of it.
Then the far side's `Receiver` reassembles the stream as a TCP would.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from dataclasses import dataclass, field

from alg.core import (
    Accept,
    Command,
    DataExpectation,
    Drop,
    Found,
    Gateway,
    Lookup,
    Reserve,
    Reserved,
    SeqAdjRecord,
    WriteSeqAdj,
)
from alg.core.packet import ACK, PSH, SYN, build, ipv4_checksum_ok, parse, rebuild, tcp_checksum_ok
from alg.kernel.rules_skip import CLIENT_PREFIXES, CLIENT_WORDS, SERVER_PREFIXES, SERVER_WORDS

__all__ = ["Link", "Peer", "VerdictError", "build", "ip", "sack_option"]

MASK = 0xFFFFFFFF


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def sack_option(*blocks: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack("!II", a & MASK, b & MASK) for a, b in blocks)
    return b"\x01\x01" + bytes((5, 2 + len(body))) + body


def _after(a: int, b: int) -> bool:
    """The kernel's after(): (__s32)(b - a) < 0."""
    return ((b - a) & MASK) >= 0x80000000


@dataclass
class KernelSeqAdj:
    """struct nf_ct_seqadj for one direction, applied as nf_ct_seq_adjust does."""

    correction_pos: int = 0
    offset_before: int = 0
    offset_after: int = 0

    def seq(self, seq: int) -> int:
        off = self.offset_after if _after(seq, self.correction_pos) else self.offset_before
        return (seq + off) & MASK

    def ack(self, ack: int) -> int:  # also nf_ct_sack_block_adjust for each edge
        if _after((ack - self.offset_before) & MASK, self.correction_pos):
            return (ack - self.offset_after) & MASK
        return (ack - self.offset_before) & MASK


def kernel_adjust(pkt: bytes, this_way: KernelSeqAdj, other_way: KernelSeqAdj) -> bytes:
    seg = parse(pkt)
    return rebuild(
        seg,
        this_way.seq(seg.seq),
        other_way.ack(seg.ack),
        sack=lambda a, b: (other_way.ack(a), other_way.ack(b)),
        full_checksum=True,
    )


@dataclass
class Receiver:
    """Reassembles what arrives in one direction, as the far TCP would, and checks that bytes
    arriving again (retransmissions, overlaps) are the same bytes it already has: a gateway
    that rewrote a retransmission differently would corrupt the stream without a trace."""

    nxt: int
    stream: bytearray = field(default_factory=bytearray)
    ooo: dict[int, bytes] = field(default_factory=dict)
    start: int = -1
    strict: bool = True  # off for fuzzed senders, which send different bytes at one seq

    def __post_init__(self) -> None:
        self.start = self.nxt

    def take(self, seq: int, payload: bytes) -> None:
        self._check(seq, payload)
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

    def _check(self, seq: int, payload: bytes) -> None:
        pos = (seq - self.start) & MASK
        if pos >= 0x80000000 or not self.strict:
            return  # before the stream this receiver saw begin
        have = bytes(self.stream[pos : pos + len(payload)])
        if have != payload[: len(have)]:
            raise AssertionError(f"bytes at {pos} arrived as {payload!r}, earlier as {have!r}")

    @property
    def sack_blocks(self) -> list[tuple[int, int]]:
        """What this receiver would SACK: its out-of-order segments (RFC 2018), newest 3."""
        blocks = [(s, (s + len(d)) & MASK) for s, d in self.ooo.items() if d]
        return blocks[-3:]


@dataclass
class Peer:
    addr: bytes  # its own address
    port: int
    seq: int  # next sequence number to send
    seen_as: bytes = b""  # its address as the other side knows it (NAT); own address if empty

    def __post_init__(self) -> None:
        self.seen_as = self.seen_as or self.addr


def skippable(payload: bytes, from_client: bool) -> bool:
    """The skip rule's test of one segment: whole lines, a login verb or plain reply first,
    no word the gateway acts on anywhere (in any case)."""
    if len(payload) < 4 or not payload.endswith(b"\n"):
        return False
    words: tuple[str, ...] = CLIENT_WORDS if from_client else SERVER_WORDS
    prefixes: tuple[bytes, ...] = CLIENT_PREFIXES if from_client else SERVER_PREFIXES
    first = payload[:4].lower() if from_client else payload[:4]
    upper = payload.upper()
    return first in prefixes and not any(w.encode() in upper for w in words)


class VerdictError(AssertionError):
    """A queued packet got a second verdict, or one it never asked for."""


@dataclass
class Link:
    """Client and server talking through a NAT router running a Gateway."""

    gw: Gateway
    client: Peer
    server: Peer
    now: float = 0.0
    taken_ports: set[int] = field(default_factory=set)  # the kernel refuses these (EEXIST)
    queue_all: bool = False  # queue segments without payload too (the replay does)
    skip_login: bool = False  # the skip rules stand before the queue rule
    marked: bool = False  # the connection carries the watch bit (set by the look-up)
    skipped: int = 0  # segments the skip rule let pass
    to_server: list[bytes] = field(default_factory=list)  # what left the router, in order
    to_client: list[bytes] = field(default_factory=list)
    queued: dict[int, tuple[bytes, bool]] = field(default_factory=dict)  # awaiting a verdict
    verdicts: dict[int, str] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)  # Reports, Withdraws and Reserves
    expectations: list[DataExpectation] = field(default_factory=list)
    kernel: tuple[KernelSeqAdj, KernelSeqAdj] = field(
        default_factory=lambda: (KernelSeqAdj(), KernelSeqAdj())
    )
    seqadj_writes: int = 0
    _handle: int = 0

    def __post_init__(self) -> None:
        self.at_server = Receiver(self.client.seq)
        self.at_client = Receiver(self.server.seq)

    @property
    def original(self) -> tuple[bytes, int, bytes, int]:
        c, s = self.client, self.server
        return (c.addr, c.port, s.seen_as, s.port)

    @property
    def reply(self) -> tuple[bytes, int, bytes, int]:
        c, s = self.client, self.server
        return (s.addr, s.port, c.seen_as, c.port)

    @property
    def held(self) -> dict[int, tuple[bytes, bool]]:
        return self.queued

    def handshake(self) -> None:
        c, s = self.client, self.server
        self.send(True, SYN, seq=c.seq - 1, ack=0)
        self.send(False, SYN | ACK, seq=s.seq - 1, ack=c.seq)
        self.send(True, ACK, seq=c.seq, ack=s.seq)

    def log_in(self, greeting: bytes = b"220 ready\r\n") -> None:
        """The greeting, USER and 230: with `skip_login`, lines the kernel lets pass."""
        self.send(False, payload=greeting)
        self.send(True, payload=b"USER a\r\n")
        self.send(False, payload=b"230 ok\r\n")

    def send(
        self,
        from_client: bool,
        flags: int = ACK | PSH,
        payload: bytes = b"",
        seq: int | None = None,
        ack: int | None = None,
        options: bytes = b"",
        advance: bool = True,
    ) -> list[Command]:
        """A packet as it reaches the queue (mangle POSTROUTING: after DNAT, before SNAT)."""
        me, peer = (self.client, self.server) if from_client else (self.server, self.client)
        if seq is None:
            seq = me.seq
        if ack is None:
            recv = self.at_client if from_client else self.at_server
            ack = recv.nxt  # acks what this side has received, in its own space
        pkt = build(me.addr, peer.addr, me.port, peer.port, seq, ack, flags, payload, options)
        if advance and seq == me.seq:
            me.seq = (me.seq + len(payload)) & MASK
        return self.feed(pkt, from_client)

    def feed(self, pkt: bytes, from_client: bool) -> list[Command]:
        seg = parse(pkt)
        if not seg.payload_len and not self.queue_all:
            self.deliver(pkt, from_client)  # not queued: the kernel alone shifts it
            return []
        unwatched = not self.marked or not from_client  # replies pass whatever the bit
        if self.skip_login and unwatched and skippable(seg.payload, from_client):
            self.skipped += 1
            self.deliver(pkt, from_client)
            return []
        self._handle += 1
        handle = self._handle
        self.queued[handle] = (pkt, from_client)
        return self.carry(self.gw.packet(handle, pkt, self.now))

    def carry(self, commands: list[Command]) -> list[Command]:
        """What the daemon does: every command in order, answers handed straight back."""
        done: list[Command] = []
        todo = deque(commands)
        while todo:
            cmd = todo.popleft()
            done.append(cmd)
            if isinstance(cmd, Accept | Drop):
                self._verdict(cmd)
            elif isinstance(cmd, Lookup):
                ko, kr = self.kernel
                records = (_record(ko), _record(kr))
                watched = self.marked or not self.skip_login
                self.marked = self.marked or self.skip_login  # the look-up sets the bit
                found = Found(cmd.key, self.original, self.reply, *records, watched=watched)
                todo.extend(self.gw.answer(found, self.now))
            elif isinstance(cmd, Reserve):
                self.events.append(cmd)
                port = self._reserve(cmd)
                if port is not None:
                    self.expectations.append(cmd.proposal._replace(outside_port=port))
                todo.extend(self.gw.answer(Reserved(cmd.proposal.session, port), self.now))
            elif isinstance(cmd, WriteSeqAdj):
                rec = self.kernel[int(cmd.direction)]
                r = cmd.record
                rec.correction_pos, rec.offset_before, rec.offset_after = r
                self.seqadj_writes += 1
            else:
                self.events.append(cmd)
        return done

    def _reserve(self, cmd: Reserve) -> int | None:
        want = cmd.proposal.outside_port
        if want not in self.taken_ports:
            return want
        if cmd.fixed:
            return None
        return next((p for p in range(50000, 50100) if p not in self.taken_ports), None)

    def _verdict(self, cmd: Accept | Drop) -> None:
        handle = cmd.handle
        assert isinstance(handle, int)
        if handle in self.verdicts or handle not in self.queued:
            raise VerdictError(f"packet {handle}: {type(cmd).__name__} after {self.verdicts}")
        pkt, from_client = self.queued.pop(handle)
        self.verdicts[handle] = type(cmd).__name__
        if isinstance(cmd, Accept) and cmd.data is not None and not _checksums_ok(cmd.data):
            raise AssertionError(f"packet {handle} left the gateway with a bad checksum")
        if isinstance(cmd, Accept):
            self.deliver(cmd.data if cmd.data is not None else pkt, from_client)

    def tick(self, dt: float) -> None:
        self.now += dt
        self.carry(self.gw.tick(self.now))

    def close(self) -> None:
        self.carry(self.gw.close(self.now))

    def deliver(self, pkt: bytes, from_client: bool) -> None:
        ko, kr = self.kernel
        out = kernel_adjust(pkt, ko, kr) if from_client else kernel_adjust(pkt, kr, ko)
        (self.to_server if from_client else self.to_client).append(out)
        seg = parse(out)
        if seg.payload_len:
            (self.at_server if from_client else self.at_client).take(seg.seq, seg.payload)


def _checksums_ok(data: bytes) -> bool:
    return tcp_checksum_ok(data) and (data[0] >> 4 == 6 or ipv4_checksum_ok(data))


def _record(k: KernelSeqAdj) -> SeqAdjRecord:
    return SeqAdjRecord(k.correction_pos, k.offset_before, k.offset_after)
