"""The FTP-through-NAT cases the lab exercises, shared by the demo and the tests.

Two failures are what the lab exists to show:
- client side: the client behind the masquerading router announces its private address in
  PORT/EPRT; the outside server refuses it (and could not reach it anyway);
- server side: the inside server behind the port forward announces its private address in 227,
  or a port in 229 that the router does not forward; the outside client cannot connect.
The outside node doubles as the "internet client" for the server side: it is the only node
that reaches the inside server through the router's public address.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alg.lab.demo.clients import Mode, Request
from alg.lab.topology import Topology

SERVERS = ("vsftpd", "pyftpdlib")
_MODES = ((Mode.PORT, 4), (Mode.EPRT, 4), (Mode.EPRT, 6), (Mode.PASV, 4), (Mode.EPSV, 4),
          (Mode.EPSV, 6))  # fmt: skip


@dataclass(frozen=True)
class Case:
    side: str  # "client-side": client -> outside server; "server-side": outside -> port forward
    server: str  # "vsftpd" or "pyftpdlib"
    family: int
    mode: Mode
    trust_pasv: bool = False  # the client uses the address in a 227 (curl skips it by default)

    @property
    def id(self) -> str:
        trust = "-trusted" if self.trust_pasv else ""
        return f"{self.side}-{self.server}-v{self.family}-{self.mode}{trust}"

    @property
    def fails_without_gateway(self) -> bool:
        """Client side breaks in active mode, server side in passive mode."""
        return self.mode.active == (self.side == "client-side")

    def from_node(self, topo: Topology) -> str:
        return topo.client if self.side == "client-side" else topo.outside_server

    def server_node(self, topo: Topology) -> str:
        return topo.outside_server if self.side == "client-side" else str(topo.nat["forward_node"])

    def request(
        self, topo: Topology, op: str = "retr", local: Path | None = None, timeout: float = 10
    ) -> Request:
        client_side = self.side == "client-side"
        addr = topo.address(topo.outside_server) if client_side else topo.public
        host = addr.ipv4 if self.family == 4 else addr.ipv6
        port = int(topo.ftp[f"{self.server}_port"])
        return Request(host, port, self.mode, op, self.trust_pasv, local=local, timeout=timeout)


def all_cases() -> Iterator[Case]:
    """Every case both ways round; PASV over IPv4 also with the 227 address trusted."""
    for side in ("client-side", "server-side"):
        for server in SERVERS:
            for mode, family in _MODES:
                yield Case(side, server, family, mode)
                if mode is Mode.PASV:
                    yield Case(side, server, family, mode, trust_pasv=True)


def failing_cases() -> list[Case]:
    """What plain NAT breaks, and a working gateway must fix."""
    return [c for c in all_cases() if c.fails_without_gateway]


def known_gap(gateway: str, case: Case) -> str | None:
    """A case a gateway is known not to carry, with the reason measured in the lab."""
    if gateway == "kernel" and case.server == "pyftpdlib" and case.family == 6 and case.mode.active:
        return (
            "nf_nat_ftp rewrites EPRT |2| with the address fully expanded "
            "(fd00:0198:0051:0100:0000:0000:0000:0001) and pyftpdlib compares addresses as "
            "strings, so it answers 501 Rejected data connection to foreign address"
        )
    return None
