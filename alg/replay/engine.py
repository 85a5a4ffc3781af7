"""Playing the gateway between the two sides of every FTP control connection in a capture.

A capture was recorded without a gateway, at one point of the path. To show what the
gateway does, the replay imagines one party behind a NAT whose outside address is given,
and writes the capture as it would look on the outside wire:

- `--client-nat A`: the client is inside. Its packets go through the gateway (rewritten,
  seq-shifted) and the NAT (source becomes A). The server's packets are what the server would
  send in that world: addressed to A, acknowledging the rewritten stream.
- `--server-nat A`: the server is inside, reached through a port forward on A. The mirror
  image: the server's packets go through gateway and NAT, the client's are synthesized.

The synthesized packets are then fed to the gateway too, as they would reach it, and what
comes out must be exactly the captured packet again: every ack mapped back. The report
counts that round trip, so a replay checks the seq/ack arithmetic on real traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from alg.core import Config, CoreError, Drop, Event, Expect, Gateway, Release, Unexpect, Verdict
from alg.core.events import Action, Expectation, FlowKey
from alg.core.packet import Segment, parse, rebuild
from alg.core.text import show_addr
from alg.replay.capture import Frame


def show_endpoint(raw: bytes, port: int) -> str:
    return f"[{show_addr(raw)}]:{port}" if len(raw) == 16 else f"{show_addr(raw)}:{port}"


@dataclass(slots=True)
class Conn:
    """One control connection: its addresses inside the capture and at the gateway."""

    client: bytes
    cport: int
    server: bytes
    sport: int
    client_out: bytes  # the client as the server sees it
    server_out: bytes  # the server as the client sees it

    @property
    def orig_hook(self) -> FlowKey:
        return (self.client, self.cport, self.server_out, self.sport)

    @property
    def reply_hook(self) -> FlowKey:
        return (self.server, self.sport, self.client_out, self.cport)


@dataclass
class Report:
    """What the replay saw, per session and in total; plain data for text and JSON."""

    capture: str
    mode: dict[str, list[str]]
    frames: int = 0
    control_packets: int = 0
    changed: int = 0
    held: int = 0
    dropped: int = 0
    other: int = 0
    not_inspected: dict[str, int] = field(default_factory=dict)  # packets not TCP/IP, by reason
    roundtrip_checked: int = 0
    roundtrip_mismatched: int = 0
    sessions: dict[int, dict[str, object]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


def _readdress(seg: Segment, src: bytes, dst: bytes) -> Segment:
    if src == seg.src and dst == seg.dst:
        return seg
    data = bytearray(seg.data)
    lo = 12 if seg.version == 4 else 8
    n = len(src)
    data[lo : lo + n] = src
    data[lo + n : lo + 2 * n] = dst
    return parse(bytes(data))


@dataclass(slots=True)
class _Held:
    frame: Frame
    from_client: bool
    synthesized: bool  # sent by the party outside the NAT: checked, not written again
    conn: Conn
    captured: Segment
    hook: bytes  # the packet as it reached the gateway


class Replay:
    """Feeds frames through a Gateway as a NAT router's daemon would, and reports."""

    def __init__(
        self,
        capture: str,
        config: Config,
        client_nat: dict[int, bytes],
        server_nat: dict[int, bytes],
    ) -> None:
        self.config = config
        self.client_nat = client_nat
        self.server_nat = server_nat
        self.gw = Gateway(config, mapper=self._map)
        self.conns: dict[FlowKey, Conn] = {}  # by both hook keys
        self.report = Report(
            capture,
            {
                "client_nat": [show_addr(a) for a in client_nat.values()],
                "server_nat": [show_addr(a) for a in server_nat.values()],
            },
        )
        self._held: dict[int, _Held] = {}
        self._deferred: list[tuple[Frame, bytes]] = []
        self._frame = 0

    def _map(self, key: FlowKey) -> tuple[FlowKey, FlowKey] | None:
        conn = self.conns.get(key)
        return (conn.orig_hook, conn.reply_hook) if conn is not None else None

    def _conn(self, seg: Segment, from_client: bool) -> Conn:
        if from_client:
            c, cp, s, sp = seg.src, seg.sport, seg.dst, seg.dport
        else:
            c, cp, s, sp = seg.dst, seg.dport, seg.src, seg.sport
        key = (c, cp, s, sp)
        conn = self.conns.get(key)
        if conn is None:
            fam = seg.version
            conn = Conn(c, cp, s, sp, self.client_nat.get(fam, c), self.server_nat.get(fam, s))
            self.conns[key] = conn
            self.conns[conn.orig_hook] = conn
            self.conns[conn.reply_hook] = conn
        return conn

    def run(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, bytes | None]]:
        """Yield each frame as it leaves, with its new IP packet (None: not IP)."""
        ports = self.config.control_ports
        last = 0.0
        for frame in frames:
            self.report.frames += 1
            self._frame = frame.index
            last = frame.time
            yield from self._actions(self.gw.tick(frame.time), frame.time)
            if frame.ip is None:
                yield frame, None
                continue
            try:
                seg = parse(frame.ip)
            except CoreError as exc:
                self.report.other += 1
                reason = str(exc)
                self.report.not_inspected[reason] = self.report.not_inspected.get(reason, 0) + 1
                yield frame, frame.ip
                continue
            if seg.dport in ports or seg.sport in ports:
                yield from self._control(frame, seg, seg.dport in ports)
            else:
                self.report.other += 1
                yield frame, frame.ip
        yield from self._actions(self.gw.tick(last + 3600.0), last)
        yield from self._actions(self.gw.close(), last)
        self.report.counters = dict(sorted(self.gw.counters.items()))

    def _control(
        self, frame: Frame, seg: Segment, from_client: bool
    ) -> Iterator[tuple[Frame, bytes | None]]:
        self.report.control_packets += 1
        conn = self._conn(seg, from_client)
        # Who is outside the NAT sends what it would send in the NATed world: to the outside
        # address, acknowledging the rewritten stream. That is also what the output shows.
        synthesized = bool(self.server_nat) if from_client else bool(self.client_nat)
        hook = self._at_hook(seg, conn, from_client)
        outcome = self.gw.packet(frame.index, hook.data, frame.time)
        if synthesized:
            # While the gateway holds packets of the other side, the outside party cannot have
            # received them: what it sent meanwhile is written after their release.
            if self._held:
                self._deferred.append((frame, _finish(hook)))
            else:
                yield frame, _finish(hook)
        yield from self._actions(outcome.actions, frame.time)
        if outcome.verdict is Verdict.HOLD:
            self.report.held += 1
            self._held[frame.index] = _Held(frame, from_client, synthesized, conn, seg, hook.data)
        elif outcome.verdict is Verdict.DROP:
            self.report.dropped += 1
        else:
            held = _Held(frame, from_client, synthesized, conn, seg, hook.data)
            yield from self._emit(held, outcome.data)

    def _emit(self, held: _Held, data: bytes | None) -> Iterator[tuple[Frame, bytes | None]]:
        """A packet leaves the gateway: changed (`data`) or as it came (None)."""
        if data is not None:
            self.report.changed += 1
        out = data if data is not None else held.hook
        if held.synthesized:
            self._check(held.captured, out, held.conn)
        else:
            yield held.frame, self._leave(out, held.conn, held.from_client)

    def _at_hook(self, seg: Segment, conn: Conn, from_client: bool) -> Segment:
        """The captured packet as it reaches the gateway in the imagined world."""
        if from_client:
            moved = _readdress(seg, conn.client, conn.server_out)
        else:
            moved = _readdress(seg, conn.server, conn.client_out)
        half = self.gw.flows.get(conn.orig_hook)
        ack_adj = None if half is None else (half.peer.adj if from_client else half.adj)
        if ack_adj is None or ack_adj.identity:
            return moved
        data = rebuild(
            moved,
            moved.seq,
            ack_adj.to_out(moved.ack),
            sack=lambda a, b: (ack_adj.to_out(a), ack_adj.to_out(b)),
            full_checksum=True,
        )
        return parse(data)

    def _leave(self, data: bytes, conn: Conn, from_client: bool) -> bytes:
        """After the gateway, the kernel's NAT: the inside party's address becomes outside."""
        seg = parse(data)
        if from_client:
            seg = _readdress(seg, conn.client_out, conn.server)
        else:
            seg = _readdress(seg, conn.server_out, conn.client)
        return _finish(seg)

    def _check(self, captured: Segment, out: bytes, conn: Conn) -> None:
        """The gateway must give the outside party's packet back exactly as captured."""
        got = parse(out)
        self.report.roundtrip_checked += 1
        if (got.seq, got.ack, got.payload, got.options) != (
            captured.seq,
            captured.ack,
            captured.payload,
            captured.options,
        ):
            self.report.roundtrip_mismatched += 1
            self._note(
                Event(
                    "roundtrip-mismatch",
                    0,
                    f"frame {self._frame}: ack {captured.ack} came back as {got.ack}",
                ),
                conn,
            )

    def _actions(
        self, actions: Iterable[Action], now: float
    ) -> Iterator[tuple[Frame, bytes | None]]:
        for action in actions:
            if isinstance(action, Release):
                yield from self._emit(self._held.pop(action.handle), action.data)  # type: ignore[call-overload]
                yield from self._flush(now)
            elif isinstance(action, Drop):
                self._held.pop(action.handle, None)  # type: ignore[call-overload]
                self.report.dropped += 1
                yield from self._flush(now)
            elif isinstance(action, Expect | Unexpect):
                self._expectation(action)
            else:
                self._note(action, None)

    def _flush(self, now: float) -> Iterator[tuple[Frame, bytes | None]]:
        if self._held or not self._deferred:
            return
        for frame, data in self._deferred:
            yield replace(frame, time=max(frame.time, now)), data
        self._deferred.clear()

    def _session(self, sid: int, conn: Conn | None) -> dict[str, object]:
        rec = self.report.sessions.get(sid)
        if rec is None:
            rec = {"id": sid, "events": []}
            session = self.gw.sessions.get(sid)
            if session is not None:
                c, cp, s, sp = session.key
                rec["client"] = show_endpoint(c, cp)
                rec["server"] = show_endpoint(s, sp)
            elif conn is not None:
                rec["client"] = show_endpoint(conn.client, conn.cport)
                rec["server"] = show_endpoint(conn.server, conn.sport)
            self.report.sessions[sid] = rec
        return rec

    def _note(self, event: Event, conn: Conn | None) -> None:
        if event.kind in ("not-inspected", "session-end") and not event.session:
            return
        entry: dict[str, object] = {
            "frame": self._frame,
            "kind": event.kind,
            "message": event.message,
        }
        if event.reason:
            entry["reason"] = event.reason
        if event.before:
            entry["before"] = event.before
        if event.after:
            entry["after"] = event.after
        events = self._session(event.session, conn)["events"]
        assert isinstance(events, list)
        events.append(entry)

    def _expectation(self, action: Expect | Unexpect) -> None:
        exp: Expectation = action.expectation
        text = (
            f"{show_addr(exp.peer)}:* -> {show_endpoint(exp.outside, exp.outside_port)} "
            f"=> {show_endpoint(exp.inside, exp.inside_port)} (nat_dir {exp.nat_dir.name}, "
            f"{exp.timeout:g} s)"
        )
        kind = "expect" if isinstance(action, Expect) else "unexpect"
        self._note(Event(kind, exp.session, text), None)


def _finish(seg: Segment) -> bytes:
    """Valid checksums whatever the input carried (offloaded captures)."""
    return rebuild(seg, seg.seq, seg.ack, full_checksum=True)
