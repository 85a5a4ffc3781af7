"""Fail-open on a full NFQUEUE, set through the bound socket (alg.daemon.queueflags).

A binder process holds queue 7 with room for 4 packets and never reads it; 20 UDP datagrams
to a local receiver are queued at OUTPUT. Without the flag the kernel drops the 16 that do
not fit (queue_dropped 16, nothing arrives); with it they pass (16 arrive, queue_dropped 0).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from alg.lab import netns
from tests.kernel import hdns

pytestmark = pytest.mark.netns

QUEUE, ROOM, SENT, PORT = 7, 4, 20, 9999


@pytest.fixture
def ns() -> Iterator[str]:
    with hdns.namespace("fo") as name:
        netns.run_in(
            name, "iptables", "-A", "OUTPUT", "-p", "udp", "-d", "127.0.0.1",
            "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE),
        )  # fmt: skip
        yield name


def _flood(ns: str, fail_open: list[str]) -> tuple[int, dict[str, int]]:
    """Datagrams received while the queue is bound and full, and the queue's counters."""
    argv = hdns.probe_argv("bind", "--queue", str(QUEUE), "--max-len", str(ROOM))
    for value in fail_open:
        argv += ["--fail-open", value]
    binder = hdns.popen(ns, argv)
    try:
        assert binder.stdout is not None
        line = binder.stdout.readline()
        assert line == "ready\n", binder.stderr.read() if binder.stderr else line
        with netns.enter(ns):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind(("127.0.0.1", PORT))
            rx.settimeout(0.5)
            for i in range(SENT):
                with contextlib.suppress(OSError):  # a drop at OUTPUT may reach the sender
                    tx.sendto(b"%d" % i, ("127.0.0.1", PORT))
            received = 0
            for _ in range(SENT):
                try:
                    rx.recv(64)
                except TimeoutError:
                    break
                received += 1
        stats = hdns.queue_stats(ns, QUEUE)
    finally:
        binder.communicate(timeout=10)  # closing stdin ends it
    return received, stats


def test_full_queue_drops_without_the_flag(ns: str) -> None:
    received, stats = _flood(ns, [])
    assert received == 0
    assert (stats["total"], stats["dropped"]) == (ROOM, SENT - ROOM)


def test_full_queue_passes_with_fail_open(ns: str) -> None:
    received, stats = _flood(ns, ["on"])
    assert received == SENT - ROOM
    assert (stats["total"], stats["dropped"]) == (ROOM, 0)


def test_fail_open_can_be_cleared_again(ns: str) -> None:
    received, stats = _flood(ns, ["on", "off"])
    assert received == 0
    assert stats["dropped"] == SENT - ROOM


def test_only_the_bound_socket_may_configure_the_queue(ns: str) -> None:
    """The kernel rule queueflags relies on: another socket gets EPERM for a bound queue."""
    binder = hdns.popen(ns, hdns.probe_argv("bind", "--queue", str(QUEUE)))
    try:
        assert binder.stdout is not None and binder.stdout.readline() == "ready\n"
        with netns.enter(ns):
            from tests.kernel.nfq_probe import raw_queue_bind_errno

            assert raw_queue_bind_errno(QUEUE) == 1  # EPERM
            assert raw_queue_bind_errno(QUEUE + 1) == 0  # a free queue binds
    finally:
        binder.communicate(timeout=10)
