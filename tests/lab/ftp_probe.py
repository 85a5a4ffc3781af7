"""FTP client probes run inside a lab namespace (`ip netns exec NS python ftp_probe.py ...`).

Each prints one JSON document on stdout describing what really happened: the server's
replies, the bytes received and their sha256. Kept as a plain script (stdlib only) so it
runs in a namespace without the test process's state.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ftplib
import hashlib
import json
import socket
import sys
import time


def _reply(sock: socket.socket, buf: bytearray) -> str:
    """One complete reply (multi-line aware), as text."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = buf.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" " and (i == 0 or line[:3] == lines[0][:3]):
                text = b"\r\n".join(lines[: i + 1]).decode()
                del buf[: len(b"\r\n".join(lines[: i + 1])) + 2]
                return text
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("control connection closed")
        buf += chunk
    raise TimeoutError("no complete reply")


def split_port(server: str, port: int, nodelay: bool, path: str) -> dict[str, object]:
    """PORT sent in two segments, then RETR over the active data connection."""
    ctl = socket.create_connection((server, port), timeout=10)
    ctl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
    buf = bytearray()
    replies = [_reply(ctl, buf)]
    for cmd in (b"USER anonymous\r\n", b"PASS probe@\r\n", b"TYPE I\r\n"):
        ctl.sendall(cmd)
        replies.append(_reply(ctl, buf))
    local = ctl.getsockname()[0]
    data = socket.create_server((local, 0))
    data.settimeout(10)
    dport = data.getsockname()[1]
    line = f"PORT {local.replace('.', ',')},{dport >> 8},{dport & 255}\r\n".encode()
    cut = line.index(b",", line.index(b",") + 1) + 1  # inside the address: "PORT a,b,"
    start = time.monotonic()
    ctl.send(line[:cut])
    ctl.send(line[cut:])
    replies.append(_reply(ctl, buf))
    port_ms = (time.monotonic() - start) * 1000
    ctl.sendall(f"RETR {path}\r\n".encode())
    replies.append(_reply(ctl, buf))
    body = b""
    if replies[-1].startswith("150"):
        conn, _ = data.accept()
        with conn:
            conn.settimeout(10)
            while chunk := conn.recv(65536):
                body += chunk
        replies.append(_reply(ctl, buf))
    ctl.sendall(b"QUIT\r\n")
    ctl.close()
    return {
        "replies": replies,
        "port_reply_ms": round(port_ms, 1),
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def many_rewrites(server: str, port: int, count: int, pause_at: int = 0) -> dict[str, object]:
    """One session, `count` active-mode listings: each a PORT rewritten, offsets adding up.
    With `pause_at`, after that many it says so on stdout and waits for a line on stdin (the
    test restarts the daemon meanwhile: a PORT sent while none runs would pass unrewritten)."""
    ftp = ftplib.FTP()
    ftp.connect(server, port, timeout=10)
    ftp.login()
    ftp.set_pasv(False)
    listings = []
    for i in range(count):
        if pause_at and i == pause_at:
            print(json.dumps({"paused": i}), flush=True)
            sys.stdin.readline()
        listings.append(ftp.nlst())
    noop = ftp.voidcmd("NOOP")
    ftp.quit()
    return {
        "listings": len(listings),
        "all_same": all(x == listings[0] for x in listings),
        "first": listings[0],
        "noop": noop,
    }


def _one_retr(server: str, port: int, path: str, active: bool) -> str:
    ftp = ftplib.FTP()
    ftp.connect(server, port, timeout=20)
    ftp.login()
    ftp.set_pasv(not active)
    digest = hashlib.sha256()
    ftp.retrbinary(f"RETR {path}", digest.update)
    ftp.quit()
    return digest.hexdigest()


def parallel(server: str, port: int, path: str, sessions: int, active: bool) -> dict[str, object]:
    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        futures = [pool.submit(_one_retr, server, port, path, active) for _ in range(sessions)]
        results = []
        for f in futures:
            try:
                results.append(f.result(timeout=60))
            except Exception as exc:  # reported, the test asserts on it
                results.append(f"error: {exc!r}")
    return {"results": results}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("probe", choices=["split-port", "many-rewrites", "parallel"])
    p.add_argument("server")
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--path", default="1mib.bin")
    p.add_argument("--nodelay", action="store_true")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--passive", action="store_true")
    p.add_argument("--pause-at", type=int, default=0)
    a = p.parse_args()
    if a.probe == "split-port":
        out = split_port(a.server, a.port, a.nodelay, a.path)
    elif a.probe == "many-rewrites":
        out = many_rewrites(a.server, a.port, a.count, a.pause_at)
    else:
        out = parallel(a.server, a.port, a.path, a.count, not a.passive)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
