"""`ftp-alg status`: the running daemon's counters, over a unix socket.

The daemon answers each connection with one JSON document and closes it; nothing is read
from the client, so a stuck client cannot stall the packet loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any


class StatusServer:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o660)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(BlockingIOError):
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(0.5)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(status, indent=1, sort_keys=True).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def query(path: str, timeout: float = 2.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result
