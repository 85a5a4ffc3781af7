"""The daemon's carrying of the core's commands, without a kernel: a scripted kernel and
packet objects that record what was done to them, in order (the real kernel side is tested in
tests/kernel/test_kernel_daemon_adapter.py and the lab)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alg.core import DataExpectation, Dir, FlowKey, Found, Gateway, NotFound, SeqAdjRecord
from alg.core.packet import ACK, PSH, build
from alg.daemon.executor import Executor
from tests.tcpsim import ip

C, C_OUT, S = ip("192.168.0.1"), ip("192.168.15.5"), ip("198.51.100.2")
ORIG, REPLY = (C, 40000, S, 21), (S, 21, C_OUT, 40000)


@dataclass
class Journal:
    """Everything done, in order, by the kernel and to the packets."""

    entries: list[str] = field(default_factory=list)


@dataclass
class FakePacket:
    journal: Journal
    name: str
    payload: bytes = b""

    def set_payload(self, data: bytes) -> None:
        self.payload = data
        self.journal.entries.append(f"{self.name} rewritten")

    def accept(self) -> None:
        self.journal.entries.append(f"{self.name} accepted")

    def drop(self) -> None:
        self.journal.entries.append(f"{self.name} dropped")


@dataclass
class FakeKernel:
    journal: Journal
    fail_writes: bool = False
    taken: set[int] = field(default_factory=set)
    watched: bool = True  # the connection carries the watch bit (False: login lines skipped)

    def lookup(self, key: FlowKey, from_server: bool = False) -> Found | NotFound:
        self.journal.entries.append("lookup")
        if key not in (ORIG, (S, 21, C, 40000)):
            return NotFound(key)
        return Found(key, ORIG, REPLY, watched=self.watched)

    def reserve(self, exp: DataExpectation, fixed: bool = False) -> int | None:
        self.journal.entries.append(f"reserve {exp.outside_port}")
        return None if exp.outside_port in self.taken else exp.outside_port

    def write_seqadj(self, original: FlowKey, direction: Dir, record: SeqAdjRecord) -> bool:
        self.journal.entries.append(f"seqadj {direction.name} {tuple(record)}")
        if self.fail_writes:
            raise RuntimeError("netlink went away")
        return True

    def withdraw(self, exp: DataExpectation) -> None:
        self.journal.entries.append(f"withdraw {exp.outside_port}")


def _setup(**kernel: Any) -> tuple[Executor, Journal, Gateway]:
    journal = Journal()
    gw = Gateway()
    return Executor(gw, FakeKernel(journal, **kernel), lambda: 0.0), journal, gw


def _feed(executor: Executor, journal: Journal, name: str, pkt: bytes) -> FakePacket:
    packet = FakePacket(journal, name, pkt)
    executor.run(executor.gw.packet(packet, pkt, 0.0))
    return packet


def _greet_and_port(executor: Executor, journal: Journal) -> FakePacket:
    _feed(executor, journal, "220", build(S, C, 21, 40000, 5000, 1000, ACK | PSH, b"220 hi\r\n"))
    port = build(C, S, 40000, 21, 1000, 5008, ACK | PSH, b"PORT 192,168,0,1,4,1\r\n")
    return _feed(executor, journal, "PORT", port)


def test_the_record_and_the_expectation_reach_the_kernel_before_the_verdict() -> None:
    executor, journal, _ = _setup()
    sent = _greet_and_port(executor, journal)
    assert journal.entries == [
        "lookup",
        "220 accepted",
        "reserve 1025",
        "seqadj ORIGINAL (1000, 0, 1)",
        "PORT rewritten",
        "PORT accepted",
    ]
    assert b"PORT 192,168,15,5,4,1\r\n" in sent.payload


def test_a_connection_met_after_its_login_uses_the_default_data_port() -> None:
    """The kernel let the login lines pass unqueued (no watch bit; the look-up sets it): a
    LIST with no PORT before it then uses RFC 959's default data port, which a session
    joined mid-stream cannot know."""
    executor, journal, gw = _setup(watched=False)
    seq = 1000 + len(b"USER a\r\nPASS b\r\n")
    _feed(executor, journal, "LIST", build(C, S, 40000, 21, seq, 5050, ACK | PSH, b"LIST\r\n"))
    assert journal.entries[:2] == ["lookup", "reserve 40000"]
    assert journal.entries[-1] == "LIST accepted"
    assert gw.counters["rewrite"] == 0 and "refusal" not in gw.counters


def test_a_watched_connection_is_one_met_mid_stream() -> None:
    executor, journal, _ = _setup(watched=True)
    _feed(executor, journal, "LIST", build(C, S, 40000, 21, 1016, 5050, ACK | PSH, b"LIST\r\n"))
    assert journal.entries == ["lookup", "LIST accepted"]


def test_a_failing_command_costs_only_itself() -> None:
    """The seqadj write raises: counted and logged, and the packet still gets its verdict."""
    executor, journal, gw = _setup(fail_writes=True)
    _greet_and_port(executor, journal)
    assert journal.entries[-2:] == ["PORT rewritten", "PORT accepted"]
    # One tally: the executor's error sits beside the core's events, as `ftp-alg status`
    # shows them.
    assert gw.counters["errors"] == 1 and gw.counters["rewrite"] == 1


def test_a_taken_port_is_refused_and_the_line_passes_unchanged() -> None:
    executor, journal, gw = _setup(taken={1025})
    sent = _greet_and_port(executor, journal)
    assert journal.entries[-2:] == ["reserve 1025", "PORT accepted"]
    assert b"PORT 192,168,0,1,4,1\r\n" in sent.payload
    assert gw.counters["refusal.no-port"] == 1


def test_untracked_packets_pass() -> None:
    executor, journal, _ = _setup()
    junk = build(ip("203.0.113.1"), C, 21, 40001, 1, 1, ACK | PSH, b"227 (1,2,3,4,5,6)\r\n")
    _feed(executor, journal, "junk", junk)
    assert journal.entries == ["lookup", "junk accepted"]


def test_a_verdict_that_fails_is_given_plainly() -> None:
    """set_payload raises (a netfilterqueue error): the packet is accepted as it came."""
    executor, journal, _ = _setup()

    class Broken(FakePacket):
        def set_payload(self, data: bytes) -> None:
            raise OSError("too large")

    _feed(executor, journal, "220", build(S, C, 21, 40000, 5000, 1000, ACK | PSH, b"220 hi\r\n"))
    pkt = build(C, S, 40000, 21, 1000, 5008, ACK | PSH, b"PORT 192,168,0,1,4,1\r\n")
    broken = Broken(journal, "PORT", pkt)
    executor.run(executor.gw.packet(broken, pkt, 0.0))
    assert journal.entries[-1] == "PORT accepted" and executor.counters["errors"] == 1
