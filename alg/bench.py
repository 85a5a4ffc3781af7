"""`ftp-alg bench`: the core's speed and memory, one `name value` figure per line.

passthrough_pps  command and reply segments of a session whose kernel record holds an
                 offset (only segments with payload are queued; the kernel shifts them)
rewrite_pps      PORT segments rewritten, each with its reservation answered and its seqadj
                 record written (the server's ack after each is fed, not timed)
replay_pps       frames per second replaying zeek/cwd-navigation.pcap (shipped in alg/data),
                 reading and writing
session_bytes    memory per tracked, established session (tracemalloc)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from alg.captures import bench_capture
from alg.core import Command, FlowKey, Found, Gateway, Lookup, Reserve, Reserved
from alg.core.packet import ACK, PSH, build

_C, _C_OUT, _S = bytes((192, 168, 0, 1)), bytes((192, 168, 15, 5)), bytes((198, 51, 100, 2))
DEFAULT_CAPTURE = bench_capture()


def answer(gw: Gateway, commands: list[Command], tuples: dict[FlowKey, Found]) -> None:
    """The daemon's part, without a kernel: answer look-ups and reservations at once."""
    todo = list(commands)
    while todo:
        cmd = todo.pop(0)
        if isinstance(cmd, Lookup):
            todo[:0] = gw.answer(tuples[cmd.key], 0.0)
        elif isinstance(cmd, Reserve):
            todo[:0] = gw.answer(Reserved(cmd.proposal.session, cmd.proposal.outside_port), 0.0)


class _Session:
    """Builds the packets of one client-side NATed control connection, as mangle
    POSTROUTING queues them: inside addresses, payload segments only."""

    def __init__(self, gw: Gateway, cport: int) -> None:
        self.gw, self.cport = gw, cport
        self.c, self.s = 1000, 5000
        orig, reply = (_C, cport, _S, 21), (_S, 21, _C_OUT, cport)
        self.tuples = {k: Found(k, orig, reply) for k in (orig, (_S, 21, _C, cport))}
        answer(gw, gw.packet(0, self.server(b"220 ready\r\n"), 0.0), self.tuples)

    def client(self, payload: bytes, flags: int = ACK | PSH) -> bytes:
        pkt = build(_C, _S, self.cport, 21, self.c, self.s, flags, payload)
        self.c += len(payload)
        return pkt

    def server(self, payload: bytes = b"", flags: int = ACK | PSH, shift: int = 0) -> bytes:
        pkt = build(_S, _C, 21, self.cport, self.s, self.c + shift, flags, payload)
        self.s += len(payload)
        return pkt


def _rate(gw: Gateway, packets: list[bytes]) -> float:
    gc.collect()
    feed = gw.packet
    start = time.perf_counter()
    for i, pkt in enumerate(packets):
        feed(i, pkt, 1.0)
    return len(packets) / (time.perf_counter() - start)


def passthrough_pps(n: int) -> float:
    """Commands and replies of a session whose kernel record holds an offset (pure ACKs
    never reach the queue: the kernel shifts them)."""
    gw = Gateway()
    sess = _Session(gw, 40000)
    answer(gw, gw.packet(0, sess.client(b"PORT 192,168,0,1,4,1\r\n"), 0.0), sess.tuples)
    gw.packet(0, sess.server(b"200 ok\r\n", shift=1), 0.0)  # +1 from here on
    packets = []
    for _ in range(n // 2):
        packets.append(sess.client(b"NOOP\r\n"))
        packets.append(sess.server(b"200 ok\r\n", shift=1))
    return _rate(gw, packets)


def rewrite_pps(n: int) -> float:
    """PORT segments per second, each with its reservation answered (no kernel) and its
    seqadj record written; the server's 200 after each (which acknowledges the correction,
    as in real sessions) is fed too but not timed: passthrough_pps measures that path."""
    gw = Gateway()
    sess = _Session(gw, 40001)
    pairs = []
    for i in range(n):
        port = sess.client(f"PORT 192,168,0,1,{4 + i % 200},{i % 256}\r\n".encode())
        pairs.append((port, sess.server(b"200 ok\r\n", shift=i + 1)))
    gc.collect()
    feed, clock, spent, tuples = gw.packet, time.perf_counter, 0.0, sess.tuples
    for i, (port, ack) in enumerate(pairs):
        start = clock()
        answer(gw, feed(i, port, 1.0), tuples)
        spent += clock() - start
        feed(i, ack, 1.0)
    assert gw.counters.get("rewrite") == n
    return n / spent


def replay_pps(capture: Path) -> float:
    from alg.replay.command import replay  # scapy is imported only for this figure

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rep = replay(str(capture), {4: _C_OUT}, {}, os.path.join(tmp, "out.pcap"))
        return rep.report.frames / (time.perf_counter() - start)


def session_bytes(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    gw = Gateway()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        sess = _Session(gw, 10000 + i)
        gw.packet(0, sess.client(b"USER anonymous\r\n"), 0.0)
        del sess
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert gw.session_count == n
    return used / n


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the core's speed and memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--packets", type=int, default=200_000, help="packets per speed figure")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions for session_bytes")
    p.add_argument("--capture", type=Path, default=DEFAULT_CAPTURE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"passthrough_pps {passthrough_pps(args.packets):.0f}", flush=True)
    print(f"rewrite_pps {rewrite_pps(args.packets // 4):.0f}", flush=True)
    if args.capture.exists():
        print(f"replay_pps {replay_pps(args.capture):.0f}", flush=True)
    else:
        print(f"ftp-alg bench: {args.capture} not found, replay_pps skipped", file=sys.stderr)
    print(f"session_bytes {session_bytes(args.sessions):.0f}", flush=True)
    return 0
