"""One throw-away network namespace for the hardening kernel tests (names hd-*-PID).

Rules are only ever added inside it; deleting it removes them, its queues and its sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest

from alg.lab import netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = os.environ.get("FTP_ALG_TEST_LAB", "") + "hd"


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def probe_argv(*args: str, python: str = sys.executable) -> list[str]:
    """Command line of tests/kernel/nfq_probe.py with this interpreter (or `python`)."""
    return [python, "-m", "tests.kernel.nfq_probe", *args]


def popen(ns: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        netns.in_ns(ns, argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


@contextlib.contextmanager
def namespace(role: str) -> Iterator[str]:
    """A fresh namespace with loopback up, deleted afterwards (also after failures)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    name = f"{PREFIX}-{role}-{os.getpid()}"
    netns.delete(name)
    netns.add(name)
    try:
        yield name
    finally:
        netns.delete(name)


def queue_stats(ns: str, queue: int) -> dict[str, int]:
    """The queue's line in /proc/net/netfilter/nfnetlink_queue (empty if not bound)."""
    names = ("queue", "portid", "total", "copy_mode", "copy_range", "dropped", "user_dropped")
    text = netns.run_in(ns, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    for line in text.splitlines():
        values = [int(v) for v in line.split()]
        if values and values[0] == queue:
            return dict(zip(names, values, strict=False))
    return {}
