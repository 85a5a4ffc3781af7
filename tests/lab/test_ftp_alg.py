"""ftp-alg on the lab's router, beyond the matrix: split commands, long sessions, many
sessions, the daemon killed mid-session, and a clean router afterwards.

The probes (tests/lab/ftp_probe.py) run inside the client namespace and report what the
servers answered and what arrived; the router is read with conntrack and iptables-save.
"""

from __future__ import annotations

import errno
import ftplib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.lab import backend, netns, state
from tests.lab.conftest import LabHandle

pytestmark = pytest.mark.netns

PROBE = Path(__file__).with_name("ftp_probe.py")
OUTSIDE, ONE_MIB = "198.51.100.20", "1mib.bin"


def router(lab: LabHandle, *argv: str) -> str:
    done = subprocess.run(
        netns.in_ns(lab.ns("router"), argv),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout + done.stderr


def invalid(lab: LabHandle) -> int:
    """conntrack's INVALID counter on the router, summed over CPUs."""
    return sum(int(n) for n in re.findall(r"invalid=(\d+)", router(lab, "conntrack", "-S")))


def rules(lab: LabHandle) -> str:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        out += [x for x in router(lab, tool).splitlines() if not x.startswith("#")]
    return "\n".join(out)


def probe(lab: LabHandle, *args: str) -> dict[str, object]:
    done = subprocess.run(
        netns.in_ns(lab.ns("client"), [sys.executable, str(PROBE), *args]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def served_sha(lab: LabHandle) -> str:
    path = state.node_dir(lab.prefix, "server") / "ftp" / f"{ONE_MIB}.sha256"
    return path.read_text().split()[0]


def daemon_pid(lab: LabHandle) -> int:
    pidfile = state.node_dir(lab.prefix, "router") / "pids" / "ftp-alg.pid"
    return int(pidfile.read_text().split()[0])


def status(lab: LabHandle, sock: Path | None = None) -> dict[str, object]:
    sock = sock or state.node_dir(lab.prefix, "router") / "ftp-alg-status.sock"
    out = router(
        lab,
        str(Path(sys.executable).with_name("ftp-alg")),
        "status",
        "--json",
        "--status-socket",
        str(sock),
    )
    result: dict[str, object] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def alg(lab: LabHandle) -> Iterator[LabHandle]:
    """ftp-alg on the router; afterwards: rules as before, no expectation, no INVALID."""
    lab.use_gateway("none")
    before_rules, before_invalid = rules(lab), invalid(lab)
    lab.use_gateway("ftp-alg")
    yield lab
    during_invalid = invalid(lab)
    lab.use_gateway("none")
    assert rules(lab) == before_rules
    assert "0 expectations" in router(lab, "conntrack", "-L", "expect")
    assert during_invalid == before_invalid, "conntrack marked control packets INVALID"


@pytest.mark.parametrize("nodelay", [True, False], ids=["nodelay", "nagle"])
def test_port_split_across_two_segments(alg: LabHandle, nodelay: bool) -> None:
    args = ["split-port", OUTSIDE] + (["--nodelay"] if nodelay else [])
    result = probe(alg, *args)
    replies = result["replies"]
    assert isinstance(replies, list)
    assert replies[4].startswith("200 PORT command successful"), replies
    assert result["sha256"] == served_sha(alg), replies
    # With Nagle on, the continuation waits for the tail-loss probe (~200 ms here): the
    # gateway's hold (0.5 s) outlasts it. With TCP_NODELAY it is immediate.
    assert float(result["port_reply_ms"]) < (100 if nodelay else 500)  # type: ignore[arg-type]


def test_fifty_rewrites_in_one_session(alg: LabHandle) -> None:
    before = status(alg)["counters"]
    assert isinstance(before, dict)
    result = probe(alg, "many-rewrites", OUTSIDE, "--count", "50")
    assert result["listings"] == 50 and result["all_same"] is True
    assert ONE_MIB in result["first"]  # type: ignore[operator]
    assert result["noop"] == "200 NOOP ok."  # the control connection is intact at the end
    after = status(alg)["counters"]
    assert isinstance(after, dict)
    assert after["rewrite"] - before.get("rewrite", 0) == 50


@pytest.mark.parametrize("passive", [False, True], ids=["active", "passive"])
def test_twenty_sessions_at_once(alg: LabHandle, passive: bool) -> None:
    args = ["parallel", OUTSIDE, "--count", "20"] + (["--passive"] if passive else [])
    results = probe(alg, *args)["results"]
    assert results == [served_sha(alg)] * 20


def _ftp_in(ns: str) -> ftplib.FTP:
    ftp = ftplib.FTP()
    with netns.enter(ns):
        ftp.connect(OUTSIDE, 21, timeout=10)
    ftp.login()
    return ftp


def test_daemon_killed_mid_session_then_restarted(alg: LabHandle) -> None:
    client = alg.ns("client")
    ftp = _ftp_in(client)
    with netns.enter(client):
        assert ONE_MIB in ftp.nlst()  # passive: nothing to rewrite
    os.kill(daemon_pid(alg), signal.SIGKILL)
    time.sleep(0.5)
    # --queue-bypass: with no reader the control connection still works
    assert ftp.voidcmd("NOOP").startswith("200")
    with netns.enter(client):
        assert ONE_MIB in ftp.nlst()
    ftp.quit()
    backend.set_gateway(alg.prefix, "ftp-alg", log=lambda _: None)  # started again
    ftp = _ftp_in(client)
    ftp.set_pasv(False)
    with netns.enter(client):
        assert ONE_MIB in ftp.nlst()  # active: the PORT is rewritten again
    ftp.quit()


def _connmark(lab: LabHandle, ftp: ftplib.FTP) -> int:
    assert ftp.sock is not None
    sport = ftp.sock.getsockname()[1]
    listed = router(lab, "conntrack", "-L", "-p", "tcp", "--orig-port-src", str(sport))
    marks = re.findall(r"mark=(\d+)", listed)
    assert len(marks) == 1, listed
    return int(marks[0])


def test_a_passive_session_behind_the_masquerade_never_reaches_the_daemon(
    alg: LabHandle,
) -> None:
    """Login, PASV, RETR, 227: nothing of it is queued (the passive rules; the 227 names
    the server's public address), the file arrives whole, and the connmark carries the
    passive bits. The same connection's PORT then is queued and rewritten: the daemon meets
    the connection there, reads the bits (the PASV was used) and watches it from then on."""
    before = status(alg)["counters"]
    assert isinstance(before, dict)
    client = alg.ns("client")
    ftp = _ftp_in(client)
    digest = hashlib.sha256()
    with netns.enter(client):
        ftp.retrbinary(f"RETR {ONE_MIB}", digest.update)
    assert digest.hexdigest() == served_sha(alg)
    middle = status(alg)["counters"]
    assert isinstance(middle, dict)
    assert middle.get("packets", 0) == before.get("packets", 0), middle
    assert _connmark(alg, ftp) & 0x07000000 == 0x06000000  # passive, used; not watched
    ftp.set_pasv(False)
    with netns.enter(client):
        assert ONE_MIB in ftp.nlst()
    after = status(alg)["counters"]
    assert isinstance(after, dict)
    for name in ("session-new", "rewrite.port"):
        assert after.get(name, 0) == middle.get(name, 0) + 1, after
    assert _connmark(alg, ftp) & 0x01000000  # watched
    ftp.quit()


def test_session_forgotten_when_conntrack_destroys_it(alg: LabHandle) -> None:
    logfile = state.node_dir(alg.prefix, "router") / "logs" / "ftp-alg.log"
    seen = len(logfile.read_text())
    ftp = _ftp_in(alg.ns("client"))
    assert status(alg)["sessions"] >= 1  # type: ignore[operator]
    ftp.quit()  # closed: the core would keep it 10 s for retransmissions (linger)...
    router(alg, "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "21")
    deadline = time.monotonic() + 3  # ...but conntrack's destroy event ends it at once
    while status(alg)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(alg)["sessions"] == 0
    assert "conntrack destroyed the connection" in logfile.read_text()[seen:]


def test_split_port_without_tail_loss_probe_ends_in_a_logged_decision(alg: LabHandle) -> None:
    """Nagle on and no tail-loss probe: the client sends the rest of the line only once the
    first part is acknowledged, which never happens while it is held. The hold must end
    (hold_timeout, 0.5 s), the line then passes unchanged and the refusal says why."""
    client = alg.ns("client")
    logfile = state.node_dir(alg.prefix, "router") / "logs" / "ftp-alg.log"
    seen = len(logfile.read_text())
    sysctl = netns.in_ns(client, ["sysctl", "-q"])
    old = subprocess.run(
        [*sysctl, "-n", "net.ipv4.tcp_early_retrans"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run([*sysctl, "-w", "net.ipv4.tcp_early_retrans=0"], check=True)
    try:
        result = probe(alg, "split-port", OUTSIDE)
    finally:
        subprocess.run([*sysctl, "-w", f"net.ipv4.tcp_early_retrans={old}"], check=True)
    replies = result["replies"]
    assert isinstance(replies, list)
    assert replies[4] == "500 Illegal PORT command.", replies  # vsftpd got the private address
    assert 400 < float(result["port_reply_ms"]) < 2000  # type: ignore[arg-type]
    log = logfile.read_text()[seen:]
    assert "hold-timeout" in log and "[split-released]" in log, log


def test_client_port_reused_at_once_keeps_the_new_session(alg: LabHandle) -> None:
    """The new SYN makes conntrack kill the old entry (TIME_WAIT); that destroy event must
    not end the new session that already took over the tuple (its offset would be lost)."""
    client, port = alg.ns("client"), 47123
    before = status(alg)["counters"]
    assert isinstance(before, dict)
    for _ in range(5):
        ftp = ftplib.FTP(source_address=("192.168.77.10", port))
        for _attempt in range(50):  # the last socket may still be in LAST_ACK for a moment
            try:
                with netns.enter(client):
                    ftp.connect(OUTSIDE, 21, timeout=10)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                time.sleep(0.1)
        ftp.login()
        ftp.set_pasv(False)
        with netns.enter(client):
            assert ONE_MIB in ftp.nlst()  # PORT rewritten: 1 byte shorter from here on
        assert ftp.voidcmd("NOOP").startswith("200")
        assert ftp.sendcmd("QUIT").startswith("221")
        assert ftp.sock is not None
        ftp.sock.settimeout(5)
        while ftp.sock.recv(4096):  # the server closes first: no TIME_WAIT on the client
            pass
        ftp.close()
    counters = status(alg)["counters"]
    assert isinstance(counters, dict)
    # Every PORT was rewritten by the session of its own connection; destroy events that
    # came late for an older one were recognised by their conntrack id, not obeyed.
    assert counters.get("rewrite", 0) - before.get("rewrite", 0) == 5


def test_queue_balance_one_process_reads_every_queue(alg: LabHandle) -> None:
    """Rules spread over queues 0 and 1; one daemon reads both (the two directions of a
    connection hash to different queues across NAT, so it must)."""
    alg.use_gateway("none")
    ftp_alg = str(Path(sys.executable).with_name("ftp-alg"))
    sock = state.node_dir(alg.prefix, "router") / "balance-status.sock"
    log = state.node_dir(alg.prefix, "router") / "logs" / "balance.log"
    router(alg, ftp_alg, "rules", "apply", "--ports", "21,2121", "--queue-balance", "0:1")
    with log.open("w") as err:
        daemon = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                alg.ns("router"),
                ftp_alg,
                "run",
                "--queue-balance",
                "0:1",
                "--ports",
                "21,2121",
                "--status-socket",
                str(sock),
            ],
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        results = probe(alg, "parallel", OUTSIDE, "--count", "8")["results"]
        assert results == [served_sha(alg)] * 8, log.read_text()
        got = status(alg, sock)
        assert got["queues"] == 2
        assert got["counters"]["rewrite"] >= 8  # type: ignore[index]
    finally:
        daemon.terminate()
        daemon.wait(10)
        router(alg, ftp_alg, "rules", "remove")
        alg.use_gateway("ftp-alg")
