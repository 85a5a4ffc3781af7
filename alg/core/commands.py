"""The core's conversation with its adapters: commands out, answers in (mitmproxy's layers).

The core never touches the kernel. When it needs something done or known, it returns a
command; the adapter carries the commands out in the order given. A command that needs an
answer (`Lookup`, `Reserve`) is always the last of its list: the core has stopped there, and
resumes when the adapter hands the answer back with `Gateway.answer`. Packets waiting on an
answer stay queued; each queued packet gets exactly one `Accept` or `Drop`, always.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import IntEnum
from typing import NamedTuple

from alg.core.grammar import Kind
from alg.core.reports import Report
from alg.core.seqadj import SeqAdjRecord

FlowKey = tuple[bytes, int, bytes, int]  # (src, sport, dst, dport) as seen at the queue
Handle = Hashable  # the adapter's token for a queued packet


class Dir(IntEnum):
    """Conntrack's direction names: ORIGINAL is client to server."""

    ORIGINAL = 0
    REPLY = 1


class DataExpectation(NamedTuple):
    """A data connection the router must let in and NAT to the inside host.

    It arrives from `peer` (any source port) at `outside`:`outside_port` and is sent on to
    `inside`:`inside_port`. `nat_dir` is conntrack's CTA_EXPECT_NAT_DIR: REPLY for a PORT
    sent by the client, ORIGINAL for a 227 sent by the server.
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


# ---- commands (core -> adapter) --------------------------------------------------------------


class Accept(NamedTuple):
    """Let the queued packet go: as `data` when given, else unchanged."""

    handle: Handle
    data: bytes | None = None


class Drop(NamedTuple):
    """Drop the queued packet (its bytes travel in another packet, or it is a stale copy)."""

    handle: Handle


class Lookup(NamedTuple):
    """Find the conntrack entry the flow `key` belongs to; answer `Found` or `NotFound`.
    `from_server`: the packet came from the control port, so `key` turned round runs
    client to server (which tells the adapter which way to ask first). The adapter also
    sets the entry's watch bit, before the verdicts that follow: from then on the kernel
    queues every payload segment of the connection (alg/kernel/rules_skip.py)."""

    key: FlowKey
    from_server: bool = False


class Reserve(NamedTuple):
    """Create the expectation, with the proposed outside port first unless `fixed`, else
    free ones of the adapter's range; answer `Reserved` with the port (None: none)."""

    proposal: DataExpectation
    fixed: bool = False


class Withdraw(NamedTuple):
    """Delete the expectation unless the kernel already let it go or a newer one replaced it."""

    expectation: DataExpectation


class WriteSeqAdj(NamedTuple):
    """Store the seqadj record of one direction of the connection whose original tuple is
    `original`, before the verdict that follows it: the kernel then shifts every later packet."""

    original: FlowKey
    direction: Dir
    record: SeqAdjRecord


Command = Accept | Drop | Lookup | Reserve | Withdraw | WriteSeqAdj | Report


# ---- answers (adapter -> core) ---------------------------------------------------------------


class Found(NamedTuple):
    """The conntrack entry of `key`: its tuples (the NAT mapping), seqadj records, and
    whether it has the helper anchor (without it the kernel keeps no seqadj record and
    accepts no expectation, so the gateway must not change the connection)."""

    key: FlowKey
    original: FlowKey
    reply: FlowKey
    seqadj_original: SeqAdjRecord | None = None
    seqadj_reply: SeqAdjRecord | None = None
    anchored: bool = True
    conn_id: int = 0  # conntrack's CTA_ID: tells a connection from a later one on its tuple
    # Conntrack saw both FINs or a RST: a payload segment there is a late copy or junk that
    # hit the tuple, and starting a session for it would only hold it until conntrack's end.
    closed: bool = False
    # The connection carried the watch bit before this look-up (which sets it): a daemon
    # met it before (this one, an earlier one, or the active router's), so every payload
    # segment since has been queued. False: never met, and only whole login lines passed
    # unqueued (the kernel's skip rule, alg/kernel/rules_skip.py).
    watched: bool = True
    # Unwatched, and the kernel's passive rules let a PASV/EPSV/LPSV pass that no transfer
    # has used yet (the passive bit): a passive data port is in effect.
    passive: bool = False


class NotFound(NamedTuple):
    """Conntrack has no entry for `key`."""

    key: FlowKey


class Reserved(NamedTuple):
    """The outside port the expectation of `session` was created with, or None."""

    session: int
    port: int | None


Answer = Found | NotFound | Reserved
