"""FTPS behind NAT: open a declared data port range to one peer while its blind session lives.

After AUTH TLS the core reports the session BLIND: PASV/PORT are encrypted, so no expectation
can be made. If the session crosses a port forward to an inside server listed in
`ftps_passive_ports`, the daemon adds the client's address to that server's ipset; the one
static DNAT rule of `ftp-alg rules` (`alg/kernel/rules_ftps.py`) then forwards the server's
passive range from that address only. The other way round, an inside client listed in
`ftps_active_ports` talking through masquerade gets its active range opened to its server.
At SESSION_END (the control connection closed, was destroyed or idled out, or the daemon
stops) the address leaves the set again, unless another live session of the same peer to the
same host still needs it. Members carry a timeout (`MEMBER_TIMEOUT`) that the daemon
refreshes while sessions live, so a daemon killed without cleaning up leaves nothing open for
long. A daemon restarted mid-session does not see the earlier AUTH TLS: such a session's
range closes when its member times out.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from alg.core import Gateway, Report
from alg.core.commands import FlowKey
from alg.core.reports import EventKind
from alg.daemon.settings import Settings
from alg.kernel.rules_ftps import MEMBER_TIMEOUT, FtpsRange, Kind, ranges_from

log = logging.getLogger("ftp-alg")

REFRESH = MEMBER_TIMEOUT / 5  # a member always has at least 4/5 of its timeout left
IPSET_NOT_ADDED = 4103  # IPSET_ERR_EXIST on delete: the member is already gone
# Gateway.session_tuples: a session's conntrack (original, reply) tuples, None once it is gone
Tuples = Callable[[int], tuple[FlowKey, FlowKey] | None]


class Sets(Protocol):
    """Members of the kernel's ipsets; each call returns None or why it failed."""

    def add(self, name: str, peer: str, timeout: int) -> str | None: ...

    def delete(self, name: str, peer: str) -> str | None: ...


class KernelSets:
    """ipset over netlink (pyroute2's IPSet, opened on first use): no process per change
    (0.6 ms measured, no `ipset` process), and nothing the daemon's sandbox does not already
    allow (AF_NETLINK with CAP_NET_ADMIN)."""

    def __init__(self) -> None:
        self._sock: Any = None

    def _ipset(self) -> Any:
        if self._sock is None:
            from pyroute2.ipset import IPSet

            self._sock = IPSet()
        return self._sock

    @staticmethod
    def _family(peer: str) -> int:
        return socket.AF_INET if ipaddress.ip_address(peer).version == 4 else socket.AF_INET6

    def add(self, name: str, peer: str, timeout: int) -> str | None:
        """Add, or refresh the timeout of, `peer` (no error if it is there: -exist)."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            family = self._family(peer)
            self._ipset().add(name, peer, family=family, exclusive=False, timeout=timeout)
        except (NetlinkError, OSError) as exc:
            return f"{type(exc).__name__} {exc}"
        return None

    def delete(self, name: str, peer: str) -> str | None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipset().delete(name, peer, family=self._family(peer))
        except NetlinkError as exc:
            return None if exc.code == IPSET_NOT_ADDED else f"{type(exc).__name__} {exc}"
        except OSError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class Opening:
    """A range opened for one session: which host's set, for which peer, since when."""

    kind: Kind
    host: str
    peer: str
    set_name: str
    ports: str  # "31000-31009" (several ranges comma-separated), for the log
    since: float


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class FtpsRanges:
    """The BLIND / SESSION_END hook: keeps each declared host's set equal to the peers of its
    live blind sessions."""

    def __init__(
        self,
        ranges: Sequence[FtpsRange],
        tuples: Tuples,
        counters: Counter[str],
        sets: Sets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ranges: dict[tuple[Kind, str], list[FtpsRange]] = {}
        for r in ranges:
            self.ranges.setdefault((r.kind, r.host), []).append(r)
        self.tuples = tuples
        self.counters = counters
        self.sets: Sets = sets or KernelSets()
        self.clock = clock
        self.open: dict[int, Opening] = {}
        self.members: Counter[tuple[str, str]] = Counter()  # (set, peer) -> sessions
        self._due = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, gw: Gateway, counters: Counter[str]) -> FtpsRanges:
        ranges = ranges_from(settings.ftps_passive_ports, settings.ftps_active_ports)
        return cls(ranges, gw.session_tuples, counters)

    def on_report(self, report: Report) -> None:
        """Called by the executor for every report; acts on BLIND and SESSION_END."""
        if not self.ranges:
            return
        if report.kind is EventKind.BLIND:
            self._blind(report.session)
        elif report.kind is EventKind.SESSION_END:
            self._close(report.session, "session ended")

    def _match(self, session: int) -> tuple[Kind, str, str] | None:
        """(kind, inside host, peer) if the session crosses NAT to or from a declared host.

        conntrack's tuples: original = as the client sent it, reply = as the server answers.
        Port forward: the server answers from its inside address, not the public one it was
        reached at. Masquerade: the server answers to the router, not the inside client."""
        tuples = self.tuples(session)
        if tuples is None:
            return None
        (client, _, server_seen, _), (server, _, client_seen, _) = tuples
        if server != server_seen and ("passive", _addr(server)) in self.ranges:
            return "passive", _addr(server), _addr(client)
        if client != client_seen and ("active", _addr(client)) in self.ranges:
            return "active", _addr(client), _addr(server)
        return None

    def _blind(self, session: int) -> None:
        found = self._match(session)
        if found is None or session in self.open:
            return
        kind, host, peer = found
        ranges = self.ranges[(kind, host)]
        opening = Opening(
            kind,
            host,
            peer,
            ranges[0].set_name,
            ",".join(f"{r.low}-{r.high}" for r in ranges),
            self.clock(),
        )
        failed = self.sets.add(opening.set_name, peer, MEMBER_TIMEOUT)
        if failed is not None:
            self.counters["ftps-range-failed"] += 1
            log.warning(
                "session %d ftps-range-failed: cannot open %s ports %s of %s to %s: set %s: %s "
                "(did `ftp-alg rules apply` read this config?)",
                *(session, kind, opening.ports, host, peer, opening.set_name, failed),
            )
            return
        self.open[session] = opening
        self.members[(opening.set_name, peer)] += 1
        self.counters["ftps-range-opened"] += 1
        log.info(
            "session %d ftps-range-opened: %s ports %s of %s open to %s only (set %s)",
            *(session, kind, opening.ports, host, peer, opening.set_name),
        )

    def _close(self, session: int, why: str) -> None:
        opening = self.open.pop(session, None)
        if opening is None:
            return
        key = (opening.set_name, opening.peer)
        self.members[key] -= 1
        if self.members[key] <= 0:
            del self.members[key]
            failed = self.sets.delete(*key)
            if failed is not None:
                log.warning("session %d: cannot remove %s from set %s: %s", session, key[1],
                            key[0], failed)  # fmt: skip
        self.counters["ftps-range-closed"] += 1
        log.info(
            "session %d ftps-range-closed: %s ports %s of %s closed to %s after %.1f s (%s%s)",
            *(session, opening.kind, opening.ports, opening.host, opening.peer),
            self.clock() - opening.since,
            why,
            "; still open for another session of that peer" if key in self.members else "",
        )

    def tick(self, now: float) -> None:
        """Refresh the members' timeouts at most every REFRESH seconds. Called on every batch
        of commands: a data connection is always announced on the control connection first,
        so a member is refreshed before it is needed again."""
        if not self.members or now < self._due:
            return
        self._due = now + REFRESH
        for name, peer in self.members:
            failed = self.sets.add(name, peer, MEMBER_TIMEOUT)
            if failed is not None:
                log.warning("cannot refresh %s in set %s: %s", peer, name, failed)

    def close(self) -> None:
        """Daemon stop: close whatever is still open (SESSION_END normally did already)."""
        for session in list(self.open):
            self._close(session, "daemon stopping")
        if isinstance(self.sets, KernelSets):
            self.sets.close()
