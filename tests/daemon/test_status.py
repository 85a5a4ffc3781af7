"""The status socket: served over a real unix socket; it never removes a file it did not make."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from alg.daemon.status import StatusServer, query


def _serve_once(server: StatusServer, path: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        server.serve({"pid": 1, "counters": {"rewrite": 3}})
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    result: dict[str, object] = json.loads(b"".join(chunks))
    return result


def test_serves_json_and_makes_its_directory_0750(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "status.sock")
    old = os.umask(0o022)
    try:
        server = StatusServer(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        assert _serve_once(server, path) == {"pid": 1, "counters": {"rewrite": 3}}
    finally:
        server.close()
    assert not os.path.exists(path)


def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "status.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, as after a crash
    server = StatusServer(path)
    try:
        assert _serve_once(server, path)["pid"] == 1
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_a_non_socket_at_the_path_is_refused_and_kept(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "status.sock"
    if kind == "file":
        path.write_text("keep me")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    with pytest.raises(FileExistsError, match="not a socket"):
        StatusServer(str(path))
    assert os.path.lexists(path) and target.read_text() == "keep me"
    if kind == "file":
        assert path.read_text() == "keep me"


def test_close_leaves_a_newer_daemons_socket_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "status.sock")
    first = StatusServer(path)
    second = StatusServer(path)  # a restarted daemon took the path over
    try:
        first.close()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    finally:
        second.close()
    assert not os.path.exists(path)


def test_query_reads_a_running_server(tmp_path: Path) -> None:
    path = str(tmp_path / "status.sock")
    server = StatusServer(path)
    result: list[dict[str, object]] = []
    asker = threading.Thread(target=lambda: result.append(query(path)))
    try:
        asker.start()
        for _ in range(200):  # bounded: serve() does not block when nobody is waiting
            server.serve({"pid": 2})
            if result:
                break
            time.sleep(0.01)
        asker.join(timeout=5)
    finally:
        server.close()
    assert result == [{"pid": 2}]
    with pytest.raises(OSError):
        query(path, timeout=0.5)
