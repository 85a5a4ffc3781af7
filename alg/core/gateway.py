"""The gateway: every control connection at once. Packets and answers in, commands out.

This is the core's public API; the daemon, the replay and the tests use nothing else:

    commands = gw.packet(handle, data, now)     # a queued packet
    commands = gw.answer(Found(...), now)       # the answer to the last command, if asked
    commands = gw.tick(now)                     # when `gw.next_tick()` has come
    commands = gw.forget(key, reason, now)      # conntrack destroyed the connection
    commands = gw.close(now)                    # shutting down

Every packet handed in gets exactly one `Accept` or `Drop`, in this call or a later one,
whatever happens to its session. A new connection is looked up in conntrack first (its NAT
mapping and its seqadj records, which a daemon that restarted or took over after a failover
needs); its packets wait for the answer.
"""

from __future__ import annotations

from collections import Counter

from alg.core.commands import (
    Accept,
    Answer,
    Command,
    FlowKey,
    Found,
    Handle,
    Lookup,
    NotFound,
    Reserved,
)
from alg.core.config import Config
from alg.core.context import Context
from alg.core.dialogue import Work
from alg.core.errors import NotControlTraffic, PacketError
from alg.core.flows import distant, session_keys, stranger
from alg.core.packet import ACK, SYN, Segment, parse
from alg.core.reports import EventKind, Reason, Report
from alg.core.session import Session
from alg.core.stream import Stream

_SWEEP_EVERY = 1.0  # seconds between idle/expiry sweeps over all sessions


class Gateway:
    """Tracks FTP control connections and rewrites what crosses them."""

    def __init__(self, config: Config | None = None, counters: Counter[str] | None = None) -> None:
        """`counters`: the tally to count into; an adapter passes its own, so that the core's
        events and the adapter's own counts are one table (what `ftp-alg status` shows)."""
        self.config = config or Config()
        self._ctx = Context(self.config, counters)
        # Flow keys to sessions, one table per direction (a value is the session alone, not
        # a (session, stream) pair: memory per idle session).
        self._to_server: dict[FlowKey, Session] = {}
        self._to_client: dict[FlowKey, Session] = {}
        self._sessions: dict[int, Session] = {}
        # Sessions that set a hold deadline since the last tick: `next_tick` and `tick` look
        # at these only, so their cost follows the holds, not the sessions tracked.
        self._timed: dict[int, Session] = {}
        self._lookups: dict[FlowKey, list[tuple[Segment, Handle]]] = {}
        # What running work has to say: sessions' work appends, `_drive` collects. One box
        # for all sessions, since only one piece of work runs at a time.
        self._box: list[Command] = []
        self._next_sweep = 0.0

    # ---- views for the adapters ----------------------------------------------------------

    @property
    def counters(self) -> Counter[str]:
        return self._ctx.counters

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def held_count(self) -> int:
        """Queued packets the core holds now (split lines, rewrites waiting for an ack,
        out-of-order segments, packets waiting for an answer)."""
        held = sum(len(h) for h in self._lookups.values())
        for s in self._sessions.values():
            held += len(s.parked or ()) + (s.busy is not None)
            held += sum(len(h.held) + len(h.ooo) for h in (s.orig, s.reply))
        return held

    def session_id(self, key: FlowKey) -> int | None:
        found = self._find(key)
        return None if found is None else found[0].id

    def conn_id_of(self, key: FlowKey) -> int | None:
        """The conntrack id of the connection the session of `key` was found for."""
        found = self._find(key)
        return None if found is None else found[0].conn_id

    def is_closing(self, key: FlowKey) -> bool:
        found = self._find(key)
        return found is not None and found[0].closing_at is not None

    def _find(self, key: FlowKey) -> tuple[Session, Stream] | None:
        session = self._to_server.get(key)
        if session is not None:
            return session, session.orig
        session = self._to_client.get(key)
        return None if session is None else (session, session.reply)

    def connections(self) -> list[tuple[FlowKey, int]]:
        """Every session's conntrack original tuple and conntrack id (0 if unknown)."""
        return [(s.tuples[0], s.conn_id) for s in self._sessions.values()]

    def session_tuples(self, session: int) -> tuple[FlowKey, FlowKey] | None:
        s = self._sessions.get(session)
        return None if s is None else s.tuples

    # ---- packets -------------------------------------------------------------------------

    def packet(self, handle: Handle, data: bytes, now: float) -> list[Command]:
        """Decide one queued packet. Never raises for any input: bad packets pass unchanged."""
        out: list[Command] = []
        try:
            seg = parse(data)
        except NotControlTraffic as exc:
            self._ctx.report(out, Report(EventKind.NOT_INSPECTED, 0, str(exc)))
            out.append(Accept(handle))
            return out
        except PacketError as exc:
            self._ctx.report(out, Report(EventKind.MALFORMED_PACKET, 0, str(exc)))
            out.append(Accept(handle))
            return out
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        found = self._find(key)
        if found is not None and seg.flags & (SYN | ACK) == SYN and found[0].closing_at:
            out += self._remove(found[0], "its ports were reused by a new connection", now)
            found = None
        if found is None or stranger(found[0], found[1], seg):
            return self._new_flow(seg, key, handle, out)
        session, stream = found
        self._feed(session, stream, seg, handle, now, out)
        return out

    def _new_flow(
        self, seg: Segment, key: FlowKey, handle: Handle, out: list[Command]
    ) -> list[Command]:
        ports = self.config.control_ports
        if seg.dport not in ports and seg.sport not in ports:
            self._ctx.count("not-control-port")
            out.append(Accept(handle))
            return out
        waiting = self._lookups.get(key)
        if waiting is not None:  # its look-up is under way
            if len(waiting) < self.config.max_held:
                waiting.append((seg, handle))
                return out
            out.append(Accept(handle))
            return out
        self._lookups[key] = [(seg, handle)]
        out.append(Lookup(key, seg.sport in ports and seg.dport not in ports))
        return out

    def _feed(
        self,
        session: Session,
        stream: Stream,
        seg: Segment,
        handle: Handle,
        now: float,
        out: list[Command],
    ) -> None:
        if session.suspended is not None:
            if session.parked is None:
                session.parked = []
            session.parked.append((stream, seg, handle))
            return
        work = session.segment(stream, seg, handle, now, self._box)
        self._drive(session, work, None, now, out)

    def _drive(
        self, session: Session, work: Work, value: int | None, now: float, out: list[Command]
    ) -> None:
        """Run `work` until it asks a question (appended last) or ends; then let the
        packets that arrived meanwhile in. Work writes into the gateway's box, which
        outlives the call that started it."""
        box = self._box
        while True:
            question = None
            try:
                question = work.send(value)
            except StopIteration:
                session.suspended = None
            else:
                session.suspended = work
            out += box
            box.clear()
            if session.orig.hold_deadline is not None or session.reply.hold_deadline is not None:
                self._timed[session.id] = session
            if question is not None:
                out.append(question)
                return
            if not session.parked:
                session.parked = None
                return
            stream, seg, handle = session.parked.pop(0)
            work, value = session.segment(stream, seg, handle, now, box), None

    # ---- answers -------------------------------------------------------------------------

    def answer(self, answer: Answer, now: float) -> list[Command]:
        out: list[Command] = []
        if isinstance(answer, Reserved):
            session = self._sessions.get(answer.session)
            if session is not None and session.suspended is not None:
                self._drive(session, session.suspended, answer.port, now, out)
            return out
        waiting = self._lookups.pop(answer.key, [])
        if isinstance(answer, NotFound) or not waiting:
            if waiting:
                self._ctx.report(
                    out,
                    Report(EventKind.UNTRACKED, 0, "conntrack does not track this connection"),
                )
            out.extend(Accept(handle) for _, handle in waiting)
            return out
        session = self._session_for(answer, waiting[0][0], now, out)
        if session is None:
            out.extend(Accept(handle) for _, handle in waiting)
            return out
        for seg, handle in waiting:
            key = (seg.src, seg.sport, seg.dst, seg.dport)
            found = self._find(key)
            if found is None:
                out.append(Accept(handle))  # a tuple conntrack does not give this connection
                continue
            self._feed(session, found[1], seg, handle, now, out)
        return out

    def _session_for(
        self, found: Found, first: Segment, now: float, out: list[Command]
    ) -> Session | None:
        orig, reply = found.original, found.reply
        known = self._find(orig) or self._find(reply)
        if known is not None:
            old = known[0]
            if not self._newer(found, old, first):
                self._index(old)
                return old
            out += self._remove(old, "its tuple now belongs to a newer connection", now)
        if found.closed:
            self._ctx.count("closed-connection")
            message = "conntrack has the connection closed: a late or stray segment, passed"
            self._ctx.report(out, Report(EventKind.UNTRACKED, 0, message))
            return None
        if not found.anchored:
            self._ctx.count("not-anchored")
            self._ctx.report(
                out,
                Report(
                    EventKind.UNTRACKED,
                    0,
                    "the connection has no helper anchor (it began before the rules were "
                    "applied?): passed untouched",
                ),
            )
            return None
        if len(self._sessions) >= self.config.max_sessions:
            self._ctx.report(
                out,
                Report(
                    EventKind.REFUSAL,
                    0,
                    f"{len(self._sessions)} sessions tracked (max_sessions): "
                    "this connection passes unwatched",
                    Reason.SESSION_CAP,
                ),
            )
            return None
        # Only payload is queued: a session seen from its start shows the server's greeting
        # first. A connection never watched before had at most its login lines pass
        # unqueued (the kernel's skip rule), and its passive exchanges if it has no DNAT
        # (the passive rules; the passive bit says a passive data port is in effect). A
        # watched one was joined mid-stream (a restart, a failover).
        fresh = bool(first.flags & SYN) or first.payload.startswith(b"220")
        records = (found.seqadj_original, found.seqadj_reply)
        from_login = not found.watched and not found.passive
        session = Session(self._ctx, (orig, reply), first.version, now, records, fresh, from_login)
        session.conn_id = found.conn_id
        self._sessions[session.id] = session
        self._index(session)
        self._ctx.report(out, Report(EventKind.SESSION_NEW, session.id, "watching"))
        if any(r is not None and not r.identity for r in records):
            self._ctx.report(
                out,
                Report(
                    EventKind.SEQADJ_RESUMED,
                    session.id,
                    f"met mid-stream with the kernel's offsets ORIGINAL {records[0]}, "
                    f"REPLY {records[1]}",
                ),
            )
        return session

    def _newer(self, found: Found, old: Session, first: Segment) -> bool:
        """Whether `found`, looked up for `first`, is a newer connection than `old`'s on the
        same tuple: conntrack's ids differ, or `first` lies far from `old`'s streams."""
        if found.conn_id and old.conn_id and found.conn_id != old.conn_id:
            return True
        mine = self._find((first.src, first.sport, first.dst, first.dport))
        return mine is not None and mine[0] is old and distant(old, mine[1], first)

    def _index(self, session: Session) -> None:
        for key, stream in session_keys(session):
            table = self._to_server if stream is session.orig else self._to_client
            table.setdefault(key, session)

    # ---- time ----------------------------------------------------------------------------

    def next_tick(self) -> float:
        """The earliest time `tick` has anything to do: a hold to end or the periodic sweep.
        Calling it earlier is harmless; skipping it until then keeps it off the per-packet
        path. It looks only at sessions that held something since the last tick."""
        deadlines = [
            h.hold_deadline
            for s in self._timed.values()
            for h in (s.orig, s.reply)
            if h.hold_deadline is not None
        ]
        return min([self._next_sweep, *deadlines])

    def tick(self, now: float) -> list[Command]:
        out: list[Command] = []
        for session in list(self._timed.values()):
            if session.suspended is None and any(
                h.hold_deadline is not None and h.hold_deadline <= now
                for h in (session.orig, session.reply)
            ):
                self._drive(session, session.expire(now, self._box), None, now, out)
            if session.orig.hold_deadline is None and session.reply.hold_deadline is None:
                self._timed.pop(session.id, None)
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            out += self._sweep(now)
        return out

    def _sweep(self, now: float) -> list[Command]:
        out: list[Command] = []
        config = self.config
        for session in list(self._sessions.values()):
            if session.closing_at is not None and now - session.closing_at >= config.linger:
                out += self._remove(session, "connection closed", now)
            elif now - session.last_seen >= config.idle_timeout:
                out += self._remove(session, f"idle for {config.idle_timeout:g} s", now)
            elif session.expect is not None and now >= session.expect_deadline:
                self._ctx.count("expectation-expired")
                session.expect = None
        return out

    # ---- lifetime ------------------------------------------------------------------------

    def forget(
        self,
        key: FlowKey,
        reason: str = "conntrack destroyed the connection",
        now: float = 0.0,
        conn_id: int = 0,
    ) -> list[Command]:
        """Drop the session of a flow (any of its keys) and undo what it left. With the
        destroyed connection's conntrack `conn_id`, a session of a newer connection on the
        same tuple (a client reusing its port at once) is kept."""
        found = self._find(key)
        if found is None:
            return []
        session = found[0]
        if conn_id and session.conn_id and conn_id != session.conn_id:
            self._ctx.count("destroy-event-older-connection")
            return []
        return self._remove(session, reason, now)

    def close(self, now: float = 0.0) -> list[Command]:
        """Shutting down: every queued packet gets its verdict, every expectation goes."""
        out: list[Command] = []
        for waiting in self._lookups.values():
            out.extend(Accept(handle) for _, handle in waiting)
        self._lookups.clear()
        for session in list(self._sessions.values()):
            out += self._remove(session, "gateway stopping", now)
        return out

    def _remove(self, session: Session, reason: str, now: float) -> list[Command]:
        self._sessions.pop(session.id, None)
        self._timed.pop(session.id, None)
        for key, stream in session_keys(session):
            table = self._to_server if stream is session.orig else self._to_client
            if table.get(key) is session:
                del table[key]
        return session.end(reason, now)
