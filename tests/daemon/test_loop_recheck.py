"""The loop's part of the re-check after lost destroy events (alg/daemon/recheck.py): a loss
starts it, and a connection conntrack no longer has ends its session. The event socket and
conntrack are scripted here (a real overflow of the event socket is not reproducible on
demand); tests/kernel/test_kernel_daemon_adapter.py runs the look-ups against the kernel."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from alg.core import Found, Lookup
from alg.core.packet import ACK, PSH, build
from alg.daemon.conntrack import to_tuple
from alg.daemon.loop import Daemon
from alg.daemon.settings import Settings
from alg.kernel.cttypes import Conntrack, Tuple
from tests.tcpsim import ip

C, C_OUT, S = ip("192.168.0.1"), ip("192.168.15.5"), ip("198.51.100.2")
ORIG, REPLY = (C, 40000, S, 21), (S, 21, C_OUT, 40000)


@dataclass
class Events:
    """A DestroyListener whose next read reports `lose` dropped events."""

    lose: int = 0
    lost: int = 0
    skipped: int = 0

    def fileno(self) -> int:
        return 1000

    def read_events(self) -> list[Conntrack]:
        self.lost += self.lose
        return []


@dataclass
class Kernel:
    """Conntrack as the re-check sees it: nothing is left."""

    asked: list[Any] = field(default_factory=list)

    def get_conntrack(self, seen: Any) -> Conntrack | None:
        self.asked.append(seen)
        return None


class NoStatus:
    """The status socket, never ready here."""

    def fileno(self) -> int:
        return -1


class Packet:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_payload(self) -> bytes:
        return self.data

    def accept(self) -> None:
        pass


def _daemon_with_a_session() -> Daemon:
    daemon = Daemon(Settings())
    greeting = build(S, C, 21, 40000, 5000, 1000, ACK | PSH, b"220 ready\r\n")
    pkt = Packet(greeting)
    now = time.monotonic()  # the loop's clock: an idle sweep must not end the session
    for cmd in daemon.gw.packet(pkt, greeting, now):
        if isinstance(cmd, Lookup):
            daemon.gw.answer(Found(cmd.key, ORIG, REPLY, conn_id=7), now)
    assert daemon.gw.session_count == 1
    return daemon


def _turn_after(lost: int) -> tuple[Daemon, Kernel]:
    """One loop turn whose event read reports `lost` dropped events; the daemon's state after."""
    daemon = _daemon_with_a_session()
    kernel = Kernel()
    daemon.ct = kernel  # type: ignore[assignment]
    events = Events(lose=lost)
    try:
        daemon._turn([events.fileno()], [], events, NoStatus())  # type: ignore[arg-type]
    finally:
        daemon.metrics.close()
    return daemon, kernel


def test_a_lost_destroy_event_leads_to_the_gone_session_being_forgotten() -> None:
    daemon, kernel = _turn_after(lost=1)
    assert daemon.gw.session_count == 0 and len(kernel.asked) == 1
    assert daemon.counters["destroy-events-lost"] == 1
    assert daemon.counters["destroy-recheck-forgotten"] == 1


def test_without_a_loss_nothing_is_looked_up() -> None:
    daemon, kernel = _turn_after(lost=0)
    assert daemon.gw.session_count == 1 and kernel.asked == []


@dataclass
class Alive:
    """Conntrack holding a live entry (ESTABLISHED) on the session's tuple, or nothing."""

    alive: bool
    asked: list[Any] = field(default_factory=list)

    def get_and_mark(self, seen: Any, value: int, mask: int) -> tuple[Conntrack | None, int]:
        self.asked.append(seen)
        if not self.alive:
            return None, 2
        return _entry(seen, tcp_state=3), 0  # 3: TCP_CONNTRACK_ESTABLISHED


def _entry(original: Any, tcp_state: int) -> Conntrack:
    reply = Tuple(4, 6, original.dst, "192.168.15.5", original.dport, original.sport)
    return Conntrack(original, reply, "sane", 0, 0, id=7, tcp_state=tcp_state)


def _destroyed_with(alive: bool) -> tuple[Daemon, Alive]:
    daemon = _daemon_with_a_session()
    kernel = Alive(alive)
    daemon.conntrack.ct = kernel  # type: ignore[assignment]
    try:
        daemon._destroyed(_entry(to_tuple(ORIG), tcp_state=7))  # 7: TIME_WAIT
    finally:
        daemon.metrics.close()
    return daemon, kernel


def test_a_destroy_event_under_the_sessions_own_id_while_its_connection_lives_keeps_it() -> None:
    """A port reused at once: the killed TIME_WAIT entry's event carries the id the new
    entry took (the id hashes the entry's address); conntrack still has the connection."""
    daemon, kernel = _destroyed_with(alive=True)
    assert daemon.gw.session_count == 1 and len(kernel.asked) == 1
    assert daemon.counters["destroy-event-live-connection"] == 1


def test_a_destroy_event_of_a_connection_that_is_gone_ends_the_session() -> None:
    daemon, kernel = _destroyed_with(alive=False)
    assert daemon.gw.session_count == 0 and kernel.asked
