"""The skip rules in the real kernel: which segments of a connection that no daemon watches
pass unqueued, and that the watch bit, set over ctnetlink as the daemon does, ends it for
commands (plain replies pass whatever the bit).

One namespace of its own, loopback only: the rendered skip rules (alg/kernel/rules_skip.py)
then the payload match of the queue rule, in a chain jumped to from mangle POSTROUTING, with a
counting rule (no target) in place of the NFQUEUE. Each case is one segment (TCP_NODELAY,
read by the peer before the next), and the counting rule's packet count says whether it
would have been queued.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from alg.daemon.conntrack import ConntrackAdapter, to_key
from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import Tuple
from alg.kernel.rules import PAYLOAD_BPF, TOOLS
from alg.kernel.rules_skip import (
    DEFAULT_PASSIVE_MARK,
    DEFAULT_WATCH_MARK,
    passive_rules,
    skip_rule,
)
from alg.lab import netns

pytestmark = pytest.mark.netns

PORT = 2100
FORWARDED = 2199  # nat OUTPUT sends it on to PORT: a DNAT connection
MARK, PASSIVE = DEFAULT_WATCH_MARK, DEFAULT_PASSIVE_MARK
# (from the client, payload, queued?)
CASES = [
    (True, b"USER anonymous\r\n", False),
    (True, b"user x\r\n", False),
    (True, b"PASS a@b\r\n", False),
    (True, b"SYST\r\n", False),
    (True, b"CWD /pub\r\n", False),
    (True, b"USER x\n", False),
    (True, b"PASS PORT\r\n", True),  # an address verb anywhere
    (True, b"USER a\r\npasv\r\n", True),  # pipelined, in any case
    (True, b"TYPE I\r\nRETR f\r\n", True),  # a transfer: the default data port needs it
    (True, b"USER a", True),  # no line end: the rest may follow
    (True, b"US\n", True),  # too short to hold a verb
    (True, b"RT 1,2\r\n", True),  # the rest of a split line
    (True, b"PORT 1,2,3,4,5,6\r\n", True),
    (True, b"LIST\r\n", True),
    (True, b"FEAT\r\n", True),  # not a verb of the list
    (True, b"QUIT\r\n", False),
    (False, b"220 hi\r\n", False),
    (False, b"331 pw\r\n", False),
    (False, b"200 PORT ok\r\n", False),  # "PORT" is a client word only
    (False, b"220-hi\r\n", True),  # a multi-line reply
    (False, b"227 Entering (1,2,3,4,5,6)\r\n", True),
    (False, b"230 ok\r\n227 x\r\n", True),
    (False, b"150 x\r\n", False),
    (False, b"226 ok\r\n", False),
    (False, b"200 ok", True),
    (False, b"530 no\r\n", False),
    (False, b"150 file227.bin\r\n", True),  # a word the gateway acts on, wherever it stands
    (False, b"221 Goodbye.\r\n", False),  # the session closes at the QUIT
    (False, b"421 bye\r\n", True),
    (False, b"234 go\r\n", True),
    (False, b"299 x\r\n", True),  # not a code of the list
]


@pytest.fixture
def ns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"tk-skip-{os.getpid()}"
    netns.delete(name)
    netns.add(name)
    try:
        for family, tool in TOOLS.items():
            ipt = [tool, "-w", "-t", "mangle"]
            netns.run_in(name, *ipt, "-N", "T")
            netns.run_in(name, *ipt, "-A", "POSTROUTING", "-p", "tcp", "-j", "T")
            to_ports = ("-p", "tcp", "--dport", str(PORT))
            from_ports = ("-p", "tcp", "--sport", str(PORT))
            for rule in passive_rules(family, to_ports, from_ports, MARK, PASSIVE):
                netns.run_in(name, *ipt, "-A", "T", *rule)
            for from_client, ports in ((True, to_ports), (False, from_ports)):
                netns.run_in(name, *ipt, "-A", "T", *skip_rule(family, from_client, ports, MARK))
            # a port forward on loopback: REDIRECT is a DNAT to conntrack (--ctstate DNAT)
            forward = ("-p", "tcp", "--dport", str(FORWARDED), "-j", "REDIRECT")
            netns.run_in(
                name, tool, "-w", "-t", "nat", "-A", "OUTPUT", *forward, "--to-ports", str(PORT)
            )
            payload = ("-m", "bpf", "--bytecode", PAYLOAD_BPF[family])
            netns.run_in(name, *ipt, "-A", "T", "-p", "tcp", *payload)
        yield name
    finally:
        netns.delete(name)


def _queued(ns: str, family: int) -> int:
    listed = netns.run_in(ns, TOOLS[family], "-w", "-t", "mangle", "-L", "T", "-v", "-x", "-n")
    return int(listed.stdout.splitlines()[-1].split()[0])  # the counting rule comes last


def _pair(ns: str, family: int, port: int = PORT) -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair; `port` FORWARDED goes through the port forward."""
    af, addr = (socket.AF_INET, "127.0.0.1") if family == 4 else (socket.AF_INET6, "::1")
    with netns.enter(ns):
        server = socket.create_server((addr, PORT), family=af)
        client = socket.create_connection((addr, port), timeout=5)
    conn, _ = server.accept()
    server.close()
    for s in (client, conn):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(5)
    return client, conn


def _send(
    ns: str, family: int, sender: socket.socket, receiver: socket.socket, data: bytes
) -> bool:
    """Whether the segment `data` went to the counting rule (would have been queued)."""
    before = _queued(ns, family)
    sender.sendall(data)
    got = b""
    while len(got) < len(data):
        got += receiver.recv(4096)
    return _queued(ns, family) > before


@pytest.mark.parametrize("family", [4, 6])
def test_login_lines_of_an_unwatched_connection_pass_the_rest_is_queued(
    ns: str, family: int
) -> None:
    client, server = _pair(ns, family)
    with client, server:
        got = [
            (data, _send(ns, family, *((client, server) if c else (server, client)), data))
            for c, data, _ in CASES
        ]
    assert got == [(data, queued) for _, data, queued in CASES]


@pytest.mark.parametrize("family", [4, 6])
def test_the_watch_bit_the_daemons_look_up_sets_queues_every_line(ns: str, family: int) -> None:
    """The daemon's look-up (ConntrackAdapter.lookup) sets the bit in the same round trip,
    leaving the admin's bits of the connmark as they were; it reports the connection
    unwatched, a later one watched."""
    client, server = _pair(ns, family)
    with client, server:
        assert not _send(ns, family, client, server, b"USER anonymous\r\n")
        host, sport = client.getsockname()[:2]
        peer = client.getpeername()[0]
        original = Tuple(family, 6, host, peer, sport, PORT)
        with netns.enter(ns):
            ct = Ctnetlink()
        with ct:
            ct.get_and_mark(original, 0x5, 0x5)  # an admin's bits
            adapter = ConntrackAdapter(ct, 1, (1024, 65535), watch_mark=MARK)
            found = adapter.lookup(to_key(original))
            assert not getattr(found, "watched", True)
            entry = ct.get_conntrack(original)
            assert entry is not None and entry.mark == MARK | 0x5
            assert getattr(adapter.lookup(to_key(original)), "watched", False)
            assert adapter.counters["connmark-set"] == 1
        assert _send(ns, family, client, server, b"PASS secret\r\n")
        assert not _send(ns, family, server, client, b"230 ok\r\n")  # replies: whatever the bit
        assert _send(ns, family, server, client, b"227 Entering (1,2,3,4,5,6)\r\n")


# (from the client, payload, queued?) in order on one unwatched connection without DNAT
PASSIVE_CASES = [
    (False, b"227 Entering (1,2,3,4,5,6)\r\n", True),  # no PASV passed: unsolicited
    (True, b"LIST\r\n", True),  # no PASV passed: RFC 959's default data port
    (True, b"PASV\r\n", False),  # sets the passive bit
    (False, b"227 Entering (1,2,3,4,5,6)\r\n", False),
    (True, b"LIST\r\n", False),  # uses the PASV: clears the bit
    (False, b"150 ok\r\n", False),
    (False, b"227 Entering (1,2,3,4,5,6)\r\n", True),  # the bit is clear
    (True, b"RETR f\r\n", True),  # the default data port again
    (True, b"epsv\r\n", False),
    (False, b"229 Entering (|||5001|)\r\n", False),
    (True, b"LIST\r\nRETR f\r\n", True),  # the second transfer: default data port
    (True, b"PASV\r\nLIST\r\n", True),  # pipelined: the daemon reads both
    (True, b"PASV\r\n", False),
    (False, b"227 Entering (1,2,3,4,5,6)\r\n234 x\r\n", True),  # a word it acts on
    (True, b"STOR f\r\nPORT 1,2,3,4,5,6\r\n", True),
    (True, b"PASV\r\n", False),
    (True, b"STOR f\r\n", False),
    (True, b"PASV PORT\r\n", True),
]


@pytest.mark.parametrize("family", [4, 6])
def test_passive_exchanges_of_an_unwatched_connection_without_dnat_pass(
    ns: str, family: int
) -> None:
    """The passive rules: a PASV/EPSV sets the passive bit, the reply passes while it is
    set, the one transfer that uses it passes and clears it; anything the default data port
    or an address depends on is queued. The bit is in the connmark the daemon reads."""
    client, server = _pair(ns, family)
    with client, server:
        got = []
        for from_client, data, _ in PASSIVE_CASES:
            pair = (client, server) if from_client else (server, client)
            got.append((data, _send(ns, family, *pair, data)))
        host, sport = client.getsockname()[:2]
        original = Tuple(family, 6, host, client.getpeername()[0], sport, PORT)
        assert not _send(ns, family, client, server, b"PASV\r\n")  # sets the bit
        with netns.enter(ns):
            ct = Ctnetlink()
        with ct:
            adapter = ConntrackAdapter(ct, 1, (1024, 65535), watch_mark=MARK, passive_mark=PASSIVE)
            found = adapter.lookup(to_key(original))
        assert getattr(found, "passive", False) and not getattr(found, "watched", True)
        # watched now: every command is queued, and so is the passive reply
        assert _send(ns, family, client, server, b"PASV\r\n")
        assert _send(ns, family, server, client, b"227 Entering (1,2,3,4,5,6)\r\n")
        assert _send(ns, family, client, server, b"LIST\r\n")
    assert got == [(data, queued) for _, data, queued in PASSIVE_CASES]


@pytest.mark.parametrize("family", [4, 6])
def test_passive_exchanges_of_a_port_forward_are_queued(ns: str, family: int) -> None:
    """Through a port forward (DNAT) the 227 names the inside server: it must be rewritten."""
    client, server = _pair(ns, family, FORWARDED)
    with client, server:
        assert _send(ns, family, client, server, b"USER x\r\n") is False  # the login rule
        assert _send(ns, family, client, server, b"PASV\r\n")
        assert _send(ns, family, server, client, b"227 Entering (1,2,3,4,5,6)\r\n")
        assert _send(ns, family, client, server, b"LIST\r\n")
