"""The kernel-adapter tests' lab: the product's lab (alg/lab, topology.json, router.sh) without
its FTP servers and daemon, in namespaces named tk-<node>-PID.

    client (lan) --- router (NAT) --- server (wan: the outside host)
                       |
                     inside (dmz: public port 21 forwarded to it)

The router masquerades (IPv4 and IPv6) toward the outside and forwards public port 21 to the
inside host (DNAT), so the tests play the client's and the inside server's part with their own
sockets, opened inside a namespace with `alg.lab.netns.enter`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from alg.lab import backend, netns
from alg.lab.topology import load

_TOPO = load()
_CLIENT, _OUTSIDE = _TOPO.address(_TOPO.client), _TOPO.address(_TOPO.outside_server)
CLIENT4, CLIENT6 = _CLIENT.ipv4, _CLIENT.ipv6
INSIDE4, INSIDE6 = _TOPO.inside.ipv4, _TOPO.inside.ipv6
ROUTER_OUT4, ROUTER_OUT6 = _TOPO.public.ipv4, _TOPO.public.ipv6  # the router's public address
OUTSIDE4, OUTSIDE6 = _OUTSIDE.ipv4, _OUTSIDE.ipv6


@dataclass
class Lab:
    prefix: str  # names the lab's state (/run/ftp-alg-lab/<prefix>), not its namespaces
    client: str
    router: str
    inside: str
    outside: str
    sockets: list[socket.socket] = field(default_factory=list)

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return netns.run_in(ns, *argv, check=check, timeout=60)

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
        with netns.enter(ns):
            sock = socket.create_server((addr, port), family=family)
        sock.settimeout(5)
        self.sockets.append(sock)
        return sock

    def connect(self, ns: str, addr: str, port: int, timeout: float = 5) -> socket.socket:
        with netns.enter(ns):
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


def build(pid: int) -> Lab:
    """The lab of test process `pid` (its state prefix `tk<pid in hex>`: 8 characters at most)."""

    def name(node: str) -> str:
        return f"tk-{node}-{pid}"

    prefix = f"tk{pid:x}"
    backend.up(prefix, "none", servers=False, names=name, replace=True, log=lambda _: None)
    inside = str(_TOPO.nat["forward_node"])
    return Lab(
        prefix, name(_TOPO.client), name(_TOPO.router), name(inside), name(_TOPO.outside_server)
    )


def destroy(lab: Lab) -> None:
    lab.close_sockets()
    backend.down(lab.prefix, log=lambda _: None)
