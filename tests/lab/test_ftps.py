"""FTPS through a port forward (issue 13, part 2): a real vsftpd with TLS behind the router.

The fixture adds a TLS server of its own behind the lab's router: a namespace joined to the
router by a veth on 192.168.79.0/24, reached through a second public address of the router
(198.51.100.2:21 DNAT -> 192.168.79.20:21). vsftpd announces the public address
(`pasv_address`) and its passive range 31000-31009, which the router's config declares in
`ftps_passive_ports`. The outside client gets a second address, the "other host".

After AUTH TLS nothing on the router can read PASV, so without ftp-alg's FTPS ranges the data
connection finds the public address closed (plain NAT and the kernel helper alike); with them
the range is DNATed for the session's client only, and closes when the session ends.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alg.lab import backend, netns, state
from tests.lab.conftest import LabHandle
from tests.lab.ftps_lab import (
    alg_log,
    connect,
    counters,
    joined_node,
    members,
    probe_listener,
    router_config,
    sh,
    stop,
    tls_vsftpd,
)

pytestmark = pytest.mark.netns

PUBLIC = "198.51.100.2"  # the router's second public address, forwarded to the TLS server
TLS_SERVER = "192.168.79.20"
ROUTER_SIDE = "192.168.79.1"
CLIENT = "198.51.100.20"  # the outside client's lab address
OTHER = "198.51.100.21"  # a second outside host (an extra address of the same node)
LOW, HIGH = 31000, 31009
PROBE_PORT = HIGH  # a plain listener behind the range, to see who the forward lets through
NAT_CHAIN = "FS_FTPS_FORWARD"
CONFIG = f"""\
[gateway]
linger = 1.0
[daemon.ftps_passive_ports]
"{TLS_SERVER}" = "{LOW}-{HIGH}"
"""


@dataclass
class Ftps:
    lab: LabHandle
    root: Path  # what vsftpd serves (the lab's inside tree, with sha256 files)

    @property
    def router(self) -> str:
        return self.lab.ns(self.lab.topo.router)

    @property
    def outside(self) -> str:
        return self.lab.ns(self.lab.topo.outside_server)

    def sha256(self) -> str:
        return (self.root / "1mib.bin.sha256").read_text().split()[0]

    def gateway(self, mode: str) -> None:
        """Switch the router, always restarting it: ftp-alg must read our config."""
        backend.set_gateway(self.lab.prefix, mode, log=lambda _: None)

    def members(self) -> list[str]:
        return members(self.lab)

    def alg_log(self) -> str:
        return alg_log(self.lab)

    def counters(self) -> dict[str, int]:
        return counters(self.lab)

    def connect(self, source: str) -> str:
        """TCP connect from the outside node's `source` to PUBLIC:PROBE_PORT."""
        return connect(self.outside, source, PUBLIC, PROBE_PORT)

    def curl(self, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = ["curl", "-v", "--ssl-reqd", "-k", "--connect-timeout", "5", "-m", "20"]
        argv += [*extra, "-o", str(out), f"ftp://{PUBLIC}/1mib.bin"]
        return subprocess.run(
            netns.in_ns(self.outside, argv),
            capture_output=True,
            text=True,
            timeout=40,
        )


def _forward(lab: LabHandle, add: bool) -> None:
    """The second public address and its port forward, as an admin writes them; and the
    outside node's second address."""
    router, outside = lab.ns(lab.topo.router), lab.ns(lab.topo.outside_server)
    if add:
        subprocess.run(
            ["ip", "-n", router, "addr", "add", f"{PUBLIC}/24", "dev", "wan"], check=True
        )
        subprocess.run(
            ["ip", "-n", outside, "addr", "add", f"{OTHER}/24", "dev", "wan"], check=True
        )
        sh(router, "iptables", "-w", "-t", "nat", "-N", NAT_CHAIN)
        sh(router, "iptables", "-w", "-t", "nat", "-A", NAT_CHAIN, "-d", PUBLIC, "-p", "tcp",
           "--dport", "21", "-j", "DNAT", "--to-destination", TLS_SERVER)  # fmt: skip
        sh(router, "iptables", "-w", "-t", "nat", "-I", "PREROUTING", "1", "-j", NAT_CHAIN)
        return
    sh(router, "iptables", "-w", "-t", "nat", "-D", "PREROUTING", "-j", NAT_CHAIN, check=False)
    sh(router, "iptables", "-w", "-t", "nat", "-F", NAT_CHAIN, check=False)
    sh(router, "iptables", "-w", "-t", "nat", "-X", NAT_CHAIN, check=False)
    subprocess.run(["ip", "-n", router, "addr", "del", f"{PUBLIC}/24", "dev", "wan"], check=False)
    subprocess.run(["ip", "-n", outside, "addr", "del", f"{OTHER}/24", "dev", "wan"], check=False)


@pytest.fixture(scope="module")
def ftps(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ftps]:
    ns = f"{lab.prefix}-ftps"
    tmp = tmp_path_factory.mktemp("ftps")
    config = router_config(lab)
    assert not config.exists(), "another test left a daemon config on the router"
    root = state.node_dir(lab.prefix, "inside") / "ftp"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        joined_node(lab.ns(lab.topo.router), ns, "fsftps0", f"{ROUTER_SIDE}/24", f"{TLS_SERVER}/24")
        _forward(lab, add=True)
        procs.append(tls_vsftpd(ns, tmp, TLS_SERVER, root, (LOW, HIGH), PUBLIC))
        procs.append(probe_listener(ns, TLS_SERVER, PROBE_PORT))
        config.write_text(CONFIG)
        yield Ftps(lab, root)
    finally:
        config.unlink(missing_ok=True)
        backend.set_gateway(lab.prefix, "none", log=lambda _: None)  # rules and sets removed
        stop(procs)
        _forward(lab, add=False)
        netns.delete(ns)  # takes the veth pair with it


@pytest.mark.parametrize("mode", ["none", "kernel"])
def test_passive_ftps_through_the_forward_fails_without_ftp_alg(
    ftps: Ftps, tmp_path: Path, mode: str
) -> None:
    ftps.gateway(mode)
    out = tmp_path / "got"
    done = ftps.curl(out)
    # TLS and login worked; the server announced its public address and range, and the
    # router had nothing listening or forwarded there: the data connection was refused.
    assert "234 Proceed with negotiation." in done.stderr
    assert "200 PROT now Private." in done.stderr
    assert re.search(r"229 Entering Extended Passive Mode \(\|\|\|3100\d\|\)", done.stderr)
    assert re.search(rf"connect to {re.escape(PUBLIC)} port 3100\d failed: Connection refused",
                     done.stderr), done.stderr  # fmt: skip
    assert done.returncode == 7, done.stderr  # CURLE_COULDNT_CONNECT
    assert not out.exists()
    assert "FTP_ALG_FTPS" not in sh(ftps.router, "iptables", "-w", "-t", "nat", "-S")
    assert "ftp-alg-" not in sh(ftps.router, "ipset", "list", "-n")  # `rules remove` took them


@pytest.mark.parametrize("client", ["curl", "lftp"])
def test_passive_ftps_through_the_forward_works_with_ftp_alg(
    ftps: Ftps, tmp_path: Path, client: str
) -> None:
    ftps.gateway("ftp-alg")
    ftp_alg = str(Path(sys.executable).parent / "ftp-alg")
    shown = sh(ftps.router, ftp_alg, "rules", "show", "--backend", "iptables", "--family", "4")
    nat = shown[shown.index("# iptables -t nat") :]
    assert "-A PREROUTING -j FTP_ALG_FTPS" in nat
    assert f"--dport {LOW}:{HIGH} -m set --match-set ftp-alg-pasv-" in nat
    out = tmp_path / "got"
    if client == "curl":
        done = ftps.curl(out)
        assert done.returncode == 0, done.stderr
        assert re.search(r"229 Entering Extended Passive Mode \(\|\|\|3100\d\|\)", done.stderr)
    else:
        script = (
            "set ftp:ssl-force true; set ftp:ssl-allow-anonymous true; "
            "set ftp:ssl-protect-data true; "
            "set ssl:verify-certificate no; set net:max-retries 1; set net:timeout 5; "
            f"get 1mib.bin -o {out}; bye"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", ftps.outside, "lftp", "-e", script, f"ftp://{PUBLIC}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ftps.sha256()
    opened = f"passive ports {LOW}-{HIGH} of {TLS_SERVER} open to {CLIENT} only"
    assert opened in ftps.alg_log()


def test_range_opens_to_the_session_client_only_and_closes_when_it_ends(ftps: Ftps) -> None:
    ftps.gateway("ftp-alg")
    assert ftps.members() == []
    before = ftps.connect(CLIENT)
    assert before == "refused", "the range must be closed before any FTPS session"
    held = subprocess.Popen(
        ["ip", "netns", "exec", ftps.outside, sys.executable, "-c", HELD_CLIENT, PUBLIC, CLIENT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert held.stdout and held.stdin and held.stderr
        line = held.stdout.readline().split()
        assert line == ["retr", ftps.sha256()], (line, held.stderr.read() if not line else "")
        # the session lives: its client, and only its client, gets through the forward
        assert ftps.members() == [CLIENT]
        assert ftps.connect(CLIENT) == "probe"
        assert ftps.connect(OTHER) == "refused"
        assert ftps.counters().get("ftps-range-opened") == 1
        held.stdin.write("quit\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "bye"
    finally:
        held.kill() if held.poll() is None else None
        held.wait(timeout=10)
    # the control connection is over once conntrack forgets it (here at once; on its own
    # after TIME_WAIT or CLOSE): the destroy event ends the session, which closes the range
    sh(ftps.router, "conntrack", "-D", "-p", "tcp", "--orig-src", CLIENT, "--orig-dst", PUBLIC,
       "--dport", "21", check=False)  # fmt: skip
    for _ in range(50):
        if not ftps.members():
            break
        time.sleep(0.1)
    assert ftps.members() == []
    assert ftps.connect(CLIENT) == "refused"
    assert ftps.counters().get("ftps-range-closed") == 1
    assert re.search(
        rf"ftps-range-closed: passive ports {LOW}-{HIGH} of {re.escape(TLS_SERVER)} closed to "
        rf"{re.escape(CLIENT)} after [\d.]+ s \(session ended\)",
        ftps.alg_log(),
    )


def test_daemon_stop_leaves_no_member_behind(ftps: Ftps) -> None:
    ftps.gateway("ftp-alg")
    held = subprocess.Popen(
        ["ip", "netns", "exec", ftps.outside, sys.executable, "-c", HELD_CLIENT, PUBLIC, CLIENT],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert held.stdout is not None
        assert held.stdout.readline().split()[0] == "retr"
        assert ftps.members() == [CLIENT]
        closed = ftps.alg_log().count("ftps-range-closed")
        backend.daemon(ftps.lab.prefix, "stop", log=lambda _: None)  # SIGTERM; rules stay
        assert ftps.members() == []
        assert ftps.alg_log().count("ftps-range-closed") == closed + 1
    finally:
        held.kill()
        held.wait(timeout=10)


# An FTPS client that keeps its control connection open until told to quit: passive RETR
# over TLS (ftplib connects to the control connection's address, like curl's default).
HELD_CLIENT = """\
import ftplib, hashlib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
f = ftplib.FTP_TLS(context=ctx, timeout=10)
f.connect(sys.argv[1], 21, source_address=(sys.argv[2], 0))
f.login()
f.prot_p()
h = hashlib.sha256()
f.retrbinary("RETR 1mib.bin", h.update)
print("retr", h.hexdigest(), flush=True)
sys.stdin.readline()
f.quit()
print("bye", flush=True)
"""
