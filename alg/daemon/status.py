"""`ftp-alg status`: the running daemon's counters, over a unix socket.

The daemon answers each connection with one JSON document and closes it; nothing is read
from the client, so a stuck client cannot stall the packet loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
from typing import Any


class StatusServer:
    """The listening socket at `path`; it replaces only a stale socket, never another file."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
        _remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o660)
            self.sock.listen(8)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._inode = os.lstat(path).st_ino

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
            if os.lstat(self.path).st_ino == self._inode:  # still ours, not a newer daemon's
                os.unlink(self.path)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket left by an earlier run; refuse anything else found at `path`.

    A mistyped `--status-socket /etc/passwd` must not delete that file: only a socket (never
    followed through a symlink) is removed.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST, "status socket path exists and is not a socket; not replacing it", path
        )
    os.unlink(path)


def query(path: str, timeout: float = 2.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result
