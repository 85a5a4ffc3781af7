"""Sessions that survive the daemon: its offsets live in conntrack's seqadj record.

A PORT/EPRT rewrite changes the line's length, so every later packet of the control
connection needs its seq/ack shifted. The kernel does that from the record ftp-alg wrote;
killed or stopped, the daemon leaves the record behind, `--queue-bypass` lets the lines pass
meanwhile, and a new daemon reads the record back before its next correction. (The lab has
no systemd: `systemctl restart` is SIGTERM and start, which the `sigterm` case is.)
"""

from __future__ import annotations

import ftplib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import Tuple
from alg.lab import backend, netns, state
from tests.lab.conftest import LabHandle
from tests.lab.test_ftp_alg import ONE_MIB, OUTSIDE, PROBE, alg, daemon_pid, served_sha, status

pytestmark = pytest.mark.netns
OUTSIDE6 = "fd00:198:51:100::20"
__all__ = ["alg"]  # the module fixture, shared


def _sha(ftp: ftplib.FTP, ns: str, passive: bool) -> str:
    ftp.set_pasv(passive)
    digest = hashlib.sha256()
    with netns.enter(ns):  # an active transfer's listening socket belongs in the client's namespace
        ftp.retrbinary(f"RETR {ONE_MIB}", digest.update)
    return digest.hexdigest()


def _record(lab: LabHandle, ftp: ftplib.FTP, family: int) -> tuple[int, int]:
    """(offset_before, offset_after) of the control connection's ORIGINAL seqadj record,
    read from the router's conntrack: the state that outlives the daemon."""
    assert ftp.sock is not None
    src, sport = ftp.sock.getsockname()[:2]
    dst, dport = ftp.sock.getpeername()[:2]
    with netns.enter(lab.ns("router")), Ctnetlink() as ct:
        entry = ct.get_conntrack(Tuple(family, 6, src, dst, sport, dport))
    assert entry is not None and entry.seqadj_original is not None
    return entry.seqadj_original.offset_before, entry.seqadj_original.offset_after


def _stop(lab: LabHandle, how: str) -> None:
    if how == "sigkill":
        pid = daemon_pid(lab)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        backend.daemon(lab.prefix, "stop", log=lambda _: None)  # SIGTERM, as systemd does


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_restart_mid_session_loses_nothing(alg: LabHandle, how: str, family: int) -> None:
    client, want = alg.ns("client"), served_sha(alg)
    ftp = ftplib.FTP()
    with netns.enter(client):
        ftp.connect(OUTSIDE if family == 4 else OUTSIDE6, 21, timeout=10)
    ftp.login()
    # PORT 192,168,77,10 -> 198,51,100,1 and EPRT fd00:192:168:77::10 -> fd00:198:51:100::1:
    # one byte shorter, so every later client byte is numbered differently on each side.
    assert _sha(ftp, client, passive=False) == want
    offsets = _record(alg, ftp, family)
    assert offsets[1] == -1, offsets  # the kernel holds the correction, not only the daemon
    _stop(alg, how)
    assert ftp.voidcmd("NOOP").startswith("200")  # unqueued, shifted by the kernel alone
    backend.daemon(alg.prefix, "start", log=lambda _: None)
    resumed = status(alg)["counters"]
    assert isinstance(resumed, dict)
    assert _sha(ftp, client, passive=False) == want  # the next rewrite, on top of the record
    assert _record(alg, ftp, family)[1] == -2
    assert _sha(ftp, client, passive=True) == want
    assert ftp.voidcmd("NOOP").startswith("200")
    assert ftp.sendcmd("QUIT").startswith("221")
    ftp.close()
    counters = status(alg)["counters"]
    assert isinstance(counters, dict)
    assert counters.get("seqadj-resumed", 0) == 1  # met mid-stream, offsets read back
    assert counters.get("rewrite", 0) >= 1
    assert not resumed.get("rewrite")  # the new daemon had done nothing before


def test_a_dead_daemons_expectation_blocks_no_port(alg: LabHandle) -> None:
    """SIGKILL leaves the last expectation in the kernel; the next daemon's sessions still
    get their data connections (another port, or the anchor replaced it)."""
    client, want = alg.ns("client"), served_sha(alg)
    ftp = ftplib.FTP()
    with netns.enter(client):
        ftp.connect(OUTSIDE, 21, timeout=10)
    ftp.login()
    ftp.set_pasv(False)
    with netns.enter(client):
        ftp.sendcmd("TYPE I")
        sock = ftp.makeport()  # PORT sent and rewritten: the expectation now exists
    sock.close()
    _stop(alg, "sigkill")
    backend.daemon(alg.prefix, "start", log=lambda _: None)
    for passive in (False, True):
        other = ftplib.FTP()
        with netns.enter(client):
            other.connect(OUTSIDE, 21, timeout=10)
        other.login()
        assert _sha(other, client, passive) == want
        other.quit()
    ftp.close()


def test_two_hundred_rewrites_with_loss_across_a_restart(alg: LabHandle) -> None:
    """One session, 200 active listings (200 PORT rewrites, the kernel's record replaced each
    time), 5 % of the control packets lost both ways in the client's namespace, and the daemon
    SIGKILLed and started again after the 70th: every listing arrives, the session ends well.
    (The client waits while no daemon runs: a PORT sent then passes unrewritten, by design of
    `--queue-bypass`, and that one transfer fails; docs/deployment.md says so.)"""
    client = alg.ns("client")
    loss = [
        ("OUTPUT", "--dport"),
        ("INPUT", "--sport"),
    ]
    rule = ["-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"]

    def match(way: str) -> list[str]:
        return ["-p", "tcp", way, "21", *rule]

    for chain, way in loss:
        subprocess.run(
            [*("ip", "netns", "exec", client, "iptables", "-w", "-A", chain), *match(way)],
            check=True,
        )
    try:
        before = status(alg)["counters"]
        assert isinstance(before, dict)
        probe = subprocess.Popen(
            [
                *("ip", "netns", "exec", client, sys.executable, str(PROBE), "many-rewrites"),
                *(OUTSIDE, "--count", "200", "--pause-at", "70"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe.stdin is not None and probe.stdout is not None
        assert json.loads(probe.stdout.readline()) == {"paused": 70}
        _stop(alg, "sigkill")
        backend.daemon(alg.prefix, "start", log=lambda _: None)
        probe.stdin.write("\n")
        probe.stdin.flush()
        out, _ = probe.communicate(timeout=600)
    finally:
        for chain, way in loss:
            subprocess.run(
                [*("ip", "netns", "exec", client, "iptables", "-w", "-D", chain), *match(way)],
                check=False,
            )
    log = (state.node_dir(alg.prefix, "router") / "logs" / "ftp-alg.log").read_text()
    assert out, "the probe failed; the router's log ends:\n" + "\n".join(log.splitlines()[-15:])
    result = json.loads(out)
    assert result["listings"] == 200 and result["all_same"] is True, result
    assert result["noop"] == "200 NOOP ok."
    counters = status(alg)["counters"]
    assert isinstance(counters, dict) and counters.get("seqadj-resumed", 0) == 1
    assert counters.get("rewrite", 0) >= 100  # the new daemon rewrote the rest


def test_lab_gateway_starts_a_dead_daemon_and_keeps_the_sessions(alg: LabHandle) -> None:
    """`ftp-alg lab gateway ftp-alg` on a lab whose daemon died starts it again without
    flushing conntrack: the session in progress goes on (the lab interface scripts use)."""
    client, want = alg.ns("client"), served_sha(alg)
    ftp = ftplib.FTP()
    with netns.enter(client):
        ftp.connect(OUTSIDE, 21, timeout=10)
    ftp.login()
    assert _sha(ftp, client, passive=False) == want
    _stop(alg, "sigkill")
    ftp_alg = str(Path(sys.executable).with_name("ftp-alg"))
    cmd = [ftp_alg, "lab", "gateway", "--prefix", alg.prefix, "ftp-alg"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    info = json.loads(
        subprocess.run(
            [ftp_alg, "lab", "status", "--prefix", alg.prefix, "--json"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    )
    assert info["nodes"]["router"]["processes"]["ftp-alg"]["running"] is True
    assert _sha(ftp, client, passive=False) == want  # same control connection, next PORT
    ftp.quit()
