"""A three-namespace NAT lab for the kernel-adapter tests.

    tk-cli-PID (inside host)  --in0--  tk-rtr-PID (NAT router)  --out0--  tk-srv-PID (outside)
    10.77.1.2, fd77:1::2        10.77.1.1 | 198.51.100.1                  198.51.100.2, fd77:2::2
                                fd77:1::1 | fd77:2::1

The router masquerades (IPv4 and IPv6) toward the outside and forwards public port 21 to the
inside host (DNAT), so the inside host is the client in one case and the server in the other.
Sockets are opened inside a namespace by switching the calling thread there for the duration
of the `socket()` call; a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

INSIDE4, ROUTER_IN4, ROUTER_OUT4, OUTSIDE4 = (
    "10.77.1.2",
    "10.77.1.1",
    "198.51.100.1",
    "198.51.100.2",
)
INSIDE6, ROUTER_IN6, ROUTER_OUT6, OUTSIDE6 = "fd77:1::2", "fd77:1::1", "fd77:2::1", "fd77:2::2"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread in network namespace `name`."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: rc={done.returncode} {done.stderr.strip()}")
    return done


@dataclass
class Lab:
    inside: str
    router: str
    outside: str
    sockets: list[socket.socket] = field(default_factory=list)

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def ftp_alg(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """The real CLI, run inside the router namespace."""
        return self.run(self.router, sys.executable, "-m", "alg.cli", *argv, check=False)

    def save(
        self, tool: str = "iptables", tables: Sequence[str] = ("raw", "mangle", "nat", "filter")
    ) -> str:
        """`iptables-save` of the router without its timestamp comments."""
        out = []
        for table in tables:
            text = self.run(self.router, f"{tool}-save", "-t", table).stdout
            out += [line for line in text.splitlines() if not line.startswith("#")]
        return "\n".join(out)

    def listen(self, ns: str, addr: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with netns(ns):
            sock = socket.create_server((addr, port), family=family)
        sock.settimeout(5)
        self.sockets.append(sock)
        return sock

    def connect(self, ns: str, addr: str, port: int, timeout: float = 5) -> socket.socket:
        with netns(ns):
            sock = socket.create_connection((addr, port), timeout=timeout)
        self.sockets.append(sock)
        return sock

    def close_sockets(self) -> None:
        while self.sockets:
            self.sockets.pop().close()

    def reset_router(self) -> None:
        """Forget connections, expectations and ftp-alg rules between tests."""
        self.ftp_alg("rules", "remove")
        self.run(self.router, "conntrack", "-F", check=False)
        self.run(self.router, "conntrack", "-F", "expect", check=False)


def build(suffix: str) -> Lab:
    lab = Lab(f"tk-cli-{suffix}", f"tk-rtr-{suffix}", f"tk-srv-{suffix}")
    names = (lab.inside, lab.router, lab.outside)
    try:
        for ns in names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        r = ("ip", "-n", lab.router)
        sh(*r, "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", lab.inside)
        sh(*r, "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", lab.outside)
        for ns, dev, addrs in (
            (lab.router, "in0", (f"{ROUTER_IN4}/24", f"{ROUTER_IN6}/64")),
            (lab.router, "out0", (f"{ROUTER_OUT4}/24", f"{ROUTER_OUT6}/64")),
            (lab.inside, "eth0", (f"{INSIDE4}/24", f"{INSIDE6}/64")),
            (lab.outside, "eth0", (f"{OUTSIDE4}/24", f"{OUTSIDE6}/64")),
        ):
            for addr in addrs:
                extra = ("nodad",) if ":" in addr else ()
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", lab.inside, "route", "add", "default", "via", ROUTER_IN4)
        sh("ip", "-n", lab.inside, "-6", "route", "add", "default", "via", ROUTER_IN6)
        lab.run(lab.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        lab.run(lab.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for tool in ("iptables", "ip6tables"):
            lab.run(
                lab.router,
                tool,
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "out0",
                "-j",
                "MASQUERADE",
            )
        lab.run(
            lab.router,
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "out0",
            "-p",
            "tcp",
            "--dport",
            "21",
            "-j",
            "DNAT",
            "--to-destination",
            f"{INSIDE4}:21",
        )
    except BaseException:
        destroy(lab)
        raise
    return lab


def destroy(lab: Lab) -> None:
    lab.close_sockets()
    for ns in (lab.inside, lab.router, lab.outside):
        sh("ip", "netns", "del", ns, check=False)
