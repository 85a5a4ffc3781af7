"""The daemon's kernel adapter (alg/daemon/conntrack.py) against real conntrack: expectation
ownership when several sessions use the same data tuple one after the other, fixed ports, and
the seqadj record written and read back (what a restarted daemon or a standby router finds)."""

from __future__ import annotations

import ipaddress

import pytest

from alg.core import DataExpectation, Dir, Found, Kind, SeqAdjRecord
from alg.daemon.conntrack import ConntrackAdapter, to_key
from alg.daemon.recheck import Recheck
from alg.kernel.ctnetlink import Ctnetlink, Tuple
from alg.kernel.cttypes import Conntrack
from tests.kernel.lab import CLIENT4, OUTSIDE4, ROUTER_OUT4, Lab

pytestmark = pytest.mark.netns


def _raw(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _expectation(session: int, master: Tuple, port: int) -> DataExpectation:
    return DataExpectation(
        session,
        Kind.PORT,
        4,
        to_key(master),
        _raw(OUTSIDE4),
        _raw(ROUTER_OUT4),
        port,
        _raw(CLIENT4),
        port,
        Dir.REPLY,
        30.0,
    )


def test_an_ended_session_does_not_delete_a_newer_sessions_expectation(
    lab: Lab, ct: Ctnetlink
) -> None:
    assert lab.ftp_alg("rules", "apply").returncode == 0
    lab.listen(lab.outside, OUTSIDE4, 21)
    masters = []
    for _ in range(2):
        sock = lab.connect(lab.client, OUTSIDE4, 21)
        src, sport = sock.getsockname()[:2]
        masters.append(Tuple(4, 6, src, OUTSIDE4, sport, 21))
    kernel = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000))
    first, second = _expectation(1, masters[0], 45000), _expectation(2, masters[1], 45000)
    assert kernel.reserve(first) == 45000
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, 45000)
    assert ct.delete_expectation(expected)  # as if the data connection had used it
    assert kernel.reserve(second) == 45000  # the client reused the data port
    kernel.withdraw(first)  # session 1 ends after its linger
    listed = ct.list_expectations()
    assert [(e.expected, e.master) for e in listed] == [(expected, masters[1])]
    kernel.withdraw(second)
    assert ct.list_expectations() == []


def _controls(lab: Lab, n: int) -> list[Tuple]:
    assert lab.ftp_alg("rules", "apply").returncode == 0
    lab.listen(lab.outside, OUTSIDE4, 21)
    return [_connect(lab) for _ in range(n)]


def _connect(lab: Lab) -> Tuple:
    sock = lab.connect(lab.client, OUTSIDE4, 21)
    src, sport = sock.getsockname()[:2]
    return Tuple(4, 6, src, OUTSIDE4, sport, 21)


def test_a_fixed_port_taken_by_another_session_is_not_replaced(lab: Lab, ct: Ctnetlink) -> None:
    """A forward (the announcer names its own public port) cannot move to another port."""
    master, other = _controls(lab, 2)
    kernel = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000))
    assert kernel.reserve(_expectation(1, master, 45001), fixed=True) == 45001
    assert kernel.reserve(_expectation(2, other, 45001), fixed=True) is None
    assert kernel.counters["expectation-port-taken"] == 1
    moved = kernel.reserve(_expectation(2, other, 45001))  # not fixed: another port
    assert moved is not None and moved != 45001
    kernel.withdraw_all()
    assert ct.list_expectations() == []


def test_seqadj_record_is_written_and_read_back(lab: Lab, ct: Ctnetlink) -> None:
    """The record lives in conntrack: a daemon that knows nothing finds it by look-up."""
    (master,) = _controls(lab, 1)
    kernel = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000))
    key = to_key(master)
    found = kernel.lookup(key)
    assert isinstance(found, Found) and found.original == key and found.anchored
    assert found.seqadj_original is None and found.seqadj_reply is None  # nothing set yet
    record = SeqAdjRecord(0xFFFFFFF0, -2, 3)  # near the wrap, a shrink then a growth
    assert kernel.write_seqadj(key, Dir.ORIGINAL, record)
    reply_record = SeqAdjRecord(1234, 0, -1)
    assert kernel.write_seqadj(key, Dir.REPLY, reply_record)
    again = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000)).lookup(
        key
    )  # "after a restart"
    assert isinstance(again, Found)
    assert again.seqadj_original == record
    assert again.seqadj_reply == reply_record
    # The server side of the same connection finds the same entry (reply view turned round).
    reverse = (key[2], key[3], key[0], key[1])
    assert kernel.lookup(reverse) == again._replace(key=reverse)


def test_a_greeting_is_looked_up_in_one_request(
    lab: Lab, ct: Ctnetlink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first payload of a session is the server's greeting, seen in mangle POSTROUTING
    as server -> the client's inside address: behind masquerade that is no tuple of the
    entry, its reverse is the original. The adapter asks that way first."""
    (master,) = _controls(lab, 1)
    asked: list[Tuple] = []
    real = ct.get_conntrack

    def counted(seen: Tuple) -> Conntrack | None:
        asked.append(seen)
        return real(seen)

    monkeypatch.setattr(ct, "get_conntrack", counted)
    kernel = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000))
    greeting = to_key(master.reversed())
    found = kernel.lookup(greeting, from_server=True)
    assert isinstance(found, Found) and found.original == to_key(master)
    assert asked == [master]
    asked.clear()
    # Told nothing, the adapter still finds it, at the cost of a second request.
    assert isinstance(kernel.lookup(greeting), Found) and asked == [master.reversed(), master]


def test_after_lost_destroy_events_gone_connections_are_found(lab: Lab, ct: Ctnetlink) -> None:
    """The re-check after a loss (alg/daemon/recheck.py): a connection conntrack deleted, and
    one whose tuple now belongs to another conntrack id, come back to be forgotten; a live
    one stays."""
    alive, deleted, replaced = _controls(lab, 3)
    ids = {}
    for master in (alive, deleted, replaced):
        entry = ct.get_conntrack(master)
        assert entry is not None
        ids[master] = entry.id
    lab.run(
        lab.router,
        *("conntrack", "-D", "-p", "tcp", "--orig-src", deleted.src),
        *("--orig-port-src", str(deleted.sport)),
    )
    recheck = Recheck()
    older = ids[replaced] + 1  # as if the session had known an older connection
    recheck.start(
        [(to_key(alive), ids[alive]), (to_key(deleted), ids[deleted]), (to_key(replaced), older)]
    )
    gone = recheck.step(ct, batch=2)
    assert recheck.pending  # bounded: the third waits for the next turn
    gone += recheck.step(ct, batch=2)
    assert not recheck.pending
    assert sorted(gone) == sorted([(to_key(deleted), ids[deleted]), (to_key(replaced), older)])


def test_a_closed_connection_is_reported_closed(lab: Lab, ct: Ctnetlink) -> None:
    """The look-up reads conntrack's TCP state: TIME_WAIT (both FINs seen) is closed, a live
    control connection is not."""
    (live,) = _controls(lab, 1)
    lab.run(
        lab.router,
        *("conntrack", "-I", "-p", "tcp", "-s", CLIENT4, "-d", OUTSIDE4),
        *("--sport", "40999", "--dport", "21", "-r", OUTSIDE4, "-q", ROUTER_OUT4),
        *("--reply-port-src", "21", "--reply-port-dst", "40999"),
        *("--state", "TIME_WAIT", "--timeout", "60", "-u", "SEEN_REPLY"),
    )
    kernel = ConntrackAdapter(ct, tries=4, port_range=(50000, 60000))
    closed = kernel.lookup(to_key(Tuple(4, 6, CLIENT4, OUTSIDE4, 40999, 21)))
    assert isinstance(closed, Found) and closed.closed
    alive = kernel.lookup(to_key(live))
    assert isinstance(alive, Found) and not alive.closed
