"""The kernel side of the core's questions: conntrack look-ups, expectations, seqadj records.

`ConntrackAdapter.lookup` answers which connection a queued packet belongs to (its tuples
carry the NAT mapping; its seqadj records the offsets an earlier daemon or the active router
wrote). `ConntrackAdapter.reserve` creates the expectation itself, so the port written into a
rewrite is one the kernel accepted: the proposed port first, then random ones when another
session holds it.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import socket
from collections import Counter
from collections.abc import Iterator

from alg.core import DataExpectation, Dir, FlowKey, Found, NotFound, SeqAdjRecord
from alg.kernel import messages as m
from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import Conntrack, CtnetlinkError, ExpectationExists, SeqAdj, Tuple
from alg.kernel.rules import ANCHOR_HELPER
from alg.kernel.rules_skip import passive_bits

log = logging.getLogger("ftp-alg")
_TCP = 6
_CLOSED = (m.TCP_CONNTRACK_LAST_ACK, m.TCP_CONNTRACK_TIME_WAIT, m.TCP_CONNTRACK_CLOSE)


def _text(raw: bytes) -> str:
    """conntrack's text form of a packed address (inet_ntop, as the kernel replies decode)."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _raw(text: str, family: int) -> bytes:
    return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)


def to_tuple(key: FlowKey) -> Tuple:
    src, sport, dst, dport = key
    return Tuple.known(4 if len(src) == 4 else 6, _TCP, _text(src), _text(dst), sport, dport)


def to_key(t: Tuple) -> FlowKey:
    return (_raw(t.src, t.family), t.sport, _raw(t.dst, t.family), t.dport)


def expected_tuple(exp: DataExpectation, port: int) -> Tuple:
    """The data connection as it reaches the router: peer (any port) -> outside:port."""
    return Tuple.known(exp.family, _TCP, _text(exp.peer), _text(exp.outside), 0, port)


def _record(adj: SeqAdj | None) -> SeqAdjRecord | None:
    if adj is None:
        return None
    return SeqAdjRecord(adj.correction_pos, adj.offset_before, adj.offset_after)


class ConntrackAdapter:
    """Conntrack look-ups, expectations and seqadj writes for the core, with counters."""

    def __init__(
        self,
        ct: Ctnetlink,
        tries: int,
        port_range: tuple[int, int],
        rng: random.Random | None = None,
        counters: Counter[str] | None = None,
        watch_mark: int = 0,
        passive_mark: int = 0,
    ) -> None:
        """`watch_mark`: the connmark bits that say a daemon watches the connection (the
        rules' skip rule lets login lines of unwatched ones pass unqueued): each look-up
        sets them. 0: none. `passive_mark`: the two bits the passive rules keep (a PASV is in
        effect when the lower alone is set), read, never written."""
        self.ct = ct
        self.watch_mark = watch_mark
        self.passive_mark = passive_mark
        self.tries = tries
        self.port_range = port_range
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter() if counters is None else counters
        # The expectation each session has in the kernel: session id -> expected tuple, and
        # back. A tuple belongs to the session that created it last: a session whose
        # expectation was used (or expired) in the kernel must not delete a newer session's
        # expectation on the same tuple when it ends.
        self.owned: dict[int, Tuple] = {}
        self.holder: dict[Tuple, int] = {}

    def lookup(self, key: FlowKey, from_server: bool = False) -> Found | NotFound:
        """The entry of a packet seen in mangle POSTROUTING: after DNAT, before SNAT, so its
        tuple is the original or reply tuple, or one of them turned round. Turned so that
        it runs client to server (`from_server`: the packet came from the control port), it
        is the original tuple behind masquerade: one request in the usual case, a second
        through a port forward."""
        seen = to_tuple(key)
        first, second = seen, seen.reversed()
        if from_server:
            first, second = second, first
        try:
            entry = self._get(first) or self._get(second)
        except CtnetlinkError as exc:
            self.counters["conntrack-lookup-error"] += 1
            log.warning("conntrack look-up of %s failed: %s", seen, exc)
            return NotFound(key)
        if entry is None:
            self.counters["conntrack-lookup-missing"] += 1
            return NotFound(key)
        return Found(
            key,
            to_key(entry.original),
            to_key(entry.reply),
            _record(entry.seqadj_original),
            _record(entry.seqadj_reply),
            anchored=entry.helper == ANCHOR_HELPER,
            conn_id=entry.id,
            closed=entry.tcp_state in _CLOSED,
            watched=not self.watch_mark or bool(entry.mark & self.watch_mark),
            passive=bool(self.passive_mark)
            and entry.mark & self.passive_mark == passive_bits(self.passive_mark)[0],
        )

    def _get(self, seen: Tuple) -> Conntrack | None:
        """The entry of `seen`; with a watch mark, its watch bits set in the same round
        trip (the entry shows the mark from before: whether a daemon had met it). From then
        on the rules queue every payload segment of the connection."""
        if not self.watch_mark:
            return self.ct.get_conntrack(seen)
        entry, err = self.ct.get_and_mark(seen, self.watch_mark, self.watch_mark)
        if entry is None:
            return None
        if err:
            self.counters["connmark-error"] += 1
            log.warning("setting the watch mark of %s failed: %s", seen, os.strerror(err))
        elif not entry.mark & self.watch_mark:
            self.counters["connmark-set"] += 1
        return entry

    def write_seqadj(self, original: FlowKey, direction: Dir, record: SeqAdjRecord) -> bool:
        """Store one direction's record before the rewritten segment's verdict."""
        adj = SeqAdj(record.correction_pos, record.offset_before, record.offset_after)
        try:
            self.ct.set_seqadj(to_tuple(original), int(direction), adj)
        except CtnetlinkError as exc:
            self.counters["seqadj-write-error"] += 1
            log.error("writing the seqadj record of %s failed: %s", to_tuple(original), exc)
            return False
        self.counters["seqadj-written"] += 1
        return True

    def reserve(self, exp: DataExpectation, fixed: bool = False) -> int | None:
        """Create the expectation: the proposed port, then (unless `fixed`) random ones."""
        master = to_tuple(exp.master)
        previous = self.owned.pop(exp.session, None)
        if previous is not None:  # newest wins; also frees the tuple if it is the same
            del self.holder[previous]
            self._delete(previous)
        for port in self._candidates(exp.outside_port, fixed):
            expected = expected_tuple(exp, port)
            try:
                self.ct.create_expectation(
                    master,
                    expected,
                    int(exp.nat_dir),
                    _text(exp.inside),
                    exp.inside_port,
                    max(1, round(exp.timeout)),
                )
            except ExpectationExists:
                self.counters["expectation-port-taken"] += 1
                continue
            except CtnetlinkError as exc:
                self.counters["expectation-error"] += 1
                if exc.errno == errno.EOPNOTSUPP:
                    log.error("session %d: %s", exp.session, exc)
                else:
                    log.warning(
                        "session %d: creating expectation %s failed: %s", exp.session, expected, exc
                    )
                return None
            stale = self.holder.get(expected)
            if stale is not None:  # its expectation is gone from the kernel (used, expired)
                del self.owned[stale]
            self.holder[expected] = exp.session
            self.owned[exp.session] = expected
            self.counters["expectation-created"] += 1
            return port
        tries = 1 if fixed else 1 + self.tries
        log.warning("session %d: no free outside port after %d tries", exp.session, tries)
        return None

    def _candidates(self, proposed: int, fixed: bool) -> Iterator[int]:
        """The proposed port, then (unless `fixed`) random ones, drawn only when needed."""
        yield proposed
        if not fixed:
            low, high = self.port_range
            for _ in range(self.tries):
                yield self.rng.randint(low, high)

    def withdraw(self, exp: DataExpectation) -> None:
        """The session no longer needs `exp`: remove it unless already replaced."""
        expected = expected_tuple(exp, exp.outside_port)
        if self.owned.get(exp.session) == expected:
            del self.owned[exp.session]
            del self.holder[expected]
            self._delete(expected)

    def _delete(self, expected: Tuple) -> None:
        try:
            if self.ct.delete_expectation(expected):
                self.counters["expectation-deleted"] += 1
        except CtnetlinkError as exc:
            self.counters["expectation-error"] += 1
            log.warning("deleting expectation %s failed: %s", expected, exc)

    def withdraw_all(self) -> None:
        for expected in list(self.owned.values()):
            self._delete(expected)
        self.owned.clear()
        self.holder.clear()
