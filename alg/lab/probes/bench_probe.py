"""The client side of `ftp-alg lab bench`, run inside the client namespace:
`ip netns exec PREFIX-client python alg/lab/probes/bench_probe.py WORKLOAD SERVER ...`.

Stdlib only and raw sockets only, so that the client costs little CPU (the server, the router
and the client share two cores) and every byte on the control connection is known. Each
workload prints one JSON document on stdout; `idle` also talks over stdin/stdout while it
holds its sessions open.

Workloads:
  rtt       COUNT NOOP/200 exchanges over a few logged-in sessions, each timed (us); each
            session sends a PWD first, so that ftp-alg watches it (Control.watched)
  sessions  complete sessions (connect, login, PORT or PASV, LIST, QUIT) for SECONDS, with
            PARALLEL of them at once (threads spread over a few processes)
  retr      RETR one file in active or passive mode, COUNT times, each timed at the client
  idle      COUNT logged-in sessions held open until told to close them (reporting
            after STEP of them too), each watched by ftp-alg (a PWD after the login)
  survive   COUNT sessions with a rewritten PORT behind them, tried again once told (after
            a daemon restart or a router failover)

Data connections are closed with a reset once the server's FIN has arrived, so the server
keeps no TIME_WAIT for them: vsftpd connects active data from port 20, and at hundreds of
sessions a second its TIME_WAITs would otherwise collide with reused client ports.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import resource
import socket
import struct
import sys
import threading
import time
from typing import Any

_PASV = re.compile(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")
_LINGER_RESET = struct.pack("ii", 1, 0)


class ProbeError(RuntimeError):
    """The server did not answer as a working FTP session would."""


class Control:
    """One FTP control connection with a reply reader (multi-line aware)."""

    def __init__(self, server: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((server, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.expect(b"220")

    def reply(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line = self.buf[:end]
                if len(line) >= 4 and line[3:4] == b" " and line[:3].isdigit():
                    text, self.buf = self.buf[: end + 2], self.buf[end + 2 :]
                    return text
                end = self.buf.find(b"\r\n", end + 2)
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ProbeError("control connection closed by the server")
            self.buf += chunk

    def expect(self, *codes: bytes) -> bytes:
        text = self.reply()
        if text[:3] not in codes:
            raise ProbeError(f"expected {b'/'.join(codes).decode()}, got {text[:80]!r}")
        return text

    def cmd(self, line: bytes, *codes: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.expect(*codes)

    def login(self) -> None:
        if self.cmd(b"USER anonymous", b"230", b"331")[:3] == b"331":
            self.cmd(b"PASS bench@", b"230")

    def watched(self) -> None:
        """Log in, then make ftp-alg watch the session: until a session's first line that
        is not a login line, the kernel's skip rule keeps it from the daemon (as it does
        for real sessions until their first PWD, LIST, PASV, ...), and a figure of a
        session the daemon never saw would not be a figure of ftp-alg."""
        self.login()
        self.cmd(b"PWD", b"257")

    def close(self) -> None:
        self.sock.close()


def _drain(conn: socket.socket, buf: bytearray) -> int:
    """Read the data connection to its end; reset it then (see the module's docstring)."""
    view, total = memoryview(buf), 0
    while n := conn.recv_into(view):
        total += n
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    conn.close()
    return total


def _data(ctl: Control, active: bool, command: bytes, buf: bytearray) -> int:
    """Open the data connection (PORT or PASV), send `command`, read what arrives."""
    if active:
        local = ctl.sock.getsockname()[0]
        with socket.create_server((local, 0)) as listener:
            listener.settimeout(10)
            port = listener.getsockname()[1]
            addr = local.replace(".", ",").encode()
            ctl.cmd(b"PORT %s,%d,%d" % (addr, port >> 8, port & 255), b"200")
            ctl.cmd(command, b"150", b"125")
            conn, _ = listener.accept()
    else:
        m = _PASV.search(ctl.cmd(b"PASV", b"227"))
        if m is None:
            raise ProbeError("227 without an address")
        port = int(m[5]) * 256 + int(m[6])
        # the control connection's peer, as Python's ftplib and curl do by default
        conn = socket.create_connection((ctl.sock.getpeername()[0], port), timeout=10)
        ctl.cmd(command, b"150", b"125")
    total = _drain(conn, buf)
    ctl.expect(b"226")
    return total


# ---- workloads ---------------------------------------------------------------------------


def rtt(server: str, port: int, count: int, sessions: int = 4, warmup: int = 50) -> dict[str, Any]:
    """`count` NOOP exchanges spread over `sessions` sessions one after the other: each
    session's server process lands on a CPU of its own choosing, so one unlucky placement
    does not decide the whole figure."""
    samples: list[float] = []
    clock = time.perf_counter_ns
    for k in range(sessions):
        ctl = Control(server, port)
        ctl.watched()
        sock = ctl.sock
        share = count // sessions + (1 if k < count % sessions else 0)
        for i in range(warmup + share):
            start = clock()
            sock.sendall(b"NOOP\r\n")
            got = sock.recv(256)
            while not got.endswith(b"\r\n"):
                more = sock.recv(256)
                if not more:
                    raise ProbeError("control connection closed during NOOPs")
                got += more
            took = clock() - start
            if not got.startswith(b"200"):
                raise ProbeError(f"NOOP answered {got[:80]!r}")
            if i >= warmup:
                samples.append(round(took / 1000, 1))
        ctl.cmd(b"QUIT", b"221")
        ctl.close()
    return {"samples_us": samples}


def _session(server: str, port: int, active: bool, buf: bytearray) -> None:
    stage = "connect"
    try:
        ctl = Control(server, port)
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"{stage}: {type(exc).__name__}: {exc}") from exc
    try:
        stage = "login"
        ctl.login()
        stage = "data"
        if _data(ctl, active, b"LIST", buf) <= 0:
            raise ProbeError("empty listing")
        stage = "quit"
        ctl.cmd(b"QUIT", b"221")
    except (OSError, ProbeError) as exc:
        raise ProbeError(f"{stage}: {type(exc).__name__}: {exc}") from exc
    finally:
        ctl.close()


def _worker(
    server: str, port: int, active: bool, threads: int, start: float, stop: float, out: Any
) -> None:
    """One process of the session workload: `threads` sequential session loops."""
    lock = threading.Lock()
    tally: dict[str, Any] = {"ok": 0, "errors": 0, "error": None, "end": start}

    def loop() -> None:
        buf = bytearray(65536)
        time.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < stop:
            try:
                _session(server, port, active, buf)
                ok = True
            except (OSError, ProbeError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            with lock:
                if ok:
                    tally["ok"] += 1
                else:
                    tally["errors"] += 1
                    tally["error"] = tally["error"] or error
            if not ok:
                time.sleep(0.01)  # a failing server is not hammered in a tight loop
        with lock:
            tally["end"] = max(tally["end"], time.monotonic())

    pool = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=stop - time.monotonic() + 30)
    out.send(tally)
    out.close()


def sessions(server: str, port: int, active: bool, parallel: int, seconds: float) -> dict[str, Any]:
    procs = min(parallel, 4)
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.3  # every worker is forked and waiting by then
    stop = start + seconds
    workers = []
    for i in range(procs):
        threads = parallel // procs + (1 if i < parallel % procs else 0)
        rd, wr = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(server, port, active, threads, start, stop, wr))
        p.start()
        wr.close()
        workers.append((p, rd))
    tallies = []
    for p, rd in workers:
        if rd.poll(seconds + 60):
            tallies.append(rd.recv())
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if len(tallies) != procs:
        raise ProbeError(f"only {len(tallies)} of {procs} session workers reported")
    ok = sum(t["ok"] for t in tallies)
    end = max(t["end"] for t in tallies)
    errors = [t["error"] for t in tallies if t["error"]]
    return {
        "sessions": ok,
        "errors": sum(t["errors"] for t in tallies),
        "first_error": errors[0] if errors else None,
        "seconds": round(end - start, 4),
        "rate": ok / (end - start),
    }


def retr(server: str, port: int, path: str, active: bool, count: int) -> dict[str, Any]:
    ctl = Control(server, port, timeout=60)
    ctl.login()
    ctl.cmd(b"TYPE I", b"200")
    buf = bytearray(1 << 20)
    runs = []
    for _ in range(count):
        start = time.perf_counter()
        size = _data(ctl, active, b"RETR " + path.encode(), buf)
        took = time.perf_counter() - start
        runs.append({"bytes": size, "seconds": took, "mb_s": size / took / 1e6})
    ctl.cmd(b"QUIT", b"221")
    ctl.close()
    return {"runs": runs}


def idle(server: str, port: int, count: int, step: int) -> dict[str, Any]:
    """Open `step` logged-in sessions, report, wait for a line on stdin; open the rest up to
    `count`, report, wait again; then close them all."""
    held: list[Control] = []
    try:
        for target in (step, count):
            while len(held) < target:
                ctl = Control(server, port)
                held.append(ctl)
                ctl.watched()
            print(json.dumps({"open": len(held)}), flush=True)
            sys.stdin.readline()
        for ctl in held:
            ctl.sock.sendall(b"QUIT\r\n")
    finally:
        for ctl in held:
            ctl.close()
    return {"closed": len(held)}


def survive(server: str, port: int, count: int, after_timeout: float) -> dict[str, Any]:
    """Open `count` sessions that each made an active LIST (its PORT rewritten, one byte
    shorter: the connection now needs the kernel's offsets), report, wait for a line on stdin
    (the daemon is restarted or the router fails over meanwhile), then try an active LIST and
    a NOOP on every session at once, each given `after_timeout` seconds of silence."""
    held: list[Control] = []
    try:
        for _ in range(count):
            ctl = Control(server, port, timeout=10)
            held.append(ctl)
            ctl.login()
            _data(ctl, True, b"LIST", bytearray(1 << 16))
        print(json.dumps({"open": len(held)}), flush=True)
        sys.stdin.readline()
        went_on: list[bool] = []
        errors: list[str] = []

        def again(ctl: Control) -> None:
            ctl.sock.settimeout(after_timeout)
            try:
                _data(ctl, True, b"LIST", bytearray(1 << 16))
                ctl.cmd(b"NOOP", b"200")
                went_on.append(True)  # list.append is atomic under the GIL
            except (OSError, ProbeError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        pool = [threading.Thread(target=again, args=(ctl,), daemon=True) for ctl in held]
        for t in pool:
            t.start()
        for t in pool:
            t.join(timeout=after_timeout * 3 + 30)
        first = errors[0] if errors else None
        return {"sessions": len(held), "survived": len(went_on), "first_error": first}
    finally:
        for ctl in held:
            ctl.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workload", choices=["rtt", "sessions", "retr", "idle", "survive"])
    p.add_argument("server")
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--step", type=int, default=0, help="idle: report after this many too")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--passive", action="store_true")
    p.add_argument("--path", default="1mib.bin")
    p.add_argument("--after-timeout", type=float, default=10.0, help="survive: after the loss")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if a.workload == "rtt":
        out = rtt(a.server, a.port, a.count)
    elif a.workload == "sessions":
        out = sessions(a.server, a.port, not a.passive, a.parallel, a.seconds)
    elif a.workload == "retr":
        out = retr(a.server, a.port, a.path, not a.passive, a.count)
    elif a.workload == "survive":
        out = survive(a.server, a.port, a.count, a.after_timeout)
    else:
        out = idle(a.server, a.port, a.count, a.step)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
