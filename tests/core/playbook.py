"""Scripted exchanges with the Gateway, in the manner of mitmproxy's Playbook: each step says
what goes in (a packet, an answer, a tick) and exactly which commands must come out.

    pb = Playbook(Gateway())
    pb.client(b"LIST\r\n") << (Reserve, EventKind.FORWARD, Accept)

A command is matched by its type, a Report by its EventKind (and Reason when given as a pair),
or exactly by equality when an instance is given. Nothing of the kernel runs here: the test
plays the daemon and answers each question itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alg.core import Command, EventKind, Found, Gateway, Lookup, Reason, Report
from alg.core.packet import ACK, PSH, build
from tests.tcpsim import ip

C, C_OUT, S = ip("192.168.0.1"), ip("192.168.15.5"), ip("198.51.100.2")
CPORT, CPORT_OUT = 40000, 61000  # the router's masquerade moved the client's port


@dataclass
class Playbook:
    gw: Gateway
    cseq: int = 1000
    sseq: int = 5000
    handle: int = 0
    now: float = 0.0
    out: list[Command] = field(default_factory=list)

    @property
    def original(self) -> tuple[bytes, int, bytes, int]:
        return (C, CPORT, S, 21)

    @property
    def reply(self) -> tuple[bytes, int, bytes, int]:
        return (S, 21, C_OUT, CPORT_OUT)

    def found(self, key: tuple[bytes, int, bytes, int], **changes: Any) -> Found:
        return Found(key, self.original, self.reply)._replace(**changes)

    def client(self, payload: bytes) -> Playbook:
        pkt = build(C, S, CPORT, 21, self.cseq, self.sseq, ACK | PSH, payload)
        self.cseq += len(payload)
        return self._feed(pkt)

    def server(self, payload: bytes) -> Playbook:
        pkt = build(S, C, 21, CPORT, self.sseq, self.cseq, ACK | PSH, payload)
        self.sseq += len(payload)
        return self._feed(pkt)

    def _feed(self, pkt: bytes) -> Playbook:
        self.handle += 1
        self.out = self.gw.packet(self.handle, pkt, self.now)
        return self

    def answer(self, answer: Any) -> Playbook:
        self.out = self.gw.answer(answer, self.now)
        return self

    def tick(self, now: float) -> Playbook:
        self.now = now
        self.out = self.gw.tick(now)
        return self

    def forget(self, conn_id: int = 0) -> Playbook:
        self.out = self.gw.forget(self.original, now=self.now, conn_id=conn_id)
        return self

    def __lshift__(self, expected: tuple[Any, ...]) -> Playbook:
        got = self.out
        assert len(got) == len(expected), f"expected {expected}, got {got}"
        for cmd, want in zip(got, expected, strict=True):
            assert _matches(cmd, want), f"expected {want}, got {cmd}\nall: {got}"
        return self


def _matches(cmd: Command, want: Any) -> bool:
    if isinstance(want, EventKind):
        return isinstance(cmd, Report) and cmd.kind is want
    if isinstance(want, tuple) and len(want) == 2 and isinstance(want[1], Reason):
        return isinstance(cmd, Report) and (cmd.kind, cmd.reason) == want
    if isinstance(want, type):
        return isinstance(cmd, want)
    return bool(cmd == want)


def started(gw: Gateway | None = None, **found: Any) -> Playbook:
    """A client-NAT session seen from its start: the greeting, looked up, watched."""
    pb = Playbook(gw or Gateway())
    pb.server(b"220 ready\r\n")
    key = (S, 21, C, CPORT)
    pb << (Lookup(key, from_server=True),)
    pb.answer(pb.found(key, **found))
    return pb
