"""The daemon's kernel adapter (alg/daemon/conntrack.py) against real conntrack expectations:
ownership when several sessions use the same data tuple one after the other."""

from __future__ import annotations

import ipaddress

import pytest

from alg.core import Dir, Expectation, Kind
from alg.daemon.conntrack import Kernel, to_key
from alg.kernel.ctnetlink import Ctnetlink, Tuple
from tests.kernel.lab import INSIDE4, OUTSIDE4, ROUTER_OUT4, Lab

pytestmark = pytest.mark.netns


def _raw(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def _expectation(session: int, master: Tuple, port: int) -> Expectation:
    return Expectation(
        session,
        Kind.PORT,
        4,
        to_key(master),
        _raw(OUTSIDE4),
        _raw(ROUTER_OUT4),
        port,
        _raw(INSIDE4),
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
        sock = lab.connect(lab.inside, OUTSIDE4, 21)
        src, sport = sock.getsockname()[:2]
        masters.append(Tuple(4, 6, src, OUTSIDE4, sport, 21))
    kernel = Kernel(ct, tries=4, port_range=(50000, 60000))
    first, second = _expectation(1, masters[0], 45000), _expectation(2, masters[1], 45000)
    assert kernel.choose_port(first) == 45000
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, 45000)
    assert ct.delete_expectation(expected)  # as if the data connection had used it
    assert kernel.choose_port(second) == 45000  # the client reused the data port
    kernel.withdraw(first)  # session 1 ends after its linger
    listed = ct.list_expectations()
    assert [(e.expected, e.master) for e in listed] == [(expected, masters[1])]
    kernel.withdraw(second)
    assert ct.list_expectations() == []
