"""A router pair fails over mid-session: the failover lab (`ftp-alg lab up --ha`).

Two routers, conntrackd replicating conntrack over the sync link, SNAT to the shared public
address. `lab failover` crashes the active router (ftp-alg and conntrackd SIGKILLed, links
down); the standby takes the addresses and commits conntrackd's cache. With ftp-alg the
control connection's seqadj record travels with it (a ctnetlink update raises the event
conntrackd replicates), so the session goes on; with the kernel helper it does not (its
nf_ct_seqadj_set raises no event), and the session stalls: both are asserted, as measured.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from alg.kernel.ctnetlink import NAT_FOLLOW_MASTER, Ctnetlink
from alg.kernel.cttypes import Conntrack, Tuple
from alg.lab import backend, ha, netns, state
from alg.lab.topology import HA_PATH, load
from tests.lab.conftest import LabHandle, unavailable

pytestmark = [pytest.mark.netns, pytest.mark.slow]
PREFIX = os.environ.get("FTP_ALG_TEST_LAB", "") + "ha"
OUTSIDE = {4: "198.51.100.20", 6: "fd00:198:51:100::20"}
PUBLIC = "198.51.100.1"
ONE_MIB = "1mib.bin"
QUIET = {"log": lambda _: None}


def _lab(gateway: str) -> Iterator[LabHandle]:
    needed = [t for t in ("conntrackd", "keepalived") if shutil.which(t) is None]
    reason = unavailable() or (f"the failover lab needs {', '.join(needed)}" if needed else None)
    if reason:
        pytest.skip(reason)
    backend.up(PREFIX, gateway, with_ha=True, replace=True, log=lambda _: None)
    try:
        yield LabHandle(PREFIX, load(HA_PATH))
    finally:
        backend.down(PREFIX, log=lambda _: None)


@pytest.fixture
def alg_pair() -> Iterator[LabHandle]:
    yield from _lab("ftp-alg")


@pytest.fixture
def kernel_pair() -> Iterator[LabHandle]:
    yield from _lab("kernel")


@pytest.fixture
def alg_pair_by_hand(monkeypatch: pytest.MonkeyPatch) -> Iterator[LabHandle]:
    """No keepalived: the lab's own takeover step claims the addresses."""
    monkeypatch.setenv("LAB_HA_KEEPALIVED", "0")
    yield from _lab("ftp-alg")


def served_sha(lab: LabHandle, node: str = "server") -> str:
    path = state.node_dir(lab.prefix, node) / "ftp" / f"{ONE_MIB}.sha256"
    return path.read_text().split()[0]


def connect(lab: LabHandle, node: str, host: str, timeout: float = 10) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.trust_server_pasv_ipv4_address = True  # type: ignore[attr-defined]  # 227 itself
    with netns.enter(lab.ns(node)):
        ftp.connect(host, 21, timeout=timeout)
    ftp.login()
    return ftp


def sha(lab: LabHandle, node: str, ftp: ftplib.FTP, passive: bool) -> str:
    ftp.set_pasv(passive)
    digest = hashlib.sha256()
    with netns.enter(lab.ns(node)):  # an active transfer listens in the node's namespace
        ftp.retrbinary(f"RETR {ONE_MIB}", digest.update)
    return digest.hexdigest()


def control_tuple(ftp: ftplib.FTP) -> Tuple:
    assert ftp.sock is not None
    src, sport = ftp.sock.getsockname()[:2]
    dst, dport = ftp.sock.getpeername()[:2]
    return Tuple(6 if ":" in src else 4, 6, src, dst, sport, dport)


def entry(lab: LabHandle, router: str, seen: Tuple) -> Conntrack | None:
    with netns.enter(lab.ns(router)), Ctnetlink() as ct:
        return ct.get_conntrack(seen)


def failover(lab: LabHandle, vrrp: bool = True) -> ha.Failover:
    result = backend.failover(lab.prefix, **QUIET)
    assert (result.failed, result.active, result.keepalived) == ("router", "router2", vrrp)
    assert backend.status(lab.prefix)["active_router"] == "router2"
    return result


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_ftp_alg_session_goes_on_through_the_standby(alg_pair: LabHandle, family: int) -> None:
    session_goes_on(alg_pair, family, vrrp=True)


def test_same_with_a_takeover_by_hand(alg_pair_by_hand: LabHandle) -> None:
    session_goes_on(alg_pair_by_hand, 4, vrrp=False)


def session_goes_on(lab: LabHandle, family: int, vrrp: bool) -> None:
    want = served_sha(lab)
    ftp = connect(lab, "client", OUTSIDE[family])
    # PORT 192,168,77,10 -> 198,51,100,1 (EPRT ...::10 -> ...::1): one byte shorter
    assert sha(lab, "client", ftp, passive=False) == want
    seen = control_tuple(ftp)
    active = entry(lab, "router", seen)
    assert active is not None and active.seqadj_original is not None
    assert active.seqadj_original.offset_after == -1
    assert entry(lab, "router2", seen) is None  # only in conntrackd's cache until the commit
    t0 = time.monotonic()
    failover(lab, vrrp)
    assert ftp.voidcmd("NOOP").startswith("200")  # the same control connection
    interrupted = time.monotonic() - t0
    standby = entry(lab, "router2", seen)
    assert standby is not None and standby.helper == "sane"
    assert standby.seqadj_original is not None
    assert standby.seqadj_original.offset_after == -1
    assert sha(lab, "client", ftp, passive=False) == want  # rewritten by the standby's daemon
    after = entry(lab, "router2", seen)
    assert after is not None and after.seqadj_original is not None
    assert after.seqadj_original.offset_after == -2
    assert sha(lab, "client", ftp, passive=True) == want
    assert ftp.sendcmd("QUIT").startswith("221")
    ftp.close()
    assert interrupted < 10, interrupted


def test_data_connection_announced_before_the_failover_arrives(alg_pair: LabHandle) -> None:
    """vsftpd connects only at RETR: the expectation crosses the failover, is committed
    without its NAT part, and the standby's `ftp-alg ha repair-expectations` restores it."""
    lab, want = alg_pair, served_sha(alg_pair)
    ftp = connect(lab, "client", OUTSIDE[4])
    ftp.set_pasv(False)
    ftp.voidcmd("TYPE I")
    with netns.enter(lab.ns("client")):
        listener = ftp.makeport()  # PORT sent and rewritten: the active router expects it
    port = listener.getsockname()[1]
    time.sleep(0.3)  # conntrackd replicates on the event; give it a moment
    failover(lab)
    with netns.enter(lab.ns("router2")), Ctnetlink() as ct:
        expected = [e for e in ct.list_expectations() if e.expected.dport == port]
    assert len(expected) == 1
    assert expected[0].fn == NAT_FOLLOW_MASTER and expected[0].nat_dir == 1
    assert expected[0].expected.dst == PUBLIC and expected[0].nat_port == port
    ftp.putcmd(f"RETR {ONE_MIB}")
    listener.settimeout(10)
    conn, _ = listener.accept()
    digest = hashlib.sha256()
    with conn:
        while chunk := conn.recv(65536):
            digest.update(chunk)
    listener.close()
    assert ftp.getresp().startswith("150")
    assert ftp.voidresp().startswith("226")
    assert digest.hexdigest() == want
    ftp.quit()


def test_port_forward_session_goes_on(alg_pair: LabHandle) -> None:
    """The outside node reaches the inside server through the shared public address; the
    227's rewrite (192,168,78,20 -> 198,51,100,1) lives in the REPLY record."""
    lab, want = alg_pair, served_sha(alg_pair, "inside")
    ftp = connect(lab, "server", PUBLIC)
    assert sha(lab, "server", ftp, passive=True) == want
    seen = control_tuple(ftp)
    before = entry(lab, "router", seen)
    assert before is not None and before.seqadj_reply is not None
    assert before.seqadj_reply.offset_after == -1
    failover(lab)
    assert ftp.voidcmd("NOOP").startswith("200")
    assert sha(lab, "server", ftp, passive=True) == want
    after = entry(lab, "router2", seen)
    assert after is not None and after.seqadj_reply is not None
    assert after.seqadj_reply.offset_after == -2
    ftp.quit()


def test_kernel_helper_session_stalls_after_failover(kernel_pair: LabHandle) -> None:
    """The comparison, as measured: the kernel helper's offsets stay behind on the dead
    router (no event, so conntrackd never sends them); the committed entry has none, the
    next command's bytes are numbered wrongly and the session hangs. New sessions work."""
    lab, want = kernel_pair, served_sha(kernel_pair)
    ftp = connect(lab, "client", OUTSIDE[4], timeout=5)
    assert sha(lab, "client", ftp, passive=False) == want
    seen = control_tuple(ftp)
    active = entry(lab, "router", seen)
    assert active is not None and active.helper == "ftp"
    assert active.seqadj_original is not None and active.seqadj_original.offset_after == -1
    time.sleep(0.3)
    failover(lab)
    standby = entry(lab, "router2", seen)
    assert standby is not None and standby.helper == "ftp"  # the connection was carried...
    assert standby.seqadj_original is None  # ...without its offsets
    with pytest.raises((TimeoutError, socket.timeout, EOFError, ConnectionError)):
        ftp.voidcmd("NOOP")
    ftp.close()
    fresh = connect(lab, "client", OUTSIDE[4])
    assert sha(lab, "client", fresh, passive=False) == want
    fresh.quit()


def test_status_failover_command_and_down_cover_both_routers(alg_pair: LabHandle) -> None:
    lab = alg_pair
    info = backend.status(lab.prefix)
    assert info["active_router"] == "router" and info["router_public"] == PUBLIC
    for router in ("router", "router2"):
        procs = info["nodes"][router]["processes"]
        assert procs["ftp-alg"]["running"] and procs["conntrackd"]["running"]
        assert procs["keepalived"]["running"]
    done = subprocess.run(
        [sys.executable, "-m", "alg.cli", "lab", "failover", "--prefix", lab.prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert figures["failed"] == "router" and figures["active"] == "router2"
    assert float(figures["takeover_seconds"]) < 15 and figures["keepalived"] == "1"
    info = backend.status(lab.prefix)
    assert info["active_router"] == "router2"
    assert not info["nodes"]["router"]["processes"]["ftp-alg"]["running"]
    assert info["nodes"]["router2"]["processes"]["ftp-alg"]["running"]
    backend.down(lab.prefix, **QUIET)
    assert not [n for n in netns.names() if n.startswith(f"{lab.prefix}-")]
    assert not backend.is_up(lab.prefix)
