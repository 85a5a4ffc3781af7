"""What `ftp-alg ha repair-expectations` derives from a committed expectation and its master
(the lab test, tests/lab/test_ha.py, shows the repaired expectation carrying a transfer)."""

from __future__ import annotations

from alg.daemon.ha import ORIGINAL, REPLY, nat_for, needs_repair
from alg.kernel.ctnetlink import NAT_FOLLOW_MASTER
from alg.kernel.cttypes import Conntrack, Expectation, Tuple

PUBLIC, CLIENT, SERVER, INSIDE = "198.51.100.1", "192.168.77.10", "198.51.100.20", "192.168.78.20"


def tup(src: str, dst: str, sport: int, dport: int) -> Tuple:
    return Tuple(4, 6, src, dst, sport, dport)


def committed(master: Tuple, expected: Tuple, nat_port: int | None = None) -> Expectation:
    """As `conntrackd -c expect` leaves it: no NAT part, no expect function."""
    mask = tup("255.255.255.255", "255.255.255.255", 0, 0xFFFF)
    return Expectation(master, expected, mask, 290, None, None, nat_port, "sane", None, 0, 1)


def ct(original: Tuple, reply: Tuple) -> Conntrack:
    return Conntrack(original, reply, "sane", 0, 300)


def test_an_inside_clients_port_maps_back_to_the_client() -> None:
    master = ct(tup(CLIENT, SERVER, 40000, 21), tup(SERVER, PUBLIC, 21, 40000))
    exp = committed(master.original, tup(SERVER, PUBLIC, 0, 50123))
    assert needs_repair(exp)
    assert nat_for(exp, master) == (REPLY, CLIENT, 50123)


def test_an_inside_servers_227_maps_to_the_server() -> None:
    master = ct(tup(SERVER, PUBLIC, 40000, 21), tup(INSIDE, SERVER, 21, 40000))
    exp = committed(master.original, tup(SERVER, PUBLIC, 0, 30007))
    assert nat_for(exp, master) == (ORIGINAL, INSIDE, 30007)


def test_a_nat_port_still_present_wins() -> None:
    master = ct(tup(CLIENT, SERVER, 40000, 21), tup(SERVER, PUBLIC, 21, 40000))
    exp = committed(master.original, tup(SERVER, PUBLIC, 0, 50123), nat_port=41000)
    assert nat_for(exp, master) == (REPLY, CLIENT, 41000)


def test_no_nat_no_repair() -> None:
    master = ct(tup(CLIENT, SERVER, 40000, 21), tup(SERVER, CLIENT, 21, 40000))
    assert nat_for(committed(master.original, tup(SERVER, CLIENT, 0, 50123)), master) is None


def test_an_intact_expectation_is_left_alone() -> None:
    master = tup(CLIENT, SERVER, 40000, 21)
    exp = committed(master, tup(SERVER, PUBLIC, 0, 50123))
    intact = Expectation(
        exp.master,
        exp.expected,
        exp.mask,
        290,
        REPLY,
        CLIENT,
        50123,
        "sane",
        NAT_FOLLOW_MASTER,
        0,
        1,
    )
    assert not needs_repair(intact)
