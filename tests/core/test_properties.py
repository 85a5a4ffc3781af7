"""Properties of the gateway over whole conversations, with the kernel's seqadj record as the
only offset state applied to what leaves the router (tests/tcpsim.py models the queue, the
daemon and nf_ct_seq_adjust independently of the core).

Whatever the segmentation, retransmission, reordering, SACK and pipelining:
- the server receives exactly the rewritten command stream, the client exactly the replies;
- every ack and SACK edge that reaches the client names bytes the client sent, and once all is
  delivered the ack is exact;
- every queued packet gets exactly one verdict, and no packet leaves with a bad checksum.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg.core import Config, Gateway
from alg.core.packet import ACK, FIN, PSH, RST, SYN, parse
from alg.core.seqadj import MASK, seq_diff
from tests.core.test_gateway import C_OUT, C, S, client_nat
from tests.tcpsim import Link, Peer, build, ip, sack_option

REPLIES = {
    b"PORT 192,168,0,1,4,1\r\n": b"200 PORT command successful.\r\n",
    b"PORT 192,168,0,1,200,13\n": b"200 PORT ok\r\n",
    b"EPRT |1|192.168.0.1|40000|\r\n": b"200 EPRT command successful.\r\n",
    b"NOOP\r\n": b"200 NOOP ok.\r\n",
    b"PASV\r\n": b"227 Entering Passive Mode (198,51,100,2,4,1).\r\n",
    b"LIST\r\n": b"150 Here comes the listing.\r\n226 Directory send OK.\r\n",
    b"PORT 10,0,0,9,4,1\r\n": b"500 Illegal PORT command.\r\n",  # bounce: refused, unchanged
}


def rewritten(stream: bytes) -> bytes:
    return stream.replace(b"192,168,0,1,", b"192,168,15,5,").replace(
        b"|192.168.0.1|", b"|192.168.15.5|"
    )


@st.composite
def batches(draw: st.DrawFn) -> list[list[bytes]]:
    """Commands in batches: a batch is sent before any of its replies (pipelining)."""
    commands = st.sampled_from(sorted(REPLIES))
    return draw(st.lists(st.lists(commands, min_size=1, max_size=3), min_size=1, max_size=4))


def _segments(data: st.DataObject, start: int, text: bytes) -> list[tuple[int, bytes]]:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=4))))
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    return [(start + a, text[a:b]) for a, b in itertools.pairwise(bounds)]


def _check_acks(link: Link, base: int, seen: int, sent: int) -> int:
    """Every ack and SACK edge that reached the client names bytes it sent (before `sent`)."""
    for pkt in link.to_client[seen:]:
        seg = parse(pkt)
        if seg.flags & ACK:
            assert 0 <= seq_diff(seg.ack, base) <= seq_diff(sent, base), "ack beyond sent bytes"
        for left, right in _sack(seg.options):
            assert 0 <= seq_diff(left, base) < seq_diff(right, base) <= seq_diff(sent, base)
    return len(link.to_client)


def _sack(options: bytes) -> list[tuple[int, int]]:
    i, out = 0, []
    while i < len(options):
        kind = options[i]
        if kind in (0, 1):
            i += 1
            continue
        size = options[i + 1]
        if kind == 5:
            body = options[i + 2 : i + size]
            for j in range(0, len(body), 8):
                out.append((int.from_bytes(body[j : j + 4]), int.from_bytes(body[j + 4 : j + 8])))
        i += size
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(batches(), st.data())
def test_whole_conversations_arrive_exactly(plan: list[list[bytes]], data: st.DataObject) -> None:
    link = client_nat(cseq=data.draw(st.integers(0, MASK)), sseq=data.draw(st.integers(0, MASK)))
    base, seen = link.client.seq, 0
    sent_segments: list[tuple[int, bytes]] = []
    client_text, server_text = b"", b"220 ready\r\n"  # client_nat() began with the greeting
    for batch in plan:
        text = b"".join(batch)
        segs = _segments(data, link.client.seq, text)
        sent = link.client.seq
        if len(segs) > 1 and data.draw(st.booleans()):  # reordered on the way
            i = data.draw(st.integers(0, len(segs) - 2))
            segs[i], segs[i + 1] = segs[i + 1], segs[i]
        for seq, payload in segs:
            link.send(True, payload=payload, seq=seq, advance=False)
            sent_segments.append((seq, payload))
            if seq_diff(seq + len(payload), sent) > 0:
                sent = (seq + len(payload)) & MASK
            if data.draw(st.booleans()):  # a retransmission of anything sent before
                old_seq, old = data.draw(st.sampled_from(sent_segments))
                link.send(True, payload=old, seq=old_seq, advance=False)
            if data.draw(st.booleans()):  # the server acks, with SACK for what is out of order
                blocks = link.at_server.sack_blocks
                link.send(False, flags=ACK, options=sack_option(*blocks) if blocks else b"")
            seen = _check_acks(link, base, seen, sent)
        link.client.seq = (link.client.seq + len(text)) & MASK
        client_text += text
        if data.draw(st.booleans()):
            link.tick(data.draw(st.sampled_from([0.01, 0.3, 0.6])))
        for command in batch:
            reply = REPLIES[command]
            server_text += reply
            for seq, payload in _segments(data, link.server.seq, reply):
                link.send(False, payload=payload, seq=seq, advance=False)
            link.server.seq = (link.server.seq + len(reply)) & MASK
            seen = _check_acks(link, base, seen, sent)
    link.tick(1.0)
    link.tick(1.0)
    link.send(False, flags=ACK)
    _check_acks(link, base, seen, link.client.seq)
    assert bytes(link.at_server.stream) == rewritten(client_text)
    assert bytes(link.at_client.stream) == server_text
    assert parse(link.to_client[-1]).ack == link.client.seq  # exact once all is delivered
    link.close()
    assert not link.queued, "packets left without a verdict"
    assert len(link.verdicts) == link._handle  # one verdict per queued packet, never two


_FLAGS = st.sampled_from([ACK, ACK | PSH, ACK | FIN, RST, SYN, SYN | ACK, ACK | RST, 0])
_PAYLOADS = st.sampled_from(
    [
        *(b"", b"PORT 1", b",2,3,4,5,6\r\n", b"PORT 192,168,0,1,4,1\r\n", b"227 (1,2,3,4,5,6)\r\n"),
        *(b"\x16\x03\x01\x00\x05hello", b"AUTH TLS\r\n", b"234 go\r\n", b"PASV\r\n", b"x" * 700),
    ]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), _FLAGS, st.integers(0, 3000), _PAYLOADS, st.booleans()),
        max_size=40,
    ),
    st.sampled_from([0.0, 0.2, 0.6, 20.0]),
)
def test_every_queued_packet_gets_exactly_one_verdict(
    packets: list[tuple[bool, int, int, bytes, bool]], step: float
) -> None:
    """Random and fuzzed packet sequences on one tuple (resets, reused ports with SYN, split
    and junk lines, TLS, holds, timeouts, forgotten sessions): each queued packet gets one
    verdict, in the call that took it or a later one, and none is left at shutdown."""
    link = Link(
        Gateway(Config(max_held=4)),
        Peer(ip("192.168.0.1"), 40000, 1000, seen_as=ip("192.168.15.5")),
        Peer(ip("198.51.100.2"), 21, 5000),
        queue_all=True,
    )
    link.at_server.strict = link.at_client.strict = False  # the senders here are fuzzed
    for from_client, flags, offset, payload, forget in packets:
        me = link.client if from_client else link.server
        peer = link.server if from_client else link.client
        pkt = build(
            me.addr, peer.addr, me.port, peer.port, me.seq + offset, peer.seq, flags, payload
        )
        link.feed(pkt, from_client)
        if forget:
            link.carry(link.gw.forget(link.original, now=link.now))
        link.tick(step)
    link.close()
    assert not link.queued, f"{len(link.queued)} packets never got a verdict"
    assert len(link.verdicts) == link._handle


LOGIN = [
    (b"USER anonymous\r\n", b"331 Please specify the password.\r\n"),
    (b"PASS guest@\r\n", b"230 Login successful.\r\n"),
    (b"SYST\r\n", b"215 UNIX Type: L8\r\n"),
    (b"TYPE I\r\n", b"200 Switching to Binary mode.\r\n"),
    (b"CWD /pub\r\n", b"250 Directory successfully changed.\r\n"),
]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.sampled_from(LOGIN), max_size=5), batches(), st.data())
def test_login_lines_the_kernel_keeps_leave_every_stream_exact(
    login: list[tuple[bytes, bytes]], plan: list[list[bytes]], data: st.DataObject
) -> None:
    """With the skip rule before the queue (tcpsim's model of it): the greeting and login
    lines pass unqueued, split or pipelined as they come, until the first segment the rule
    does not keep; the gateway's look-up marks the connection, and from then on the streams
    are exact as without the rule, and a LIST with no PORT before it (RFC 959's default
    port) is expected, as in a session seen from its start."""
    link = Link(
        Gateway(Config(replies_unqueued=True)),
        Peer(C, 40000, 1000, seen_as=C_OUT),
        Peer(S, 21, 5000),
        skip_login=True,
    )
    link.handshake()
    client_text, server_text = b"", b"220 ready\r\n"
    link.send(False, payload=server_text)
    for command, reply in login:
        for text, from_client in ((command, True), (reply, False)):
            peer = link.client if from_client else link.server
            for seq, payload in _segments(data, peer.seq, text):
                link.send(from_client, payload=payload, seq=seq, advance=False)
            peer.seq = (peer.seq + len(text)) & MASK
        client_text, server_text = client_text + command, server_text + reply
    assert link.gw.session_count == 0 or link.marked  # split login lines may start it early
    for batch in plan:
        text = b"".join(batch)
        for seq, payload in _segments(data, link.client.seq, text):
            link.send(True, payload=payload, seq=seq, advance=False)
        link.client.seq = (link.client.seq + len(text)) & MASK
        client_text += text
        for command in batch:
            reply = REPLIES[command]
            for seq, payload in _segments(data, link.server.seq, reply):
                link.send(False, payload=payload, seq=seq, advance=False)
            link.server.seq = (link.server.seq + len(reply)) & MASK
            server_text += reply
    link.tick(1.0)
    link.send(False, flags=ACK)
    assert bytes(link.at_server.stream) == rewritten(client_text)
    assert bytes(link.at_client.stream) == server_text
    assert parse(link.to_client[-1]).ack == link.client.seq
    assert link.skipped >= 1  # the greeting at least (a NOOP-only session is never marked)
    link.close()
    assert not link.queued and len(link.verdicts) == link._handle


def test_a_transfer_after_skipped_login_lines_uses_the_default_data_port() -> None:
    link = Link(
        Gateway(Config(replies_unqueued=True)),
        Peer(C, 40000, 1000, seen_as=C_OUT),
        Peer(S, 21, 5000),
        skip_login=True,
    )
    link.handshake()
    link.log_in(b"220 hi\r\n")
    assert link.skipped == 3 and link.gw.session_count == 0
    link.send(True, payload=b"RETR f\r\n")
    assert link.marked and link.gw.session_count == 1
    (exp,) = link.expectations
    assert (exp.inside_port, exp.outside_port) == (40000, 40000)  # the client's control port
