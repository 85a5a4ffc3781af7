"""The gateway end to end on hand-built TCP conversations through a simulated router
(tests/tcpsim.py: the queue, the daemon and the kernel's seqadj)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg.core import (
    Accept,
    Command,
    Config,
    DataExpectation,
    Dir,
    Drop,
    EventKind,
    Found,
    Gateway,
    Kind,
    Lookup,
    NotFound,
    Report,
    Reserve,
    Reserved,
    Withdraw,
)
from alg.core.packet import ACK, FIN, parse
from tests.tcpsim import Link, Peer, build, ip, sack_option

C, C_OUT, S = ip("192.168.0.1"), ip("192.168.15.5"), ip("198.51.100.2")
PORT_LINE = b"PORT 192,168,0,1,4,1\r\n"
PORT_OUT = b"PORT 192,168,15,5,4,1\r\n"  # 1 byte longer


def client_nat(config: Config | None = None, cseq: int = 1000, sseq: int = 5000) -> Link:
    link = Link(Gateway(config or Config()), Peer(C, 40000, cseq, seen_as=C_OUT), Peer(S, 21, sseq))
    link.handshake()
    link.send(False, payload=b"220 ready\r\n")
    return link


def server_nat(config: Config | None = None) -> Link:
    inside, public, client = ip("10.0.0.5"), ip("203.0.113.9"), ip("198.51.100.7")
    link = Link(
        Gateway(config or Config()), Peer(client, 50000, 77), Peer(inside, 21, 9000, seen_as=public)
    )
    link.handshake()
    link.send(False, payload=b"220 ready\r\n")
    return link


def events(link: Link, kind: EventKind) -> list[Report]:
    return [e for e in link.events if isinstance(e, Report) and e.kind is kind]


def expects(link: Link) -> list[DataExpectation]:
    return link.expectations


def test_port_rewritten_with_expectation_and_acks_mapped_back() -> None:
    link = client_nat()
    link.send(True, payload=PORT_LINE)
    assert bytes(link.at_server.stream) == PORT_OUT
    (exp,) = expects(link)
    assert (exp.kind, exp.peer, exp.outside, exp.outside_port) == (Kind.PORT, S, C_OUT, 1025)
    assert (exp.inside, exp.inside_port, exp.nat_dir) == (C, 1025, Dir.REPLY)
    assert exp.master == (C, 40000, S, 21)
    (ev,) = events(link, EventKind.REWRITE)
    assert (ev.before, ev.after) == ("PORT 192,168,0,1,4,1", "PORT 192,168,15,5,4,1")
    # The kernel holds the offset: position of the rewritten segment, +1 after it.
    assert link.kernel[0].offset_before == 0 and link.kernel[0].offset_after == 1
    link.send(False, payload=b"200 PORT ok\r\n")  # acks 1 byte more than the client sent
    assert parse(link.to_client[-1]).ack == link.client.seq
    link.send(False, flags=ACK)  # a pure ACK never reaches the gateway: the kernel maps it
    assert parse(link.to_client[-1]).ack == link.client.seq
    assert link.seqadj_writes == 1


def test_split_at_every_byte_and_with_trailing_data() -> None:
    for trailer in (b"", b"LIST\r\n", b"NOOP\r\nPORT 192,168,0,1,4,2\r\n"):
        line = PORT_LINE + trailer
        for k in range(1, len(line)):
            link = client_nat()
            link.send(True, payload=line[:k])
            link.send(True, payload=line[k:])
            # A second rewrite in the second segment waits for the first one's ack.
            link.send(False, payload=b"200 ok\r\n")
            want = PORT_OUT + trailer.replace(b"192,168,0,1", b"192,168,15,5")
            assert bytes(link.at_server.stream) == want, (trailer, k)
            assert not link.queued
            link.send(False, flags=ACK)
            assert parse(link.to_client[-1]).ack == link.client.seq


def test_retransmission_rewritten_identically_and_counted_once() -> None:
    link = client_nat()
    start = link.client.seq
    link.send(True, payload=PORT_LINE)
    first = link.to_server[-1]
    for _ in range(3):
        link.send(True, payload=PORT_LINE, seq=start)
        assert link.to_server[-1] == first
    assert len(expects(link)) == 1
    assert link.kernel[0].offset_after == 1


def test_sack_blocks_of_the_other_direction_are_mapped_back() -> None:
    link = client_nat()
    base = link.client.seq
    link.send(True, payload=PORT_LINE)
    link.send(True, payload=b"NOOP\r\n")
    # The server says it holds the NOOP (server space: after the 23-byte rewritten PORT).
    opts = sack_option((base + 23, base + 29))
    link.send(False, payload=b"", ack=base, options=opts, flags=ACK)
    from scapy.layers.inet import IP, TCP

    assert dict(IP(link.to_client[-1])[TCP].options)["SAck"] == (base + 22, base + 28)


def test_a_second_rewrite_waits_for_the_first_to_be_acknowledged() -> None:
    link = client_nat()
    base = link.client.seq
    for i in range(3):
        link.send(True, payload=f"PORT 192,168,0,1,4,{i + 1}\r\n".encode())
    assert len(link.to_server) == 3 + 0 and len(link.queued) == 2  # only the first left
    link.send(False, flags=ACK)  # a pure ACK: the gateway cannot see it
    assert len(link.queued) == 2
    link.send(False, payload=b"200 ok\r\n")  # acks the first: the second may go
    assert len(link.queued) == 1
    assert parse(link.to_client[-1]).ack == base + 22
    link.send(False, payload=b"200 ok\r\n")
    link.send(False, payload=b"200 ok\r\n")
    assert not link.queued
    assert bytes(link.at_server.stream) == b"".join(
        f"PORT 192,168,15,5,4,{i + 1}\r\n".encode() for i in range(3)
    )
    link.send(False, flags=ACK)
    assert parse(link.to_client[-1]).ack == link.client.seq
    assert link.kernel[0].offset_after == 3 and link.seqadj_writes == 3


def test_a_waiting_rewrite_goes_at_the_hold_timeout() -> None:
    link = client_nat()
    link.send(True, payload=PORT_LINE)
    link.send(True, payload=PORT_LINE)
    assert len(link.queued) == 1
    link.tick(0.6)
    assert not link.queued and bytes(link.at_server.stream) == PORT_OUT * 2
    assert len(events(link, EventKind.HOLD_TIMEOUT)) == 1
    assert link.gw.counters["seqadj-replaced-unacknowledged"] == 1


def test_seq_wraparound() -> None:
    link = client_nat(cseq=0xFFFFFFF0, sseq=0xFFFFFFFA)
    link.send(True, payload=PORT_LINE + PORT_LINE)
    assert bytes(link.at_server.stream) == PORT_OUT * 2
    link.send(False, payload=b"200 ok\r\n200 ok\r\n")
    assert parse(link.to_client[-1]).ack == link.client.seq == (0xFFFFFFF0 + 44) & 0xFFFFFFFF


def test_227_only_as_the_answer_to_pasv() -> None:
    link = server_nat()
    link.send(False, payload=b"227 Entering Passive Mode (10,0,0,5,195,149).\r\n")
    assert [e.reason for e in events(link, EventKind.REFUSAL)] == ["unsolicited"]
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=b"227 Entering Passive Mode (10,0,0,5,195,149).\r\n")
    assert bytes(link.at_client.stream).endswith(b"(203,0,113,9,195,149).\r\n")
    (exp,) = expects(link)
    assert (exp.peer, exp.outside, exp.inside, exp.nat_dir) == (
        ip("198.51.100.7"),
        ip("203.0.113.9"),
        ip("10.0.0.5"),
        Dir.ORIGINAL,
    )
    link.send(True, payload=b"LIST\r\n")  # the client's ack maps back into the server's space
    assert parse(link.to_server[-1]).ack == link.server.seq


def test_multiline_227_and_pipelined_passive_commands() -> None:
    link = server_nat()
    link.send(True, payload=b"PASV\r\nEPSV\r\nLPSV\r\n")
    link.send(
        False,
        payload=b"227-Entering Passive Mode (10,0,0,5,4,1)\r\n227 ok\r\n"
        b"229 Entering Extended Passive Mode (|||6446|)\r\n"
        b"228 Entering Long Passive Mode (4,4,10,0,0,5,2,4,2)\r\n",
    )
    stream = bytes(link.at_client.stream)
    assert b"(203,0,113,9,4,1)" in stream and b"(|||6446|)" in stream
    assert b"(4,4,203,0,113,9,2,4,2)" in stream
    assert [e.kind for e in expects(link)] == [Kind.PASV_227, Kind.EPSV_229, Kind.LPSV_228]
    assert len([e for e in link.events if isinstance(e, Withdraw)]) == 2  # newest wins


def test_auth_tls_blinds_until_clear_text_returns() -> None:
    link = client_nat()
    link.send(True, payload=b"AUTH TLS\r\n")
    link.send(False, payload=b"234 go ahead\r\n")
    assert len(events(link, EventKind.BLIND)) == 1
    record = bytes((23, 3, 3, 0, 22)) + PORT_LINE  # looks like PORT, but inside a record
    link.send(True, payload=record)
    assert bytes(link.at_server.stream).endswith(record)
    assert not expects(link)
    link.send(True, payload=bytes((21, 3, 3, 0, 2)) + b"\x01\x00")  # close_notify after CCC
    link.send(True, payload=PORT_LINE)
    assert bytes(link.at_server.stream).endswith(PORT_OUT)
    assert len(events(link, EventKind.CLEAR)) == 1


def test_policy_refusals_leave_the_line_untouched() -> None:
    cases = [
        (b"PORT 10,0,0,200,4,1\r\n", "bounce"),
        (b"PORT 192,168,0,1,0,25\r\n", "low-port"),
        (b"EPRT |2|fd00::1|5282|\r\n", "family"),
        (b"PORT 192,168,0,1,4\r\n", "malformed"),
        (b"PORT 192,168,0,1,4,1\x00\r\n", "nul"),
        (b"PORT " + b"1" * 600 + b"\r\n", "line-too-long"),
    ]
    for line, reason in cases:
        link = client_nat()
        link.send(True, payload=line)
        assert bytes(link.at_server.stream) == line
        assert [e.reason for e in events(link, EventKind.REFUSAL)] == [reason]
        assert link.gw.counters[f"refusal.{reason}"] == 1
        assert not expects(link)


def test_fxp_only_when_allowed() -> None:
    link = client_nat(Config(allow_fxp=True))
    link.send(True, payload=b"PORT 10,0,0,200,4,1\r\n")
    assert bytes(link.at_server.stream) == b"PORT 10,0,0,200,4,1\r\n"
    assert len(events(link, EventKind.FXP)) == 1 and not events(link, EventKind.REFUSAL)


def test_hold_ends_in_a_decision_within_the_timeout() -> None:
    link = client_nat()
    link.tick(0.0)  # the periodic sweep; then the hold is the next thing to do
    assert link.send(True, payload=b"PORT 192,168,") == [] and link.gw.next_tick() == 0.5
    link.send(True, payload=b"PORT 192,168,", seq=link.client.seq - 13)  # retransmitted
    assert list(link.verdicts.values())[-1] == "Drop"
    link.tick(0.6)
    assert not link.queued and bytes(link.at_server.stream) == b"PORT 192,168,"
    assert len(events(link, EventKind.HOLD_TIMEOUT)) == 1
    link.send(True, payload=b"0,1,4,1\r\n")  # too late: the address already left
    assert [e.reason for e in events(link, EventKind.REFUSAL)] == ["split-released"]
    assert bytes(link.at_server.stream) == PORT_LINE


def test_ipv6_eprt_and_lprt() -> None:
    c6, out6, s6 = ip("fd00::1"), ip("2001:db8::7"), ip("2001:db8:1::2")
    link = Link(Gateway(), Peer(c6, 40000, 1, seen_as=out6), Peer(s6, 21, 2))
    link.handshake()
    link.send(True, payload=b"EPRT |2|fd00::1|5282|\r\n")
    link.send(False, payload=b"200 ok\r\n")
    link.send(True, payload=b"LPRT 6,16,253," + b"0," * 14 + b"1,2,20,162\r\n")
    assert bytes(link.at_server.stream) == (
        b"EPRT |2|2001:db8::7|5282|\r\nLPRT 6,16,32,1,13,184," + b"0," * 11 + b"7,2,20,162\r\n"
    )
    link.send(False, payload=b"200 ok\r\n")
    assert parse(link.to_client[-1]).ack == link.client.seq


def test_session_end_withdraws_the_expectation() -> None:
    link = client_nat(Config(linger=5))
    link.queue_all = True  # the replay queues FINs: the session ends after the linger
    link.send(True, payload=PORT_LINE)
    link.send(True, flags=FIN | ACK)
    link.send(False, flags=FIN | ACK)
    link.tick(6)
    assert [type(e).__name__ for e in link.events[-2:]] == ["Withdraw", "Report"]
    assert events(link, EventKind.SESSION_END) and link.gw.session_count == 0
    assert link.gw.session_id(link.original) is None


def test_conntrack_destroy_ends_the_session_and_its_held_packets() -> None:
    link = client_nat()
    link.send(True, payload=b"PORT 192,")
    assert len(link.queued) == 1
    link.carry(link.gw.forget(link.original))
    assert not link.queued and link.verdicts[max(link.verdicts)] == "Accept"
    assert link.gw.session_count == 0


def test_gap_resyncs() -> None:
    link = client_nat()
    link.send(True, payload=b"USER ftp\r\n")  # the first bytes seen set where the stream is
    link.send(True, payload=b"NOOP\r\n", seq=link.client.seq + 100, advance=False)
    assert len(link.queued) == 1  # out of order: held for the hole to fill
    link.tick(0.6)
    assert len(events(link, EventKind.GAP)) == 1 and not link.queued


def test_an_out_of_order_port_is_still_rewritten() -> None:
    link = client_nat()
    link.send(True, payload=b"USER ftp\r\n")
    base = link.client.seq
    link.send(True, payload=PORT_LINE, seq=base + 6, advance=False)
    link.send(True, payload=b"NOOP\r\n", seq=base)
    assert bytes(link.at_server.stream) == b"USER ftp\r\nNOOP\r\n" + PORT_OUT
    assert not link.queued and not events(link, EventKind.GAP)


def test_a_held_out_of_order_segment_stays_with_its_session() -> None:
    """Two sessions on one gateway: what one holds out of order never reaches the other
    (the streams' out-of-order tables start out shared and empty, to save memory)."""
    gw = Gateway()
    a = Link(gw, Peer(C, 40000, 1000, seen_as=C_OUT), Peer(S, 21, 5000))
    b = Link(gw, Peer(C, 40001, 3000, seen_as=C_OUT), Peer(S, 21, 7000))
    for link in (a, b):
        link.handshake()
        link.send(False, payload=b"220 ready\r\n")
        link.send(True, payload=b"USER ftp\r\n")
    a.send(True, payload=b"NOOP\r\n", seq=a.client.seq + 100, advance=False)
    assert len(a.queued) == 1
    b.send(True, payload=b"PASS x\r\n")
    assert bytes(b.at_server.stream) == b"USER ftp\r\nPASS x\r\n" and not b.queued
    assert len(a.queued) == 1 and bytes(a.at_server.stream) == b"USER ftp\r\n"


@st.composite
def conversation(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        lines.append(
            draw(
                st.sampled_from(
                    [
                        PORT_LINE,
                        b"NOOP\r\n",
                        b"LIST -la\r\n",
                        b"PORT 192,168,0,1,200,13\n",
                        b"EPRT |1|192.168.0.1|40000|\r\n",
                        b"PORT 10,0,0,9,4,1\r\n",
                        b"PASV\r\n",
                    ]
                )
            )
        )
    return lines


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(conversation(), st.data())
def test_any_segmentation_gives_the_rewritten_stream_and_exact_acks(lines, data) -> None:  # type: ignore[no-untyped-def]
    stream = b"".join(lines)
    want = stream.replace(b"192,168,0,1,", b"192,168,15,5,").replace(
        b"|192.168.0.1|", b"|192.168.15.5|"
    )
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=10))))
    link = client_nat()
    base = link.client.seq
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        link.send(True, payload=stream[a:b], seq=base + a)
        if data.draw(st.booleans()):
            link.send(False, flags=ACK)  # the server acks what it has so far
            got = parse(link.to_client[-1]).ack
            assert got - base <= b  # never acknowledges what the client has not sent
            if not link.held:
                assert got == base + b
        if data.draw(st.booleans()):
            link.tick(0.01)
    link.tick(1.0)
    assert bytes(link.at_server.stream) == want
    link.send(False, flags=ACK)
    assert parse(link.to_client[-1]).ack == base + len(stream)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=60), st.integers(0, 0x1FF), st.binary(max_size=40), st.sampled_from([4, 6])
)
def test_arbitrary_packets_each_get_one_verdict(
    payload: bytes, flags: int, options: bytes, v: int
) -> None:
    """Arbitrary headers, truncated packets and bare payloads: the gateway never raises, and
    every packet handed in gets exactly one Accept or Drop (look-ups answered either way)."""
    gw = Gateway()
    src, dst = (C, S) if v == 4 else (ip("fd00::1"), ip("fd00::2"))
    opts = options[: len(options) // 4 * 4]
    verdicts: list[object] = []
    handles: list[int] = []

    def run(commands: list[Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, Accept | Drop):
                verdicts.append(cmd.handle)
            elif isinstance(cmd, Lookup):
                found = Found(cmd.key, cmd.key, (cmd.key[2], cmd.key[3], cmd.key[0], cmd.key[1]))
                run(gw.answer(found if len(handles) % 2 else NotFound(cmd.key), 0.0))
            elif isinstance(cmd, Reserve):
                run(gw.answer(Reserved(cmd.proposal.session, None), 0.0))

    for sport, dport in ((40000, 21), (21, 40000)):
        pkt = build(src, dst, sport, dport, 1, 2, flags & 0xFF, payload, opts)
        for data in (pkt, pkt[: len(pkt) // 2], payload):
            handles.append(len(handles))
            run(gw.packet(handles[-1], data, 0.0))
    run(gw.tick(100.0))
    run(gw.close(100.0))
    assert sorted(verdicts) == handles  # type: ignore[type-var]


def test_psh_flag_is_irrelevant() -> None:
    link = client_nat()
    link.send(True, flags=ACK, payload=PORT_LINE)
    assert bytes(link.at_server.stream) == PORT_OUT


def test_announce_overrides_the_written_address_not_the_expectation() -> None:
    public = ip("203.0.113.5")  # double NAT: the router's WAN address is itself private
    link = client_nat(Config(announce={C_OUT: public}))
    link.send(True, payload=PORT_LINE)
    assert bytes(link.at_server.stream) == b"PORT 203,0,113,5,4,1\r\n"
    (exp,) = expects(link)
    assert exp.outside == C_OUT


def test_same_port_offered_again_keeps_its_expectation() -> None:
    link = server_nat()
    for _ in range(2):
        link.send(True, payload=b"PASV\r\n")
        link.send(False, payload=b"227 Entering Passive Mode (10,0,0,5,117,48).\r\n")
    assert len(expects(link)) == 2
    # The old one is withdrawn before the new one is made: the kernel holds one.
    withdrawn = [e for e in link.events if isinstance(e, Withdraw)]
    assert len(withdrawn) == 1 and withdrawn[0].expectation == expects(link)[0]


def test_session_cap_refuses_new_connections_once_each() -> None:
    gw = Gateway(Config(max_sessions=1))
    first = Link(gw, Peer(C, 40000, 1, seen_as=C_OUT), Peer(S, 21, 2))
    first.handshake()
    first.send(False, payload=b"220 ready\r\n")
    second = Link(gw, Peer(C, 40001, 1, seen_as=C_OUT), Peer(S, 21, 2))
    second.handshake()
    second.send(True, payload=PORT_LINE)
    assert [e.reason for e in events(second, EventKind.REFUSAL)] == ["session-cap"]
    assert bytes(second.at_server.stream) == PORT_LINE  # passes, unwatched
    assert gw.session_count == 1


def test_rewrites_in_flight_are_bounded() -> None:
    link = client_nat(Config(max_corrections=3))
    for _ in range(4):
        link.send(True, payload=PORT_LINE)
    assert [e.reason for e in events(link, EventKind.REFUSAL)] == ["too-many-rewrites"]
    for _ in range(3):
        link.send(False, payload=b"200 ok\r\n")  # acknowledged: room again
    link.send(True, payload=PORT_LINE)
    assert len(events(link, EventKind.REWRITE)) == 4
