"""`ftp-alg status [--json]` against a real StatusServer on a unix socket."""

from __future__ import annotations

import argparse
import json
import select
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alg.daemon import command
from alg.daemon.settings import STATUS_SOCKET_ENV
from alg.daemon.status import StatusServer

SAMPLE: dict[str, Any] = {
    "pid": 4242,
    "uptime": 3.5,
    "sessions": 2,
    "expectations": None,
    "queue": 0,
    "queues": 1,
    "control_ports": [21, 2121],
    "counters": {"packets": 10, "refusal.bounce": 1},
}


def main(argv: list[str]) -> int:
    """The `ftp-alg` parser with only the daemon's subcommands (the others are not needed)."""
    parser = argparse.ArgumentParser(prog="ftp-alg")
    command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[str]:
    """A StatusServer answering SAMPLE until the test ends (its own thread, bounded waits)."""
    path = str(tmp_path / "run" / "status.sock")
    server = StatusServer(path)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            ready, _, _ = select.select([server], [], [], 0.05)
            if ready:
                server.serve(SAMPLE)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()


def test_json_is_the_whole_state(socket_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json", "--status-socket", socket_path]) == 0
    assert json.loads(capsys.readouterr().out) == SAMPLE


def test_text_has_the_summary_and_counters(
    socket_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--status-socket", socket_path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pid 4242, up 3.5 s, queue 0, sessions 2")
    assert lines[1:] == ["packets 10", "refusal.bounce 1"]


def test_environment_names_the_default_socket(
    socket_path: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATUS_SOCKET_ENV, socket_path)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == 4242


def test_no_daemon_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json", "--status-socket", str(tmp_path / "none.sock")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no daemon answers" in captured.err
