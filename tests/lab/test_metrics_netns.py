"""/metrics and `doctor` read the real kernel's queue counters: in a namespace (ob-met-PID), a
queue of 16 that nobody empties receives 40 packets, so the kernel drops 24; curl scrapes
/metrics on 127.0.0.1:9477 there, as in the lab's router, and doctor reports the drops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alg.lab import netns
from tests.lab.test_doctor import ROOT

pytestmark = pytest.mark.netns
NS = f"ob-met-{os.getpid()}"
QUEUED, SENT = 16, 40
# Binds queue 0 (room for 16) and never reads it; serves /metrics meanwhile.
STUCK_DAEMON = f"""\
import time
from netfilterqueue import NetfilterQueue
from alg.daemon.metrics import Metrics
nfq = NetfilterQueue()
nfq.bind(0, lambda pkt: pkt.accept(), max_len={QUEUED})
metrics = Metrics("127.0.0.1:9477")
metrics.update({{"queue": 0, "queues": 1, "sessions": 1, "counters": {{"packets": 5}}}})
for seconds in (0.0001, 0.002):
    metrics.observe_packet(seconds)
print("ready", flush=True)
time.sleep(60)
"""
SEND = f"""\
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range({SENT}):
    s.sendto(b"x", ("127.0.0.1", 9999))
"""


@pytest.fixture
def stuck_queue() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("ip", "iptables", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    netns.add(NS)
    proc: subprocess.Popen[str] | None = None
    try:
        rule = ["-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "9999"]
        netns.run_in(NS, "iptables", *rule, "-j", "NFQUEUE", "--queue-num", "0")
        proc = subprocess.Popen(
            netns.in_ns(NS, [sys.executable, "-c", STUCK_DAEMON]),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        netns.run_in(NS, sys.executable, "-c", SEND)
        time.sleep(0.2)
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        netns.delete(NS)


def test_curl_scrapes_the_kernel_queue_drops(stuck_queue: None) -> None:
    done = netns.run_in(NS, "curl", "-sf", "http://127.0.0.1:9477/metrics", check=False)
    assert done.returncode == 0, done.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    queue0 = (("queue", "0"),)
    assert samples[("ftp_alg_queue_length", queue0)] == QUEUED
    assert samples[("ftp_alg_queue_dropped", queue0)] == SENT - QUEUED
    assert samples[("ftp_alg_queue_user_dropped", queue0)] == 0
    assert samples[("ftp_alg_packets_total", ())] == 5
    assert samples[("ftp_alg_sessions", ())] == 1
    assert samples[("ftp_alg_packet_processing_seconds_count", ())] == 2


def test_doctor_reports_the_drops(stuck_queue: None) -> None:
    done = netns.run_in(
        NS, sys.executable, "-m", "alg.doctor", "--quiet", "--invalid-seconds", "0",
        "--status-socket", "/nonexistent/ob.sock", check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        f"NFQUEUE 0 dropped packets since the daemon bound it: {SENT - QUEUED} with " in done.stdout
    )
    assert "nobody reads NFQUEUE" not in done.stdout  # bound, just not read
