"""`ftp-alg doctor` on a real kernel: one namespace (ob-doc-PID) with the rule set applied by
the `rules apply` code, a reader bound to the queue, then each thing broken in turn.

The daemon's loop is being rewritten, so the reader here is a stand-in: a process that binds
NFQUEUE 0 with netfilterqueue (as the daemon does) and answers the status socket with a
StatusServer. The doctor sees what it sees of the real daemon: a bound queue and an answer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.daemon.settings import CONFIG_ENV, STATUS_SOCKET_ENV
from alg.daemon.status import query
from alg.lab import netns

pytestmark = pytest.mark.netns
NS = f"ob-doc-{os.getpid()}"
ROOT = Path(__file__).resolve().parents[2]

# `ftp-alg rules ...` through its own module (the real subcommand code).
RULES = """\
import argparse, sys
from alg.kernel import rules_command
parser = argparse.ArgumentParser()
rules_command.register(parser.add_subparsers(required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""
STAND_IN = """\
import os, select, sys, time
from netfilterqueue import NetfilterQueue
from alg.daemon.status import StatusServer
nfq = NetfilterQueue()
nfq.bind(0, lambda pkt: pkt.accept())
server = StatusServer(sys.argv[1])
status = {"pid": os.getpid(), "uptime": 1.0, "queue": 0, "queues": 1,
          "control_ports": [21, 2121], "sessions": 0, "counters": {}}
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    ready, _, _ = select.select([nfq.get_fd(), server.fileno()], [], [], 0.2)
    if nfq.get_fd() in ready:
        nfq.run(block=False)
    if server.fileno() in ready:
        server.serve(status)
"""


class Router:
    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "status.sock")
        self.stand_in: subprocess.Popen[bytes] | None = None

    def rules(self, action: str) -> subprocess.CompletedProcess[str]:
        argv = (sys.executable, "-c", RULES, "rules", action, "--backend", "iptables")
        return netns.run_in(NS, *argv, check=False)

    def start_daemon(self) -> None:
        self.stand_in = subprocess.Popen(
            netns.in_ns(NS, [sys.executable, "-c", STAND_IN, self.socket]), cwd=ROOT
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                query(self.socket, timeout=0.5)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the stand-in daemon did not answer")

    def stop_daemon(self) -> None:
        if self.stand_in is not None:
            self.stand_in.terminate()
            self.stand_in.wait(timeout=10)
            self.stand_in = None

    def doctor(self) -> tuple[int, str]:
        env = {**os.environ, STATUS_SOCKET_ENV: self.socket, CONFIG_ENV: ""}
        argv = (sys.executable, "-m", "alg.doctor", "--quiet", "--invalid-seconds", "0.2")
        done = netns.run_in(NS, *argv, check=False, env=env)
        return done.returncode, done.stdout


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", "iptables", "ip6tables", "conntrack"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    netns.add(NS)
    try:
        yield NS
    finally:
        netns.delete(NS)


@pytest.fixture
def router(namespace: str, tmp_path: Path) -> Iterator[Router]:
    """Healthy to begin with: rules applied, a reader on the queue answering its socket."""
    handle = Router(tmp_path)
    applied = handle.rules("apply")
    assert applied.returncode == 0, applied.stderr
    handle.start_daemon()
    try:
        yield handle
    finally:
        handle.stop_daemon()
        for table in ("raw", "mangle"):
            for tool in ("iptables", "ip6tables"):
                netns.run_in(NS, tool, "-t", table, "-D", "PREROUTING", "-p", "tcp", "--dport",
                             "21", "-j", "CT", "--helper", "ftp", check=False)  # fmt: skip
        handle.rules("remove")


def test_healthy_router_exits_0(router: Router) -> None:
    status, out = router.doctor()
    assert (status, out) == (0, "")


def test_no_daemon(router: Router) -> None:
    router.stop_daemon()
    status, out = router.doctor()
    assert status == 1
    assert "ERROR: the daemon does not answer on " + router.socket in out
    assert "ERROR: nobody reads NFQUEUE 0" in out


def test_no_rules(router: Router) -> None:
    assert router.rules("remove").returncode == 0
    status, out = router.doctor()
    assert status == 1
    assert "ERROR: the ftp-alg rules are not installed" in out
    assert "fix: ftp-alg rules apply --ports 21,2121 --queue-num 0" in out


def test_ftp_helper_rule(router: Router) -> None:
    netns.run_in(NS, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21",
                 "-j", "CT", "--helper", "ftp")  # fmt: skip
    status, out = router.doctor()
    assert status == 1
    assert "the kernel `ftp` helper is attached" in out
    assert "--dport 21 -j CT --helper ftp" in out


def test_anchor_removed(router: Router) -> None:
    netns.run_in(NS, "ip6tables", "-t", "raw", "-D", "FTP_ALG", "-p", "tcp", "-m", "multiport",
                 "--dports", "21,2121", "-j", "CT", "--helper", "sane")  # fmt: skip
    status, out = router.doctor()
    assert status == 1
    assert "ERROR: ip6tables: no `-j CT --helper sane` anchor for control port(s) 21,2121" in out
    assert "ERROR: the ip6tables rules are stale" in out
    assert "ERROR: iptables" not in out  # the IPv4 rules are still right
