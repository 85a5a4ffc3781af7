"""Active FTPS from the client behind the router (issue 13, part 2, `ftps_active_ports`).

The lab's client (192.168.77.10, masqueraded) talks TLS to an outside vsftpd in a namespace of
this test's own (203.0.113.20, on a link of its own where the router masquerades as
203.0.113.1). The client announces the router's address in PORT (lftp `ftp:port-ipv4`) and
its declared range (`ftp:port-range`); vsftpd connects from port 20 to it. After AUTH TLS the
gateway cannot read that PORT, so without ftp-alg's FTPS range the connection is refused at
the router and vsftpd answers 425; with it, the range is DNATed to the client, from that
server only.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
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
    joined_node,
    members,
    probe_listener,
    router_config,
    sh,
    stop,
    tls_vsftpd,
)

pytestmark = pytest.mark.netns

ROUTER_OUT = "203.0.113.1"  # the router's address on the test's outside link
SERVER = "203.0.113.20"
OTHER = "203.0.113.21"  # a second outside host (an extra address of the server's node)
INSIDE = "192.168.77.10"  # the lab's client
LOW, HIGH = 40000, 40009
PROBE_PORT = HIGH
LINK = "fsout0"
MASQ_CHAIN = "FS_FTPS_MASQ"
CONFIG = f"""\
[gateway]
linger = 1.0
[daemon.ftps_active_ports]
"{INSIDE}" = "{LOW}-{HIGH}"
"""


@dataclass
class Active:
    lab: LabHandle
    ns: str  # the outside TLS server's namespace
    root: Path

    def lftp(self, out: Path) -> subprocess.CompletedProcess[str]:
        script = (
            "set ftp:ssl-force true; set ftp:ssl-allow-anonymous true; "
            "set ftp:ssl-protect-data true; set ssl:verify-certificate no; "
            f"set ftp:passive-mode off; set ftp:port-ipv4 {ROUTER_OUT}; "
            f"set ftp:port-range {LOW}-{HIGH}; set net:max-retries 1; set net:timeout 5; "
            f"get 1mib.bin -o {out}; bye"
        )
        client = self.lab.ns(self.lab.topo.client)
        return subprocess.run(
            netns.in_ns(client, ["lftp", "-d", "-e", script, f"ftp://{SERVER}"]),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def sha256(self) -> str:
        return (self.root / "1mib.bin.sha256").read_text().split()[0]


@pytest.fixture(scope="module")
def active(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Active]:
    ns = f"{lab.prefix}-ftpsout"
    router = lab.ns(lab.topo.router)
    tmp = tmp_path_factory.mktemp("ftps-active")
    config = router_config(lab)
    assert not config.exists(), "another test left a daemon config on the router"
    root = state.node_dir(lab.prefix, lab.topo.outside_server) / "ftp"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        joined_node(router, ns, LINK, f"{ROUTER_OUT}/24", f"{SERVER}/24")
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{OTHER}/24", "dev", "eth0"], check=True)
        sh(router, "iptables", "-w", "-t", "nat", "-N", MASQ_CHAIN)
        sh(router, "iptables", "-w", "-t", "nat", "-A", MASQ_CHAIN, "-o", LINK, "-j", "MASQUERADE")
        sh(router, "iptables", "-w", "-t", "nat", "-I", "POSTROUTING", "1", "-j", MASQ_CHAIN)
        procs.append(tls_vsftpd(ns, tmp, SERVER, root, (31000, 31009), SERVER))
        procs.append(probe_listener(lab.ns(lab.topo.client), INSIDE, PROBE_PORT))
        config.write_text(CONFIG)
        yield Active(lab, ns, root)
    finally:
        config.unlink(missing_ok=True)
        backend.set_gateway(lab.prefix, "none", log=lambda _: None)
        stop(procs)
        sh(router, "iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-j", MASQ_CHAIN,
           check=False)  # fmt: skip
        sh(router, "iptables", "-w", "-t", "nat", "-F", MASQ_CHAIN, check=False)
        sh(router, "iptables", "-w", "-t", "nat", "-X", MASQ_CHAIN, check=False)
        netns.delete(ns)


@pytest.mark.parametrize("mode", ["none", "kernel"])
def test_active_ftps_from_behind_the_router_fails_without_ftp_alg(
    active: Active, tmp_path: Path, mode: str
) -> None:
    backend.set_gateway(active.lab.prefix, mode, log=lambda _: None)
    done = active.lftp(tmp_path / "got")
    # the client named the router's address (nothing to rewrite, and nothing could read it
    # inside TLS anyway); vsftpd accepted it and its connection from port 20 was refused
    assert re.search(rf"---> PORT {ROUTER_OUT.replace('.', ',')},(156|157),\d+", done.stderr)
    assert "200 PORT command successful." in done.stderr
    assert "425 Failed to establish connection." in done.stderr, done.stderr
    assert done.returncode != 0
    assert not (tmp_path / "got").exists()


def test_active_ftps_from_behind_the_router_works_with_ftp_alg(
    active: Active, tmp_path: Path
) -> None:
    backend.set_gateway(active.lab.prefix, "ftp-alg", log=lambda _: None)
    out = tmp_path / "got"
    done = active.lftp(out)
    assert done.returncode == 0, done.stderr
    assert "150 Opening BINARY mode data connection" in done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == active.sha256()
    opened = f"active ports {LOW}-{HIGH} of {INSIDE} open to {SERVER} only"
    assert opened in alg_log(active.lab)
    # the control connection still lives in conntrack (TIME_WAIT): the range is open to the
    # server it talked to, and to no one else
    assert members(active.lab) == [SERVER]
    assert connect(active.ns, SERVER, ROUTER_OUT, PROBE_PORT) == "probe"
    assert connect(active.ns, OTHER, ROUTER_OUT, PROBE_PORT) == "refused"
    router = active.lab.ns(active.lab.topo.router)
    sh(router, "conntrack", "-D", "-p", "tcp", "--orig-src", INSIDE, "--orig-dst", SERVER,
       "--dport", "21", check=False)  # fmt: skip
    for _ in range(50):
        if not members(active.lab):
            break
        time.sleep(0.1)
    assert members(active.lab) == []
    assert connect(active.ns, SERVER, ROUTER_OUT, PROBE_PORT) == "refused"
