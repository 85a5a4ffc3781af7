"""`ftp-alg lab exec router -- ...` finds the lab's daemon: the router's environment names its
status socket, so `doctor` (and `status`) need no options there.

The lab (prefix `ob`) runs without a gateway; a stand-in reader (tests/lab/test_doctor.py)
binds the router's queue and answers on the socket path the lab gives its daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from alg.daemon.settings import CONFIG_ENV, STATUS_SOCKET_ENV
from alg.daemon.status import query
from alg.lab import backend, state
from alg.lab.topology import load
from tests.lab.conftest import unavailable
from tests.lab.test_doctor import ROOT, STAND_IN

pytestmark = [pytest.mark.netns, pytest.mark.slow]
PREFIX = os.environ.get("FTP_ALG_TEST_LAB", "") + "ob"
# `ftp-alg lab exec` without the rest of the CLI (its own code path: backend.exec_in)
EXEC = (
    "import sys; from alg.lab import backend; "
    "sys.exit(backend.exec_in(sys.argv[1], sys.argv[2], sys.argv[3:]))"
)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    backend.up(PREFIX, "none", replace=True, log=lambda _: None)
    try:
        yield PREFIX
    finally:
        backend.down(PREFIX, log=lambda _: None)


@pytest.fixture
def stand_in(lab: str) -> Iterator[int]:
    """A queue reader answering on the lab daemon's socket, in the router namespace."""
    router = load().router
    path = str(state.node_dir(lab, router) / "ftp-alg-status.sock")
    ns = backend.namespace(lab, router)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", STAND_IN, path], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                query(path, timeout=0.5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the stand-in did not answer"
                time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def lab_exec(node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (STATUS_SOCKET_ENV, CONFIG_ENV)}
    return subprocess.run(
        [sys.executable, "-c", EXEC, PREFIX, node, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )


def test_doctor_in_the_router_finds_the_lab_daemon(stand_in: int) -> None:
    done = lab_exec(
        "router", sys.executable, "-m", "alg.doctor", "--json", "--invalid-seconds", "0"
    )
    findings: list[dict[str, Any]] = json.loads(done.stdout)
    whats = [f["what"] for f in findings if f["severity"] == "ok"]
    assert f"the daemon answers (pid {stand_in}, up 1.0 s)" in whats
    assert "NFQUEUE 0.. has a reader" in whats
    errors = [f["what"] for f in findings if f["severity"] == "error"]
    assert errors == ["the ftp-alg rules are not installed: no FTP packet reaches the daemon"]
    assert done.returncode == 1  # gateway none: no rules


def test_only_the_router_names_the_socket(lab: str) -> None:
    show = (
        "import os; "
        f"print(os.environ.get({STATUS_SOCKET_ENV!r}), repr(os.environ.get({CONFIG_ENV!r})))"
    )
    router = lab_exec("router", sys.executable, "-c", show).stdout.split()
    assert router == [str(state.node_dir(lab, "router") / "ftp-alg-status.sock"), "''"]
    assert lab_exec("client", sys.executable, "-c", show).stdout.split() == ["None", "None"]
