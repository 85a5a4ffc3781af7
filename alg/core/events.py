"""What the core hands back: a verdict for the packet, and actions for the adapters.

The daemon carries them out in order: expectations before the packet they belong to is
released (servers may connect the moment PORT arrives), then releases and drops of held
packets, then the verdict; events become log lines and counters.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from alg.core.grammar import Kind

FlowKey = tuple[bytes, int, bytes, int]  # (src, sport, dst, dport) as seen at the hook


class Dir(IntEnum):
    """Conntrack's direction names: ORIGINAL is client to server."""

    ORIGINAL = 0
    REPLY = 1


class Verdict(IntEnum):
    ACCEPT = 0  # send `data`, or the packet unchanged when `data` is None
    HOLD = 1  # keep the packet; a later Release or Drop decides it
    DROP = 2


class Expectation(NamedTuple):
    """A data connection the router must let in and NAT to the inside host.

    It arrives from `peer` (any source port) at `outside`:`outside_port` and is sent on to
    `inside`:`inside_port`. `nat_dir` is conntrack's CTA_EXPECT_NAT_DIR: REPLY for a PORT
    sent by the client, ORIGINAL for a 227 sent by the server (see linux-facts).
    """

    session: int
    kind: Kind
    family: int
    master: FlowKey
    peer: bytes
    outside: bytes
    outside_port: int
    inside: bytes
    inside_port: int
    nat_dir: Dir
    timeout: float


class Event(NamedTuple):
    """A report: `kind` names it, `reason` is the short code of a refusal."""

    kind: str
    session: int
    message: str
    reason: str = ""
    before: str = ""
    after: str = ""


class Expect(NamedTuple):
    expectation: Expectation


class Unexpect(NamedTuple):
    expectation: Expectation


class Release(NamedTuple):
    """Send a held packet: `data` replaces it, or it goes unchanged when None."""

    handle: object
    data: bytes | None


class Drop(NamedTuple):
    handle: object


Action = Expect | Unexpect | Release | Drop | Event


class Outcome(NamedTuple):
    verdict: Verdict
    data: bytes | None = None
    actions: tuple[Action, ...] = ()


ACCEPT = Outcome(Verdict.ACCEPT)
