"""Playing the gateway between the two sides of every FTP control connection in a capture.

A capture was recorded without a gateway, at one point of the path. To show what the
gateway does, the replay imagines one party behind a NAT whose outside address is given,
and writes the capture as it would look on the outside wire:

- `--client-nat A`: the client is inside. Its packets go through the gateway (rewritten) and
  the kernel (seq/ack shifted by the seqadj record the gateway wrote, source NATed to A).
  The server's packets are what the server would send in that world: addressed to A,
  acknowledging the rewritten stream.
- `--server-nat A`: the server is inside, reached through a port forward on A. The mirror
  image: the server's packets go through gateway, kernel and NAT, the client's are
  synthesized.

The router is modelled as the rules build it: only segments that carry payload reach the
queue (in mangle POSTROUTING, with inside addresses), the kernel applies each direction's
seqadj record to every packet after the queue, and nothing else shifts numbers. The
synthesized packets go the same way, and what comes out must be exactly the captured packet
again: every ack mapped back. The report counts that round trip, so a replay checks the
seq/ack arithmetic on real traffic, with the kernel's record as the only offset state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from alg.core import (
    Accept,
    Command,
    Config,
    CoreError,
    DataExpectation,
    Dir,
    Drop,
    FlowKey,
    Found,
    Gateway,
    Lookup,
    NotFound,
    Reserve,
    Reserved,
    SeqAdjRecord,
    Withdraw,
    WriteSeqAdj,
)
from alg.core import Report as CoreReport
from alg.core.packet import ACK, FIN, RST, Segment, parse, rebuild
from alg.core.text import show_addr
from alg.replay.capture import Frame

_IDENTITY = SeqAdjRecord()
_ENDS_KEPT = 4096  # segment ends remembered per direction for synthesizing acks


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
    # The kernel's seqadj record of each direction, as the gateway wrote it.
    records: list[SeqAdjRecord] = field(default_factory=lambda: [_IDENTITY, _IDENTITY])
    # Per direction: the end of a captured segment -> where it ended on the far side.
    ends: tuple[dict[int, int], dict[int, int]] = field(default_factory=lambda: ({}, {}))
    fins: list[bool] = field(default_factory=lambda: [False, False])

    @property
    def original(self) -> FlowKey:
        return (self.client, self.cport, self.server_out, self.sport)

    @property
    def reply(self) -> FlowKey:
        return (self.server, self.sport, self.client_out, self.cport)

    @property
    def queued(self) -> tuple[FlowKey, FlowKey]:
        """Both directions as mangle POSTROUTING queues them: after DNAT, before SNAT."""
        return (
            (self.client, self.cport, self.server, self.sport),
            (self.server, self.sport, self.client, self.cport),
        )

    def far_ack(self, direction: Dir, ack: int) -> int:
        """What the far side acknowledges of `direction`'s stream where the capture shows
        `ack`: the end of the segment it received, else the kernel record's mapping."""
        got = self.ends[direction].get(ack)
        return got if got is not None else self.records[direction].seq(ack)


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
    hook: bytes  # the packet as it reached the queue


class Replay:
    """Feeds frames through a Gateway and a model of the kernel, as on a NAT router."""

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
        self.gw = Gateway(config)
        self.conns: dict[FlowKey, Conn] = {}  # by conntrack's tuples and the queued views
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
            for k in (conn.original, conn.reply, *conn.queued):
                self.conns[k] = conn
        return conn

    def run(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, bytes | None]]:
        """Yield each frame as it leaves, with its new IP packet (None: not IP)."""
        ports = self.config.control_ports
        last = 0.0
        for frame in frames:
            self.report.frames += 1
            self._frame = frame.index
            last = frame.time
            yield from self._carry(self.gw.tick(frame.time), frame.time)
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
        yield from self._carry(self.gw.tick(last + 3600.0), last)
        yield from self._carry(self.gw.close(last), last)
        self.report.counters = dict(sorted(self.gw.counters.items()))

    def _control(
        self, frame: Frame, seg: Segment, from_client: bool
    ) -> Iterator[tuple[Frame, bytes | None]]:
        self.report.control_packets += 1
        conn = self._conn(seg, from_client)
        # Who is outside the NAT sends what it would send in the NATed world: acknowledging
        # the rewritten stream. That is also what the output shows.
        synthesized = bool(self.server_nat) if from_client else bool(self.client_nat)
        hook = self._synthesize(seg, conn, from_client) if synthesized else seg
        held = _Held(frame, from_client, synthesized, conn, seg, hook.data)
        if synthesized:
            # While the gateway holds packets of the other side, the outside party cannot have
            # received them: what it sent meanwhile is written after their release.
            wire = _finish(self._outside(hook, conn, from_client))
            if self._held:
                self._deferred.append((frame, wire))
            else:
                yield frame, wire
        if hook.payload:  # the rules queue only segments that carry payload
            self._held[frame.index] = held
            yield from self._carry(self.gw.packet(frame.index, hook.data, frame.time), frame.time)
            if frame.index in self._held:
                self.report.held += 1
        else:
            yield from self._emit(held, None)
        if seg.flags & (FIN | RST):
            conn.fins[not from_client] = True
            if seg.flags & RST or all(conn.fins):  # conntrack's destroy event, as the daemon
                conn.fins = [False, False]  # reads it (a new connection may reuse the tuple)
                yield from self._carry(
                    self.gw.forget(conn.original, "connection closed", frame.time), frame.time
                )

    def _synthesize(self, seg: Segment, conn: Conn, from_client: bool) -> Segment:
        """The outside party's packet in the NATed world: its acks and SACK edges name the
        bytes it received of the rewritten stream."""
        other = Dir.REPLY if from_client else Dir.ORIGINAL
        if conn.records[other].identity and not conn.ends[other]:
            return seg
        ack = conn.far_ack(other, seg.ack) if seg.flags & ACK else seg.ack
        data = rebuild(
            seg,
            seg.seq,
            ack,
            sack=lambda a, b: (conn.far_ack(other, a), conn.far_ack(other, b)),
            full_checksum=True,
        )
        return parse(data)

    def _emit(self, held: _Held, data: bytes | None) -> Iterator[tuple[Frame, bytes | None]]:
        """A packet leaves the queue (changed: `data`) and the kernel shifts it."""
        if data is not None:
            self.report.changed += 1
        seg = parse(data if data is not None else held.hook)
        conn = held.conn
        this, other = (Dir.ORIGINAL, Dir.REPLY) if held.from_client else (Dir.REPLY, Dir.ORIGINAL)
        shifted = _kernel_shift(seg, conn.records[this], conn.records[other])
        if held.synthesized:
            self._check(held.captured, shifted, conn)
            return
        cap = held.captured
        ends = conn.ends[this]
        if len(ends) >= _ENDS_KEPT:
            ends.clear()
        ends[(cap.seq + len(cap.payload)) & 0xFFFFFFFF] = (
            shifted.seq + len(shifted.payload)
        ) & 0xFFFFFFFF
        yield held.frame, _finish(self._outside(shifted, conn, held.from_client))

    @staticmethod
    def _outside(seg: Segment, conn: Conn, from_client: bool) -> Segment:
        """The packet on the outside wire: the inside party's address NATed."""
        if from_client:
            return _readdress(seg, conn.client_out, conn.server_out)
        return _readdress(seg, conn.server_out, conn.client_out)

    def _check(self, captured: Segment, got: Segment, conn: Conn) -> None:
        """The gateway and the kernel must give the outside party's packet back as captured:
        the same ack, options and bytes, or (a split line the gateway coalesced) a segment
        that ends where the captured one ends and carries its bytes at its tail."""
        self.report.roundtrip_checked += 1
        end = (got.seq + len(got.payload)) & 0xFFFFFFFF
        same = (got.seq, got.payload) == (captured.seq, captured.payload) or (
            end == (captured.seq + len(captured.payload)) & 0xFFFFFFFF
            and got.payload.endswith(captured.payload)
        )
        if not same or (got.ack, got.options) != (captured.ack, captured.options):
            self.report.roundtrip_mismatched += 1
            self._note(
                0,
                "roundtrip-mismatch",
                f"frame {self._frame}: seq/ack {captured.seq}/{captured.ack} came back as "
                f"{got.seq}/{got.ack}",
                conn,
            )

    def _carry(self, commands: list[Command], now: float) -> Iterator[tuple[Frame, bytes | None]]:
        """The daemon's part: verdicts, answers from the imagined kernel, records, notes."""
        todo = list(commands)
        while todo:
            cmd = todo.pop(0)
            if isinstance(cmd, Accept):
                yield from self._emit(self._held.pop(cmd.handle), cmd.data)  # type: ignore[call-overload]
                yield from self._flush(now)
            elif isinstance(cmd, Drop):
                self._held.pop(cmd.handle, None)  # type: ignore[call-overload]
                self.report.dropped += 1
                yield from self._flush(now)
            elif isinstance(cmd, Lookup):
                todo[:0] = self.gw.answer(self._lookup(cmd.key), now)
            elif isinstance(cmd, Reserve):
                exp = cmd.proposal
                self._expectation("expect", exp)
                todo[:0] = self.gw.answer(Reserved(exp.session, exp.outside_port), now)
            elif isinstance(cmd, WriteSeqAdj):
                self.conns[cmd.original].records[cmd.direction] = cmd.record
            elif isinstance(cmd, Withdraw):
                self._expectation("unexpect", cmd.expectation)
            else:
                self._report(cmd)

    def _lookup(self, key: FlowKey) -> Found | NotFound:
        conn = self.conns.get(key)
        if conn is None:
            return NotFound(key)
        return Found(key, conn.original, conn.reply, conn.records[0], conn.records[1])

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
            tuples = self.gw.session_tuples(sid)
            if tuples is not None:
                (c, cp, _, _), (s, sp, _, _) = tuples
                rec["client"] = show_endpoint(c, cp)
                rec["server"] = show_endpoint(s, sp)
            elif conn is not None:
                rec["client"] = show_endpoint(conn.client, conn.cport)
                rec["server"] = show_endpoint(conn.server, conn.sport)
            self.report.sessions[sid] = rec
        return rec

    def _report(self, report: CoreReport) -> None:
        if not report.session and report.kind in ("not-inspected", "session-end"):
            return
        entry: dict[str, object] = {"frame": self._frame, "kind": str(report.kind)}
        entry["message"] = report.message
        if report.reason:
            entry["reason"] = str(report.reason)
        if report.before:
            entry["before"] = report.before
        if report.after:
            entry["after"] = report.after
        self._events(report.session, None).append(entry)

    def _note(self, session: int, kind: str, message: str, conn: Conn | None) -> None:
        self._events(session, conn).append({"frame": self._frame, "kind": kind, "message": message})

    def _events(self, session: int, conn: Conn | None) -> list[dict[str, object]]:
        events = self._session(session, conn)["events"]
        assert isinstance(events, list)
        return events

    def _expectation(self, kind: str, exp: DataExpectation) -> None:
        text = (
            f"{show_addr(exp.peer)}:* -> {show_endpoint(exp.outside, exp.outside_port)} "
            f"=> {show_endpoint(exp.inside, exp.inside_port)} (nat_dir {exp.nat_dir.name}, "
            f"{exp.timeout:g} s)"
        )
        self._note(exp.session, kind, text, None)


def _kernel_shift(seg: Segment, this: SeqAdjRecord, other: SeqAdjRecord) -> Segment:
    """nf_ct_seq_adjust: seq by this direction's record, ack and SACK by the other's."""
    if this.identity and other.identity:
        return seg
    ack = other.ack(seg.ack) if seg.flags & ACK else seg.ack
    data = rebuild(seg, this.seq(seg.seq), ack, sack=lambda a, b: (other.ack(a), other.ack(b)))
    return parse(data)


def _finish(seg: Segment) -> bytes:
    """Valid checksums whatever the input carried (offloaded captures)."""
    return rebuild(seg, seg.seq, seg.ack, full_checksum=True)
