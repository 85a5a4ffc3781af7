"""ctnetlink against the real kernel: lookups through NAT, expectations that carry data
connections, error mapping, destroy events, and the time a call takes."""

from __future__ import annotations

import errno
import itertools
import select
import socket
import statistics
import time

import pytest

from alg.kernel.ctevents import DestroyListener
from alg.kernel.ctnetlink import Ctnetlink, CtnetlinkError, ExpectationExists, Tuple
from alg.lab import netns
from tests.kernel.lab import (
    CLIENT4,
    CLIENT6,
    INSIDE4,
    OUTSIDE4,
    OUTSIDE6,
    ROUTER_OUT4,
    ROUTER_OUT6,
    Lab,
)

pytestmark = pytest.mark.netns
_ports = itertools.count(40000)


def apply_rules(lab: Lab) -> None:
    done = lab.ftp_alg("rules", "apply")
    assert done.returncode == 0, done.stderr


def control_from_client(lab: Lab, v6: bool = False) -> tuple[socket.socket, Tuple]:
    """The LAN client's (masqueraded) control connection to the outside server's port 21."""
    server = OUTSIDE6 if v6 else OUTSIDE4
    lab.listen(lab.outside, server, 21)
    sock = lab.connect(lab.client, server, 21)
    src, sport = sock.getsockname()[:2]
    return sock, Tuple(6 if v6 else 4, 6, src, server, sport, 21)


def control_from_outside(lab: Lab) -> tuple[socket.socket, Tuple]:
    """An outside client's control connection to the router's public port 21 (DNAT inside)."""
    lab.listen(lab.inside, INSIDE4, 21)
    sock = lab.connect(lab.outside, ROUTER_OUT4, 21)
    sport = sock.getsockname()[1]
    return sock, Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, sport, 21)


def transfer(lab: Lab, listener: socket.socket, ns: str, addr: str, port: int) -> bytes:
    """Connect from `ns` to addr:port, send a line, return what `listener` received."""
    data = lab.connect(ns, addr, port)
    data.sendall(b"data through the expectation\n")
    accepted, _peer = listener.accept()
    with accepted:
        accepted.settimeout(5)
        return accepted.recv(100)


def expect_list(lab: Lab) -> str:
    return lab.run(lab.router, "conntrack", "-L", "expect").stdout


# --- lookup ------------------------------------------------------------------------------------


def test_lookup_masqueraded_connection(lab: Lab, ct: Ctnetlink) -> None:
    _sock, orig = control_from_client(lab)
    # As a reply packet is seen in raw PREROUTING: server:21 -> router's public address.
    seen_reply = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 21, orig.sport)

    by_orig = ct.lookup(orig)
    by_reply = ct.lookup(seen_reply)

    assert by_orig is not None
    original, reply = by_orig
    assert original == orig
    assert (reply.src, reply.sport, reply.dst) == (OUTSIDE4, 21, ROUTER_OUT4)
    assert reply.dport == orig.sport  # MASQUERADE keeps the port when it is free
    assert by_reply == by_orig


def test_lookup_dnat_connection(lab: Lab, ct: Ctnetlink) -> None:
    _sock, orig = control_from_outside(lab)
    # A 227 from the inside server is seen as inside:21 -> outside client (before de-NAT).
    seen_reply = Tuple(4, 6, INSIDE4, OUTSIDE4, 21, orig.sport)

    assert ct.lookup(orig) == (orig, seen_reply)
    assert ct.lookup(seen_reply) == (orig, seen_reply)


def test_lookup_ipv6_and_unknown(lab: Lab, ct: Ctnetlink) -> None:
    _sock, orig = control_from_client(lab, v6=True)
    found = ct.lookup(orig)
    assert found is not None
    assert found[1] == Tuple(6, 6, OUTSIDE6, ROUTER_OUT6, 21, found[1].dport)
    assert ct.lookup(Tuple(4, 6, "192.0.2.1", "192.0.2.2", 1234, 21)) is None


# --- expectations --------------------------------------------------------------------------------


def test_client_side_expectation_carries_active_data_connection(lab: Lab, ct: Ctnetlink) -> None:
    """PORT from the LAN client: NAT_DIR 1, the server connects to public:port."""
    apply_rules(lab)
    _sock, master = control_from_client(lab)
    client_port, public_port = next(_ports), next(_ports)
    data_listener = lab.listen(lab.client, CLIENT4, client_port)
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, public_port)

    ct.create_expectation(master, expected, 1, CLIENT4, client_port, timeout=42)

    listed = ct.list_expectations()
    assert [e.expected for e in listed] == [expected]
    assert listed[0].master == master
    assert (listed[0].nat_dir, listed[0].nat_addr, listed[0].nat_port) == (1, CLIENT4, client_port)
    assert listed[0].fn == "nat-follow-master"
    assert 40 <= listed[0].timeout <= 42  # the update replaced sane's 300 s
    assert (listed[0].mask.sport, listed[0].mask.dport) == (0, 0xFFFF)
    assert f"dport={public_port}" in expect_list(lab)

    got = transfer(lab, data_listener, lab.outside, ROUTER_OUT4, public_port)
    assert got == b"data through the expectation\n"
    assert ct.list_expectations() == []  # consumed by the data connection


def test_delete_expectation(lab: Lab, ct: Ctnetlink) -> None:
    apply_rules(lab)
    _sock, master = control_from_client(lab)
    public_port = next(_ports)
    lab.listen(lab.client, CLIENT4, public_port)
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, public_port)
    ct.create_expectation(master, expected, 1, CLIENT4, public_port, timeout=30)
    assert f"dport={public_port}" in expect_list(lab)

    assert ct.delete_expectation(expected) is True

    assert f"dport={public_port}" not in expect_list(lab)
    assert ct.list_expectations() == []
    assert ct.delete_expectation(expected) is False
    with pytest.raises(ConnectionRefusedError):  # nothing forwards the port any more
        lab.connect(lab.outside, ROUTER_OUT4, public_port)


def test_server_side_expectation_carries_passive_data_connection(lab: Lab, ct: Ctnetlink) -> None:
    """227 from an inside server behind DNAT: master found by the reply tuple, NAT_DIR 0."""
    apply_rules(lab)
    _sock, orig = control_from_outside(lab)
    found = ct.lookup(Tuple(4, 6, INSIDE4, OUTSIDE4, 21, orig.sport))
    assert found is not None
    master = found[0]
    inside_port, public_port = next(_ports), next(_ports)
    data_listener = lab.listen(lab.inside, INSIDE4, inside_port)
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, public_port)

    ct.create_expectation(master, expected, 0, INSIDE4, inside_port, timeout=30)

    got = transfer(lab, data_listener, lab.outside, ROUTER_OUT4, public_port)
    assert got == b"data through the expectation\n"


def test_ipv6_client_side_expectation(lab: Lab, ct: Ctnetlink) -> None:
    apply_rules(lab)
    _sock, master = control_from_client(lab, v6=True)
    client_port, public_port = next(_ports), next(_ports)
    data_listener = lab.listen(lab.client, CLIENT6, client_port)
    expected = Tuple(6, 6, OUTSIDE6, ROUTER_OUT6, 0, public_port)

    ct.create_expectation(master, expected, 1, CLIENT6, client_port, timeout=30)
    assert [e.expected for e in ct.list_expectations(master)] == [expected]

    got = transfer(lab, data_listener, lab.outside, ROUTER_OUT6, public_port)
    assert got == b"data through the expectation\n"


def test_same_tuple_from_two_masters_raises_exists(lab: Lab, ct: Ctnetlink) -> None:
    apply_rules(lab)
    _s1, first = control_from_client(lab)
    second_sock = lab.connect(lab.client, OUTSIDE4, 21)
    second = Tuple(4, 6, CLIENT4, OUTSIDE4, second_sock.getsockname()[1], 21)
    public_port = next(_ports)
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, public_port)
    ct.create_expectation(first, expected, 1, CLIENT4, public_port, timeout=30)

    with pytest.raises(ExpectationExists) as raised:
        ct.create_expectation(second, expected, 1, CLIENT4, public_port, timeout=30)

    assert raised.value.errno == errno.EEXIST
    assert [e.master for e in ct.list_expectations()] == [first]  # the first one untouched


def test_without_anchor_the_error_says_apply_the_rules(lab: Lab, ct: Ctnetlink) -> None:
    _sock, master = control_from_client(lab)  # no rules: no helper on the connection
    expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, next(_ports))

    with pytest.raises(CtnetlinkError) as raised:
        ct.create_expectation(master, expected, 1, CLIENT4, 50000, timeout=30)

    assert raised.value.errno == errno.EOPNOTSUPP
    assert not isinstance(raised.value, ExpectationExists)
    assert "ftp-alg rules apply" in str(raised.value)


def test_unknown_master_is_enoent(lab: Lab, ct: Ctnetlink) -> None:
    master = Tuple(4, 6, CLIENT4, OUTSIDE4, 1, 21)
    with pytest.raises(CtnetlinkError) as raised:
        ct.create_expectation(
            master, Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, 5000), 1, CLIENT4, 1, 30
        )
    assert raised.value.errno == errno.ENOENT
    assert ct.list_expectations(master) == []


def test_expectations_listed_by_master(lab: Lab, ct: Ctnetlink) -> None:
    apply_rules(lab)
    _s1, first = control_from_client(lab)
    other_sock = lab.connect(lab.client, OUTSIDE4, 21)
    other = Tuple(4, 6, CLIENT4, OUTSIDE4, other_sock.getsockname()[1], 21)
    mine = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, next(_ports))
    theirs = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, next(_ports))
    ct.create_expectation(first, mine, 1, CLIENT4, mine.dport, timeout=30)
    ct.create_expectation(other, theirs, 1, CLIENT4, theirs.dport, timeout=30)

    listed = ct.list_expectations(first)
    assert [e.expected for e in listed] == [mine]
    assert all(ct.delete_expectation(e.expected) for e in listed)

    assert [e.expected for e in ct.list_expectations()] == [theirs]


# --- destroy events ------------------------------------------------------------------------------


def test_destroy_event_reports_original_tuple(lab: Lab) -> None:
    with netns.enter(lab.router):
        listener = DestroyListener()  # before the connection: see ctevents' docstring
    with listener:
        _sock, orig = control_from_client(lab)
        assert listener.read_events() == []  # non-blocking, nothing destroyed yet

        lab.run(lab.router, "conntrack", "-D", "-p", "tcp", "--orig-port-src", str(orig.sport))

        events: list[Tuple] = []
        deadline = time.monotonic() + 5
        while orig not in events and time.monotonic() < deadline:
            select.select([listener], [], [], 0.5)
            events += [e.original for e in listener.read_events()]
        assert orig in events
        assert listener.lost == 0


# --- speed ---------------------------------------------------------------------------------------


def _median_us(call: object, rounds: int) -> float:
    assert callable(call)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def test_calls_take_well_under_a_millisecond(lab: Lab, ct: Ctnetlink) -> None:
    apply_rules(lab)
    _sock, master = control_from_client(lab)
    seen_reply = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 21, master.sport)
    ports = itertools.count(20000)

    def create_and_delete() -> None:
        expected = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, 0, next(ports))
        ct.create_expectation(master, expected, 1, CLIENT4, 1024, timeout=30)
        ct.delete_expectation(expected)

    lookup_orig = _median_us(lambda: ct.lookup(master), 300)
    lookup_reply = _median_us(lambda: ct.lookup(seen_reply), 300)
    create_delete = _median_us(create_and_delete, 300)
    print(
        f"\nmedian µs: lookup by original {lookup_orig:.0f}, by reply {lookup_reply:.0f},"
        f" create+timeout update+delete {create_delete:.0f}"
    )
    assert lookup_orig < 500
    assert lookup_reply < 500
    assert create_delete < 1000


def test_destroy_listener_decodes_only_its_ports(lab: Lab) -> None:
    with netns.enter(lab.router):
        listener = DestroyListener(ports=(21,))
    with listener:
        _sock, orig = control_from_client(lab)  # to port 21
        lab.listen(lab.outside, OUTSIDE4, 8080)
        other = lab.connect(lab.client, OUTSIDE4, 8080)  # not a control port
        lab.run(lab.router, "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "8080")
        lab.run(lab.router, "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "21")
        events: list[Tuple] = []
        deadline = time.monotonic() + 5
        while orig not in events and time.monotonic() < deadline:
            select.select([listener], [], [], 0.5)
            events += [e.original for e in listener.read_events()]
        assert events == [orig]  # the port-8080 connection was never decoded
        assert listener.skipped >= 1
        other.close()
