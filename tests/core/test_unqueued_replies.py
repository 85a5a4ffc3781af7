"""Plain replies the kernel lets pass unqueued (alg/kernel/rules_skip.py), through tcpsim's
model of the skip rules: the reply stream the gateway sees has holes wherever a 200, 150 or
226 was, and every rewrite must still be exact, at once where the hole is explained.

The server sits behind port forwarding, so each 227 grows by 4 bytes (10,0,0,5 becomes
203,0,113,9) and every rewrite moves the kernel's record; or the client sits behind
masquerading and each PORT grows alike, while the server's acks of them ride on replies the
gateway never sees."""

from __future__ import annotations

from alg.core import Config, EventKind, Gateway, Lookup, Report
from alg.core.protocol import State
from tests.tcpsim import Link, Peer, ip

INSIDE, PUBLIC, CLIENT = ip("10.0.0.5"), ip("203.0.113.9"), ip("198.51.100.7")
PASV_227 = b"227 Entering Passive Mode (10,0,0,5,195,149).\r\n"
SEEN_227 = b"227 Entering Passive Mode (203,0,113,9,195,149).\r\n"


def _link(replies_unqueued: bool = True, client_nat: bool = False) -> Link:
    """Logged in through lines the kernel let pass. `client_nat`: the client is the one
    behind the router (masquerading), and each PORT grows by 4 bytes (10,0,0,5 becomes
    203,0,113,9 at the same port), so every rewrite moves the kernel's record."""
    if client_nat:
        client, server = Peer(INSIDE, 50000, 77, seen_as=PUBLIC), Peer(CLIENT, 21, 9000)
    else:
        client, server = Peer(CLIENT, 50000, 77), Peer(INSIDE, 21, 9000, seen_as=PUBLIC)
    link = Link(Gateway(Config(replies_unqueued=replies_unqueued)), client, server, skip_login=True)
    link.handshake()
    link.log_in()
    return link


def _kinds(link: Link) -> list[EventKind]:
    return [e.kind for e in link.events if isinstance(e, Report)]


def test_a_227_behind_unqueued_replies_is_rewritten_at_once() -> None:
    """The client's PASV acknowledges the 150 and 226 that passed unqueued: the 227 behind
    them starts a line, and is rewritten without waiting. No gap is reported, only counted."""
    link = _link()
    server = b"220 ready\r\n230 ok\r\n"
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=PASV_227)
    for _ in range(2):
        link.send(True, payload=b"LIST\r\n")
        link.send(False, payload=b"150 Here comes the listing.\r\n")
        link.send(False, payload=b"226 Directory send OK.\r\n")
        link.send(True, payload=b"PASV\r\n")
        link.send(False, payload=PASV_227)
        assert not link.queued  # nothing held: the 227 left with its verdict
        server += b"150 Here comes the listing.\r\n226 Directory send OK.\r\n"
    link.send(True, payload=b"QUIT\r\n")
    (session,) = link.gw._sessions.values()
    assert session.protocol.state is State.CLOSING  # the QUIT decides: its 221 passes unqueued
    link.send(False, payload=b"221 Goodbye.\r\n")
    assert not link.queued
    assert link.skipped == 3 + 4 + 1  # greeting, USER, 230; two 150s and two 226s; the 221
    assert bytes(link.at_client.stream) == (
        server.replace(b"230 ok\r\n", b"230 ok\r\n" + SEEN_227, 1).replace(
            b"226 Directory send OK.\r\n", b"226 Directory send OK.\r\n" + SEEN_227
        )
        + b"221 Goodbye.\r\n"
    )
    assert len(link.expectations) == 3
    assert EventKind.GAP not in _kinds(link)
    assert link.gw.counters["replies-unqueued"] == 2  # one hole before each later 227
    link.tick(link.gw.config.linger + 1)
    assert link.gw.session_count == 0


def test_a_reply_behind_an_unexplained_hole_passes_at_once() -> None:
    """A client that pipelines "LIST\r\nPASV": its acknowledgement cannot cover the 150
    and 226 that passed unqueued after it. A 227 behind the hole starts a line (skipped
    segments are whole lines) and answers the PASV waiting: it is rewritten at once, and so
    is a plain reply behind a hole when no passive command waits."""
    link = _link()
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=PASV_227)
    link.send(True, payload=b"LIST\r\nPASV\r\n")
    link.send(False, payload=b"150 Here comes the listing.\r\n226 Directory send OK.\r\n")
    link.send(False, payload=PASV_227)
    assert not link.queued
    assert bytes(link.at_client.stream).endswith(b"226 Directory send OK.\r\n" + SEEN_227)
    link.send(True, payload=b"NOOP\r\n")
    link.send(False, payload=b"200 NOOP ok\r\n")  # passes unqueued: a hole no ack explains
    link.send(False, payload=b"211-Features:\r\n EPSV\r\n211 End\r\n")  # queued: no wait
    assert not link.queued
    link.send(True, payload=b"QUIT\r\n")
    link.send(False, payload=b"221 Goodbye.\r\n")
    assert not link.queued and EventKind.GAP not in _kinds(link)
    assert len(link.expectations) == 2


def test_a_227_lost_before_the_router_is_still_rewritten() -> None:
    """Pipelined "PASV\r\nRETR": the 227 is lost between the server and the router and
    the 150 after it arrives first (queued: it names f227). With the PASV still waiting,
    the hole may be its 227, so the 150 waits for it; the retransmitted 227 is rewritten."""
    link = _link()
    link.send(True, payload=b"PASV\r\nRETR f227\r\n")
    link.server.seq += len(PASV_227)  # the 227, lost before the router
    opening = b"150 Opening BINARY mode data connection for f227 (5 bytes).\r\n"
    link.send(False, payload=opening)
    assert len(link.queued) == 1
    link.send(False, payload=PASV_227, seq=link.server.seq - len(PASV_227) - len(opening))
    assert not link.queued
    assert bytes(link.at_client.stream).endswith(SEEN_227 + opening)
    assert len(link.expectations) == 1 and EventKind.GAP not in _kinds(link)


def test_a_refused_pasv_stops_waiting_once_the_client_goes_active() -> None:
    """PASV refused with a 502 that passed unqueued, then PORT: the PASV will never be
    answered, so plain replies behind holes pass at once again."""
    link = _link()
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=b"502 PASV not allowed.\r\n")
    link.send(True, payload=b"PORT 198,51,100,7,4,1\r\n")
    (session,) = link.gw._sessions.values()
    assert not session.protocol.awaits_passive()
    link.send(False, payload=b"200 PORT ok\r\n")
    link.send(True, payload=b"RETR f227\r\n")
    link.send(False, payload=b"150 Opening data connection for f227.\r\n")
    assert not link.queued


def test_234_answers_auth_whatever_replies_passed_unseen() -> None:
    """The 200 to PORT passed unqueued, so the oldest command waiting is the PORT: the 234
    still answers the AUTH, and the session goes blind."""
    link = _link()
    link.send(True, payload=b"PORT 198,51,100,7,4,1\r\n")
    link.send(False, payload=b"200 PORT ok\r\n")
    link.send(True, payload=b"AUTH TLS\r\n")
    link.send(False, payload=b"234 Proceed\r\n")
    assert link.skipped == 3 + 1 and EventKind.BLIND in _kinds(link)


def test_without_the_skip_rule_a_reply_gap_is_reported() -> None:
    """The replay feeds every segment: there a hole in the reply stream is a loss, worth a
    warning."""
    link = _link(replies_unqueued=False)
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=PASV_227)
    link.send(True, payload=b"LIST\r\n")
    link.send(False, payload=b"226 Directory send OK.\r\n")
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=PASV_227)
    assert bytes(link.at_client.stream).endswith(b"226 Directory send OK.\r\n" + SEEN_227)
    assert EventKind.GAP in _kinds(link) and "replies-unqueued" not in link.gw.counters


def test_the_next_command_shows_the_server_has_the_port() -> None:
    """The server's 200, 150 and 226 pass unqueued and so do its pure ACKs: its ack of a
    rewritten PORT never reaches the gateway. The client's next command acknowledges the
    200, which answers the PORT: each next PORT replaces the kernel's record at once."""
    link = _link(client_nat=True)
    port = b"PORT 10,0,0,5,4,%d\r\n"
    for i in range(70):  # more than max_corrections (64) rewrites waiting
        link.send(True, payload=port % (i % 200))
        assert not link.queued, i  # no PORT waits for the previous one's acknowledgement
        link.send(False, payload=b"200 PORT ok\r\n")
        link.send(True, payload=b"LIST\r\n")
        link.send(False, payload=b"150 Here it comes.\r\n")
        link.send(False, payload=b"226 Done.\r\n")
    assert link.seqadj_writes == 70
    assert bytes(link.at_server.stream).count(b"PORT 203,0,113,9,4,") == 70
    assert "seqadj-replaced-unacknowledged" not in link.gw.counters
    assert not [e for e in link.events if isinstance(e, Report) and e.kind is EventKind.REFUSAL]


def test_a_pipelined_port_waits_for_an_answer() -> None:
    """A second PORT sent before any reply to the first (the client's ack has not moved):
    nothing shows that the server has the first, so the second waits, as it always did."""
    link = _link(client_nat=True)
    link.send(True, payload=b"PORT 10,0,0,5,4,1\r\n")
    link.send(True, payload=b"PORT 10,0,0,5,4,2\r\n")
    assert len(link.queued) == 1
    link.send(False, payload=b"200 PORT ok\r\n")  # unqueued: nothing changes
    assert len(link.queued) == 1
    link.send(True, payload=b"NOOP\r\n")  # acknowledges the 200: the first was answered
    assert not link.queued
    assert bytes(link.at_server.stream).endswith(
        b"PORT 203,0,113,9,4,1\r\nPORT 203,0,113,9,4,2\r\nNOOP\r\n"
    )


def test_a_megabyte_of_unqueued_replies_keeps_the_session() -> None:
    """A long session: over a megabyte of plain replies passes unqueued after its last 227.
    The client's acknowledgements say where the reply stream stands, so its next command
    and the server's next 227 are still the session's own (not "distant", which would make
    the gateway look the connection up and start a session over)."""
    link = _link()
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=PASV_227)
    (session,) = link.gw._sessions.values()
    reply = b"200 " + b"x" * 1000 + b"\r\n"
    done = []
    for _ in range(1100):
        done += link.send(True, payload=b"NOOP\r\n")
        done += link.send(False, payload=reply)
    done += link.send(True, payload=b"PASV\r\n")
    done += link.send(False, payload=PASV_227)
    assert list(link.gw._sessions.values()) == [session]
    assert bytes(link.at_client.stream).endswith(reply + SEEN_227)
    assert not [c for c in done if isinstance(c, Lookup)]
