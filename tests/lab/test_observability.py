"""What an admin's monitoring sees of the lab's real daemon: `/metrics` scraped with curl in
the router namespace, `ftp-alg status --json` and `ftp-alg doctor` through `lab exec`."""

from __future__ import annotations

import ftplib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from alg.lab import netns
from tests.lab.conftest import LabHandle
from tests.lab.test_ftp_alg import ONE_MIB, OUTSIDE, alg, router

pytestmark = pytest.mark.netns
FTP_ALG = str(Path(sys.executable).with_name("ftp-alg"))
__all__ = ["alg"]


def _active_listing(lab: LabHandle) -> None:
    ftp = ftplib.FTP()
    with netns.enter(lab.ns("client")):
        ftp.connect(OUTSIDE, 21, timeout=10)
        ftp.login()
        ftp.set_pasv(False)
        assert ONE_MIB in ftp.nlst()  # the PORT was rewritten
    ftp.quit()


def _lab_exec(lab: LabHandle, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FTP_ALG, "lab", "exec", "--prefix", lab.prefix, "router", "--", *cmd],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _scrape(lab: LabHandle) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = router(lab, "curl", "-sf", "http://127.0.0.1:9477/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_scraped_with_curl(alg: LabHandle) -> None:
    _active_listing(alg)
    rewrites = ("ftp_alg_rewrites_total", (("kind", "port"),))
    deadline = time.monotonic() + 5  # the daemon hands its counters over once a second
    while rewrites not in (samples := _scrape(alg)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert samples[rewrites] >= 1
    assert samples[("ftp_alg_packet_processing_seconds_count", ())] >= 1
    assert ("ftp_alg_sessions", ()) in samples and ("ftp_alg_held_packets", ()) in samples
    assert samples[("ftp_alg_queue_dropped", (("queue", "0"),))] == 0


def test_status_json_and_doctor_find_the_lab_daemon(alg: LabHandle) -> None:
    done = _lab_exec(alg, "ftp-alg", "status", "--json")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["counters"]["packets"] >= 1 and state["queue"] == 0
    doctor = _lab_exec(alg, "ftp-alg", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
