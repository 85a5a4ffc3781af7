"""Helpers for the FTPS lab tests: a TLS vsftpd in a namespace of the test's own, joined to
the lab's router by a veth, a plain listener to probe who a forward lets through, and what
the router's ftp-alg says (its log, counters and range sets)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from alg.lab import netns, state
from tests.lab.conftest import LabHandle

VSFTPD_CONF = """\
listen=YES
listen_address={address}
listen_port=21
background=NO
seccomp_sandbox=NO
anonymous_enable=YES
no_anon_password=YES
local_enable=NO
anon_root={root}
ftp_username=ftp
write_enable=NO
pasv_enable=YES
pasv_min_port={low}
pasv_max_port={high}
pasv_address={public}
port_enable=YES
connect_from_port_20=YES
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
require_ssl_reuse=NO
rsa_cert_file={dir}/cert.pem
rsa_private_key_file={dir}/key.pem
secure_chroot_dir={dir}/empty
log_ftp_protocol=YES
vsftpd_log_file={dir}/vsftpd-protocol.log
"""

CONNECT = """\
import socket, sys
s = socket.socket()
s.settimeout(3)
s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], int(sys.argv[3])))
    print(s.recv(16).decode())
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print(type(e).__name__)
"""

LISTEN = """\
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    c, _ = s.accept()
    c.sendall(b"probe")
    c.close()
"""


def sh(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(netns.in_ns(ns, argv), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {done.stderr.strip()}")
    return done.stdout


def wait_listen(ns: str, port: int) -> None:
    for _ in range(50):
        if f":{port} " in sh(ns, "ss", "-Hltn"):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on :{port} in {ns}")


def joined_node(router: str, ns: str, link: str, router_cidr: str, node_cidr: str) -> None:
    """A namespace `ns` on a /24 of its own behind `router` (veth `link` there, eth0 here),
    built with the lab's own primitives (alg/lab/netns.py)."""
    netns.add(ns)
    netns.veth(router, link, ns, "eth0")
    netns.address(router, link, router_cidr)
    netns.address(ns, "eth0", node_cidr)
    netns.run(["ip", "-n", ns, "route", "add", "default", "via", router_cidr.split("/")[0]])


def tls_vsftpd(
    ns: str, tmp: Path, address: str, root: Path, ports: tuple[int, int], public: str
) -> subprocess.Popen[bytes]:
    """vsftpd with TLS required (anonymous, PROT P), on `address`:21, with a self-signed
    certificate made here (never a file from outside the repository)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=ftps.lab.test", "-keyout", str(tmp / "key.pem"),
         "-out", str(tmp / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (tmp / "empty").mkdir()
    os.chmod(tmp, 0o755)
    conf = tmp / "vsftpd.conf"
    low, high = ports
    conf.write_text(
        VSFTPD_CONF.format(address=address, root=root, low=low, high=high, public=public, dir=tmp)
    )
    log = (tmp / "vsftpd.log").open("ab")
    proc = subprocess.Popen(  # vsftpd writes start-up errors to fd 0
        netns.in_ns(ns, ["vsftpd", str(conf)]),
        stdin=log, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    wait_listen(ns, 21)
    return proc


def probe_listener(ns: str, address: str, port: int) -> subprocess.Popen[bytes]:
    """Accepts on `address`:`port` and says "probe": shows that a forward reached it."""
    argv = netns.in_ns(ns, [sys.executable, "-c", LISTEN, address, str(port)])
    proc = subprocess.Popen(argv, start_new_session=True)
    wait_listen(ns, port)
    return proc


def connect(ns: str, source: str, address: str, port: int) -> str:
    """TCP connect from `source` in `ns`: "probe", "refused" or the error's name."""
    return sh(ns, sys.executable, "-c", CONNECT, source, address, str(port)).strip()


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def members(lab: LabHandle) -> list[str]:
    """IPv4 addresses in the router's FTPS range sets (empty: every range closed)."""
    out = sh(lab.ns(lab.topo.router), "ipset", "list")
    return re.findall(r"^(\d+\.\d+\.\d+\.\d+) timeout", out, re.MULTILINE)


def alg_log(lab: LabHandle) -> str:
    return (state.node_dir(lab.prefix, lab.topo.router) / "logs/ftp-alg.log").read_text()


def counters(lab: LabHandle) -> dict[str, int]:
    sock = state.node_dir(lab.prefix, lab.topo.router) / "ftp-alg-status.sock"
    ftp_alg = str(Path(sys.executable).parent / "ftp-alg")
    out = sh(lab.ns(lab.topo.router), ftp_alg, "status", "--json", "--status-socket", str(sock))
    found: dict[str, int] = json.loads(out)["counters"]
    return found


def router_config(lab: LabHandle) -> Path:
    """Where the lab's router.sh finds the daemon's config (and `rules apply` its ranges)."""
    return state.node_dir(lab.prefix, lab.topo.router) / "ftp-alg.toml"
