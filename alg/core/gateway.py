"""The gateway: packets in, verdicts and actions out, for every control connection at once.

`packet()` is the per-packet path, kept short: parse the headers, find the direction by its
flow key, let the session decide. `tick()` carries the clock: hold deadlines, expectation
and idle expiry. Nothing here reads a clock, logs or touches the network.
"""

from __future__ import annotations

from alg.core.config import Config
from alg.core.context import Context, Mapper, PortChooser
from alg.core.errors import CoreError, NotControlTraffic, PacketError
from alg.core.events import ACCEPT, Action, Event, FlowKey, Outcome
from alg.core.packet import ACK, SYN, Segment, parse
from alg.core.session import Half, Session

_SWEEP_EVERY = 1.0  # seconds between idle/expiry sweeps over all sessions


class SessionCap(NotControlTraffic):
    """A new control connection beyond `max_sessions`."""


def reverse(key: FlowKey) -> FlowKey:
    return (key[2], key[3], key[0], key[1])


def inside_view(orig: FlowKey, reply: FlowKey) -> FlowKey:
    """The client's packets after DNAT and before SNAT: source as sent, destination as the
    server really is (mangle POSTROUTING, where the ORIGINAL direction is queued)."""
    return (orig[0], orig[1], reply[0], reply[1])


class Gateway:
    """Tracks FTP control connections and rewrites what crosses them."""

    def __init__(
        self,
        config: Config | None = None,
        choose_port: PortChooser | None = None,
        mapper: Mapper | None = None,
    ) -> None:
        self.config = config or Config()
        self.ctx = Context(self.config, choose_port, mapper)
        self._ports = self.config.control_ports
        self.flows: dict[FlowKey, Half] = {}
        self.sessions: dict[int, Session] = {}
        self._holding: set[Half] = set()
        self._next_sweep = 0.0

    @property
    def counters(self) -> dict[str, int]:
        return self.ctx.counters

    # ---- packets -------------------------------------------------------------------------

    def packet(self, handle: object, data: bytes, now: float) -> Outcome:
        """Decide one packet. Never raises for any input: bad packets pass unchanged."""
        try:
            seg = parse(data)
        except NotControlTraffic as exc:
            self.ctx.count("not-inspected")
            return Outcome(ACCEPT.verdict, None, (Event("not-inspected", 0, str(exc)),))
        except PacketError as exc:
            self.ctx.count("malformed-packet")
            return Outcome(ACCEPT.verdict, None, (Event("malformed-packet", 0, str(exc)),))
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        half = self.flows.get(key)
        if half is None or (seg.flags & (SYN | ACK) == SYN and half.session.closing_at):
            try:
                half = self._new_flow(seg, key, now)
            except SessionCap as exc:
                event = Event("refusal", 0, str(exc), "session-cap")
                self.ctx.count("refusal")
                self.ctx.count("refusal.session-cap")
                return Outcome(ACCEPT.verdict, None, (event,))
            except CoreError as exc:
                self.ctx.count("not-inspected")
                return Outcome(ACCEPT.verdict, None, (Event("not-inspected", 0, str(exc)),))
            if half is None:
                return ACCEPT
        session = half.session
        outcome = session.segment(half, seg, handle, now)
        if half.held is not None and half not in self._holding:
            self._holding.add(half)
        return outcome

    def _new_flow(self, seg: Segment, key: FlowKey, now: float) -> Half | None:
        ports, mapper = self._ports, self.ctx.mapper
        if seg.dport in ports:
            old = self.flows.get(key)
            if old is not None:  # the same ports reused by a new connection
                self._remove(old.session)
            if len(self.sessions) >= self.config.max_sessions:
                if seg.flags & (SYN | ACK) == SYN:  # reported once per connection attempt
                    raise SessionCap(
                        f"{len(self.sessions)} sessions tracked (max_sessions): "
                        "this connection passes unwatched"
                    )
                raise NotControlTraffic("untracked control connection (session cap)")
            # A SYN's conntrack entry is not confirmed yet: look it up from later packets.
            found = mapper(key) if mapper is not None and not seg.flags & SYN else None
            session = Session(self.ctx, key, seg.version, now, greeted=not seg.flags & SYN)
            self.sessions[session.id] = session
            self.flows[key] = session.orig
            if found is not None:
                self._index(session, *found)
            self.ctx.count("session-new")
            return session.orig
        if seg.sport in ports:
            found = mapper(key) if mapper is not None else None
            orig, reply = found if found is not None else (reverse(key), key)
            half = self.flows.get(orig) or self.flows.get(inside_view(orig, reply))
            if half is None:
                return None  # a reply to nothing we track (the client side was not seen)
            self._index(half.session, orig, reply)
            return half.session.reply
        return None

    def bind(self, orig_key: FlowKey, reply_key: FlowKey) -> None:
        """Tell the core a connection's tuples as conntrack has them (its NAT mapping)."""
        half = self.flows.get(orig_key) or self.flows.get(inside_view(orig_key, reply_key))
        if half is not None:
            self._index(half.session, orig_key, reply_key)

    def _index(self, session: Session, orig: FlowKey, reply: FlowKey) -> None:
        """Find the session by every view of it: the original tuple, the reply tuple, and
        the client's packets after DNAT (where the ORIGINAL direction may be queued)."""
        session.key = orig
        if session.reply_key is not None and session.reply_key != reply:
            self.flows.pop(session.reply_key, None)
        session.reply_key = reply
        self.flows[reply] = session.reply
        self.flows.setdefault(orig, session.orig)

    # ---- time ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `tick` next has work to do (a hold to end), or None."""
        if not self._holding:
            return None
        return min(h.hold_deadline for h in self._holding)

    def next_tick(self) -> float:
        """The earliest time `tick` has anything to do: a hold to end or the periodic sweep.
        Calling it earlier is harmless, and skipping it until then keeps it off the per-packet
        path."""
        deadline = self.next_deadline()
        return self._next_sweep if deadline is None else min(deadline, self._next_sweep)

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        for half in [h for h in self._holding if h.held is None or h.hold_deadline <= now]:
            self._holding.discard(half)
            if half.held is not None:
                out += half.session.expire_hold(half, now)
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
            out += self._sweep(now)
        return out

    def _sweep(self, now: float) -> list[Action]:
        out: list[Action] = []
        config = self.config
        for session in list(self.sessions.values()):
            if session.closing_at is not None and now - session.closing_at >= config.linger:
                out += self._remove(session, "connection closed")
            elif now - session.last_seen >= config.idle_timeout:
                out += self._remove(session, f"idle for {config.idle_timeout:g} s")
            elif session.expect is not None and now >= session.expect_deadline:
                self.ctx.count("expectation-expired")
                session.expect = None
        return out

    # ---- lifetime ------------------------------------------------------------------------

    def forget(
        self, key: FlowKey, reason: str = "conntrack destroyed the connection"
    ) -> list[Action]:
        """Drop the session of a flow (either direction's key) and undo what it left."""
        half = self.flows.get(key)
        return self._remove(half.session, reason) if half is not None else []

    def close(self) -> list[Action]:
        """Shutting down: release every held packet and withdraw every expectation."""
        out: list[Action] = []
        for session in list(self.sessions.values()):
            out += self._remove(session, "gateway stopping")
        return out

    def _remove(self, session: Session, reason: str = "replaced") -> list[Action]:
        self.sessions.pop(session.id, None)
        keys = [session.key, session.reply_key]
        if session.reply_key is not None:
            keys.append(inside_view(session.key, session.reply_key))
        for key in keys:
            if key is not None and self.flows.get(key) in (session.orig, session.reply):
                del self.flows[key]
        self._holding.discard(session.orig)
        self._holding.discard(session.reply)
        return session.end(reason)
