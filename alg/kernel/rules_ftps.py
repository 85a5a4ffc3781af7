"""FTPS port ranges behind NAT: one ipset and one DNAT rule per declared inside host (pure).

After AUTH TLS the gateway cannot read PASV/PORT, so it cannot create an expectation for the
data connection, and an expectation covers one port anyway (`sane` keeps one per control
connection). What the gateway still knows is who talks to whom: when a session to a declared
inside server goes blind, the daemon (`alg/daemon/ftps.py`) adds that session's client
address to the server's set, and the one static rule below DNATs the server's passive range
to it, for members of the set only. The same holds the other way round for an inside client
that declared its active range: the set then holds the outside servers it talks to.

Why ipset (`hash:ip` with a per-member timeout) and not an nftables set: the rule set this
project installs is iptables (the kernels it targets lack nft_queue), and iptables matches
ipsets (`-m set`), not nft sets. The member timeout bounds how long a range stays open if the
daemon dies without cleaning up; the daemon refreshes it while the session lives.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

SET_PREFIX = "ftp-alg-"  # every set of ours starts with it: `rules remove` destroys them all
# Seconds a member lives unless refreshed; the daemon refreshes well within it.
MEMBER_TIMEOUT = 300

Kind = Literal["passive", "active"]


@dataclass(frozen=True)
class FtpsRange:
    """A declared data port range of an inside host, DNATed to it for the set's members."""

    kind: Kind  # passive: inside server, members are clients; active: inside client
    host: str  # the inside host's address, normalised
    low: int
    high: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.host).version

    @property
    def set_name(self) -> str:
        """One set per inside host and kind; ipset names are at most 31 characters, too short
        for an IPv6 address, so the name carries a digest of it (ipset lists it as a comment
        of the rule that uses it: `rules show`)."""
        digest = hashlib.sha256(self.host.encode()).hexdigest()[:8]
        return f"{SET_PREFIX}{'pasv' if self.kind == 'passive' else 'actv'}-{digest}"


def ranges_from(
    passive: Mapping[str, Sequence[tuple[int, int]]],
    active: Mapping[str, Sequence[tuple[int, int]]],
) -> tuple[FtpsRange, ...]:
    """The settings' tables (`ftps_passive_ports`, `ftps_active_ports`) as ranges."""
    found: list[FtpsRange] = []
    for kind, table in (("passive", passive), ("active", active)):
        for host, pairs in table.items():
            found += [FtpsRange(kind, host, low, high) for low, high in pairs]  # type: ignore[arg-type]
    return tuple(found)


def create_set(r: FtpsRange) -> tuple[str, ...]:
    """`ipset` arguments creating the range's set (kept, with its members, if it exists)."""
    family = "inet" if r.family == 4 else "inet6"
    return ("-exist", "create", r.set_name, "hash:ip", "family", family, "timeout",
            str(MEMBER_TIMEOUT))  # fmt: skip


def dnat_rule(r: FtpsRange) -> tuple[str, ...]:
    """nat PREROUTING: a new connection to one of the router's own addresses in the range,
    from a member of the set, goes to the inside host (same port). Everyone else finds the
    range closed, exactly as without the rule."""
    return (
        *("-p", "tcp", "--dport", f"{r.low}:{r.high}"),
        *("-m", "set", "--match-set", r.set_name, "src"),
        *("-m", "addrtype", "--dst-type", "LOCAL"),
        *("-m", "comment", "--comment", f"ftp-alg {r.kind} FTPS range of {r.host}"),
        *("-j", "DNAT", "--to-destination", r.host),
    )
