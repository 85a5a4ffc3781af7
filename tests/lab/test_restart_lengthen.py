"""Sessions that survive the daemon after a LENGTHENING rewrite (issue 9).

test_restart.py's rewrites all shorten: the lab's private addresses are longer than the
router's public ones. Here the announcers get short private addresses for the module, so the
rewrites lengthen and the kernel's seqadj record holds a positive offset:
- client side: a second address on the client's LAN link (the router answers it on its own),
  ftplib binds its control connection there: PORT 10,0,0,2 -> 198,51,100,1 (+4 bytes) and
  EPRT |2|fd00:1::2| -> |2|fd00:198:51:100::1| (+9 bytes), in the ORIGINAL direction;
- server side: a second address on the inside server's DMZ link and the port forward pointed
  at it (one DNAT rule before the lab's): its 227 says 10,1,0,2 -> 198,51,100,1 (+4 bytes),
  in the REPLY direction. IPv6 has no such rewrite: a 229 names no address and ftp-alg keeps
  the port, so its length never changes.
The lab's masquerade matches the outgoing interface alone, so the new client source is
masqueraded like the old one. Addresses and the rule are removed after the module; the `alg`
fixture then checks rules, expectations and conntrack's INVALID counter.
"""

from __future__ import annotations

import ftplib
from collections.abc import Iterator
from typing import Any

import pytest

from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import Tuple
from alg.lab import backend, netns, state
from tests.lab.conftest import LabHandle
from tests.lab.test_ftp_alg import OUTSIDE, alg, served_sha, status
from tests.lab.test_restart import OUTSIDE6, _sha, _stop

pytestmark = pytest.mark.netns
__all__ = ["alg"]  # the module fixture, shared

PUBLIC = "198.51.100.1"
SERVERS = {21: "vsftpd", 2121: "pyftpdlib"}
# (the short address the announcer uses, the router's address beside it, bytes gained)
CLIENT_SHORT = {4: ("10.0.0.2", "10.0.0.1", 24, 4), 6: ("fd00:1::2", "fd00:1::1", 64, 9)}
INSIDE_SHORT, ROUTER_DMZ_SHORT = "10.1.0.2", "10.1.0.1"
GROW_227 = len("198,51,100,1") - len("10,1,0,2")
FORWARD = ["-d", PUBLIC, "-p", "tcp", "-m", "multiport", "--dports", "21,2121", "-j", "DNAT"]
FORWARD += ["--to-destination", INSIDE_SHORT]
Offsets = tuple[int, int]


class Recording(ftplib.FTP):
    """ftplib that keeps the lines it sent and the replies it read, and uses a 227's
    address (by default it connects to the control peer instead, hiding a bad rewrite)."""

    trust_server_pasv_ipv4_address = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.sent: list[str] = []
        self.replies: list[str] = []

    def putcmd(self, line: str) -> None:
        self.sent.append(line)
        super().putcmd(line)

    def getresp(self) -> str:
        reply = super().getresp()
        self.replies.append(reply)
        return reply


def _records(lab: LabHandle, ftp: ftplib.FTP, family: int) -> tuple[Offsets, Offsets]:
    """(offset_before, offset_after) of the control connection's ORIGINAL and REPLY seqadj
    records, read from the router's conntrack: the state that outlives the daemon."""
    assert ftp.sock is not None
    src, sport = ftp.sock.getsockname()[:2]
    dst, dport = ftp.sock.getpeername()[:2]
    with netns.enter(lab.ns("router")), Ctnetlink() as ct:
        entry = ct.get_conntrack(Tuple(family, 6, src, dst, sport, dport))
    assert entry is not None
    orig, reply = entry.seqadj_original, entry.seqadj_reply
    return (
        (orig.offset_before, orig.offset_after) if orig else (0, 0),
        (reply.offset_before, reply.offset_after) if reply else (0, 0),
    )


def _addresses(lab: LabHandle, op: str, extra: list[tuple[str, str, str]]) -> None:
    """Add the module's extra addresses, or remove them and check that none is left."""
    for node, link, cidr in extra:
        if op == "add":
            netns.address(lab.ns(node), link, cidr)
        else:
            netns.run(["ip", "-n", lab.ns(node), "addr", "del", cidr, "dev", link], check=False)
            shown = netns.run(["ip", "-n", lab.ns(node), "addr", "show", "dev", link]).stdout
            assert f" {cidr} " not in shown, shown


def _forward(lab: LabHandle, op: str) -> None:
    """Insert (-I) or delete (-D) the port forward to the short address, before the lab's."""
    where = ["PREROUTING", "1"] if op == "-I" else ["PREROUTING"]
    cmd = ["iptables", "-w", "-t", "nat", op, *where, *FORWARD]
    netns.run(netns.in_ns(lab.ns("router"), cmd), check=op == "-I")


@pytest.fixture(scope="module")
def short_client(alg: LabHandle) -> Iterator[LabHandle]:
    """The client's second, short address on its LAN link, and the router's beside it."""
    extra = []
    for short, gw, bits, _ in CLIENT_SHORT.values():
        extra += [("client", "lan", f"{short}/{bits}"), ("router", "lan", f"{gw}/{bits}")]
    try:
        _addresses(alg, "add", extra)
        yield alg
    finally:
        _addresses(alg, "del", extra)


@pytest.fixture(scope="module")
def short_inside(alg: LabHandle) -> Iterator[LabHandle]:
    """The inside server's second, short address on the DMZ, and the port forward to it."""
    extra = [("inside", "dmz", f"{INSIDE_SHORT}/24"), ("router", "dmz", f"{ROUTER_DMZ_SHORT}/24")]
    try:
        _addresses(alg, "add", extra)
        _forward(alg, "-I")
        yield alg
    finally:
        _forward(alg, "-D")  # the `alg` fixture then checks the rules are as before
        _addresses(alg, "del", extra)


def _resume(lab: LabHandle, ftp: ftplib.FTP, how: str) -> dict[str, object]:
    """Stop the daemon, show the session still answers without it, start it again; the new
    daemon's counters (nothing done yet)."""
    _stop(lab, how)
    assert ftp.voidcmd("NOOP").startswith("200")  # unqueued, shifted by the kernel alone
    backend.daemon(lab.prefix, "start", log=lambda _: None)
    resumed = status(lab)["counters"]
    assert isinstance(resumed, dict) and not resumed.get("rewrite"), resumed
    return resumed


def _end(lab: LabHandle, ftp: ftplib.FTP) -> None:
    assert ftp.voidcmd("NOOP").startswith("200")
    assert ftp.sendcmd("QUIT").startswith("221")
    ftp.close()
    counters = status(lab)["counters"]
    assert isinstance(counters, dict)
    assert counters.get("seqadj-resumed", 0) == 1, counters  # offsets read back, once
    assert counters.get("rewrite", 0) >= 1, counters
    assert "refusal" not in counters, counters


@pytest.mark.parametrize("port", list(SERVERS), ids=list(SERVERS.values()))
@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_restart_after_a_lengthening_port(
    short_client: LabHandle, how: str, family: int, port: int
) -> None:
    lab, (short, _, _, grow) = short_client, CLIENT_SHORT[family]
    client, want = lab.ns("client"), served_sha(lab)
    ftp = Recording(source_address=(short, 0))
    with netns.enter(client):
        ftp.connect(OUTSIDE if family == 4 else OUTSIDE6, port, timeout=10)
    ftp.login()
    assert _sha(ftp, client, passive=False) == want
    said = next(x for x in ftp.sent if x.startswith(("PORT", "EPRT")))
    assert said.startswith("PORT 10,0,0,2," if family == 4 else "EPRT |2|fd00:1::2|"), said
    first = _records(lab, ftp, family)
    assert first == ((0, grow), (0, 0)), first  # the kernel holds the correction
    _resume(lab, ftp, how)
    assert _sha(ftp, client, passive=False) == want  # the next rewrite, on top of the record
    second = _records(lab, ftp, family)
    assert second == ((grow, 2 * grow), (0, 0)), second
    assert _sha(ftp, client, passive=True) == want
    print(f"\nseqadj ORIGINAL {SERVERS[port]} v{family} {how}: {first[0]} -> {second[0]}")
    _end(lab, ftp)


@pytest.mark.parametrize("port", list(SERVERS), ids=list(SERVERS.values()))
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_restart_after_a_lengthening_227(short_inside: LabHandle, how: str, port: int) -> None:
    """The outside client through the port forward; it uses the 227's address, so only a
    rewritten 227 (the router's) reaches the inside server."""
    lab, outside = short_inside, short_inside.ns("server")
    want = (state.node_dir(lab.prefix, "inside") / "ftp" / "1mib.bin.sha256").read_text()
    want = want.split()[0]
    ftp = Recording()
    with netns.enter(outside):
        ftp.connect(PUBLIC, port, timeout=10)
    ftp.login()
    assert _sha(ftp, outside, passive=True) == want
    pasv = [x for x in ftp.replies if x.startswith("227")]
    assert "(198,51,100,1," in pasv[-1], pasv
    first = _records(lab, ftp, 4)
    assert first == ((0, 0), (0, GROW_227)), first
    _resume(lab, ftp, how)
    assert _sha(ftp, outside, passive=True) == want
    second = _records(lab, ftp, 4)
    assert second == ((0, 0), (GROW_227, 2 * GROW_227)), second
    assert "(198,51,100,1," in [x for x in ftp.replies if x.startswith("227")][-1]
    assert _sha(ftp, outside, passive=False) == want  # its PORT names itself: unchanged
    print(f"\nseqadj REPLY {SERVERS[port]} v4 {how}: {first[1]} -> {second[1]}")
    _end(lab, ftp)
