"""Scripted exchanges: exactly which commands the core gives for each event (tests/core/
playbook.py). They pin the conversation with the adapters: look-ups, reservations, the seqadj
record written before the verdict, reports, and one verdict per packet."""

from __future__ import annotations

from alg.core import (
    Accept,
    Config,
    DataExpectation,
    Dir,
    EventKind,
    Gateway,
    Kind,
    Lookup,
    Reason,
    Reserve,
    Reserved,
    SeqAdjRecord,
    Withdraw,
    WriteSeqAdj,
)
from tests.core.playbook import C_OUT, CPORT, CPORT_OUT, C, Playbook, S, started
from tests.core.test_gateway import server_nat


def test_greeting_starts_a_session_from_its_start() -> None:
    pb = started()
    pb << (EventKind.SESSION_NEW, Accept(1))
    assert pb.gw.session_count == 1 and pb.gw.counters["session-new"] == 1


def test_port_rewrite_reserves_then_writes_the_record_before_the_verdict() -> None:
    pb = started()
    pb.client(b"PORT 192,168,0,1,4,1\r\n")
    proposal = DataExpectation(
        1, Kind.PORT, 4, pb.original, S, C_OUT, 1025, C, 1025, Dir.REPLY, 60.0
    )
    pb << (Reserve(proposal, False),)
    pb.answer(Reserved(1, 1025))
    pb << (
        EventKind.REWRITE,
        WriteSeqAdj(pb.original, Dir.ORIGINAL, SeqAdjRecord(1000, 0, 1)),
        Accept,
    )
    sent = pb.out[-1]
    assert isinstance(sent, Accept) and sent.data is not None
    assert b"PORT 192,168,15,5,4,1\r\n" in sent.data


def test_default_data_port_is_expected_at_the_control_connections_outside_port() -> None:
    """RFC 959 3.2: LIST with no PORT or PASV: the server connects from port 20 to the
    client's control port, which behind masquerade is the router's."""
    pb = started()
    pb.client(b"LIST\r\n")
    proposal = DataExpectation(
        1, Kind.DEFAULT, 4, pb.original, S, C_OUT, CPORT_OUT, C, CPORT, Dir.REPLY, 60.0
    )
    pb << (Reserve(proposal, True),)  # fixed: the port cannot move
    pb.answer(Reserved(1, CPORT_OUT))
    pb << (EventKind.FORWARD, Accept(2))
    pb.client(b"PASV\r\n") << (Accept(3),)
    pb.client(b"LIST\r\n") << (Accept(4),)  # PASV in effect: no default port
    pb.client(b"NLST\r\n") << (Withdraw, Reserve)  # PASV counts for one transfer only
    pb.answer(Reserved(1, None))  # taken by another session
    pb << ((EventKind.REFUSAL, Reason.NO_PORT), Accept(5))


def test_default_data_port_only_for_sessions_seen_from_their_start() -> None:
    pb = started()
    pb.gw = Gateway()  # a restarted daemon: the next packet is a command
    pb.client(b"LIST\r\n")
    pb.answer(pb.found(pb.original))
    pb << (EventKind.SESSION_NEW, Accept(2))  # what was in effect is unknown: nothing done


def test_the_kernels_passive_bit_says_whether_a_first_transfer_uses_the_default_port() -> None:
    """A connection the daemon never met, whose first queued line is a transfer: only login
    lines passed unqueued (no data port set: RFC 959's default port, expected), or also a
    PASV the kernel's passive rules let pass and marked in the connmark (Found.passive: the
    transfer uses it, nothing to expect; the next one has the default port again)."""
    for passive in (False, True):
        pb = Playbook(Gateway())
        pb.client(b"RETR f\r\n") << (Lookup(pb.original),)
        pb.answer(pb.found(pb.original, watched=False, passive=passive))
        if passive:
            pb << (EventKind.SESSION_NEW, Accept(1))
            pb.client(b"LIST\r\n") << (Reserve,)
        else:
            pb << (EventKind.SESSION_NEW, Reserve)


def test_a_connection_without_the_anchor_passes_untouched() -> None:
    pb = started(anchored=False)
    pb << (EventKind.UNTRACKED, Accept(1))
    pb.client(b"PORT 192,168,0,1,4,1\r\n") << (Lookup,)
    assert pb.gw.counters["not-anchored"] == 1 and pb.gw.session_count == 0


def test_a_destroy_event_of_an_older_connection_keeps_the_session() -> None:
    pb = started(conn_id=7)
    pb.forget(conn_id=6) << ()
    assert pb.gw.session_count == 1 and pb.gw.counters["destroy-event-older-connection"] == 1
    pb.forget(conn_id=7) << (EventKind.SESSION_END,)
    assert pb.gw.session_count == 0


def test_clear_text_named_for_what_it_is() -> None:
    """Clear text after TLS from the client is the sign of an accepted CCC; from the server
    alone (vsftpd's `500 OOPS` after a client dropped TLS) it is not, and is not read."""
    tls = b"\x17\x03\x03\x00\x05hello"
    pb = started()
    pb.client(b"AUTH TLS\r\n")
    pb.server(b"234 Proceed.\r\n") << (EventKind.BLIND, Accept)
    pb.client(tls) << (Accept,)
    pb.server(tls + b"227 Entering Passive Mode (192,168,0,9,4,1)\r\n")
    pb << (EventKind.CLEAR, Accept)
    assert "no CCC" in pb.out[0].message  # type: ignore[union-attr]
    pb.client(tls + b"PASV\r\n") << (EventKind.CLEAR, Accept)
    assert "the client's CCC: 'PASV" in pb.out[0].message  # type: ignore[union-attr]


def test_session_cap_refuses_with_its_reason() -> None:
    pb = started(Gateway(Config(max_sessions=0)))
    pb << ((EventKind.REFUSAL, Reason.SESSION_CAP), Accept(1))


def test_a_server_naming_its_public_address_is_forwarded_not_refused() -> None:
    """vsftpd `pasv_address`, proftpd `MasqueradeAddress`: the 227 already names the address
    the client reached. The text stays, the expectation sends the data connection on to the
    server behind it (port fixed); any other foreign address is still a bounce."""
    link = server_nat()
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=b"227 Entering Passive Mode (203,0,113,9,117,48).\r\n")
    (exp,) = link.expectations
    assert (exp.outside_port, exp.inside_port, exp.nat_dir) == (30000, 30000, Dir.ORIGINAL)
    assert exp.inside == link.server.addr and exp.outside == link.server.seen_as
    assert bytes(link.at_client.stream).endswith(b"(203,0,113,9,117,48).\r\n")  # unchanged
    reserves = [e for e in link.events if isinstance(e, Reserve)]
    assert [r.fixed for r in reserves] == [True]
    assert link.gw.counters["forward"] == 1 and "refusal" not in link.gw.counters
    link.send(True, payload=b"PASV\r\n")
    link.send(False, payload=b"227 Entering Passive Mode (198,51,100,99,117,48).\r\n")
    assert link.gw.counters["refusal.bounce"] == 1 and len(link.expectations) == 1


def test_quit_ends_the_session_after_its_linger_time() -> None:
    """Only payload is queued, so the FINs never reach the core and conntrack's end of the
    connection comes after TIME_WAIT (120 s). The client's QUIT says the connection ends (the
    kernel lets its 221 pass unqueued): the session goes `linger` after it, not two minutes
    later."""
    pb = started(Gateway(Config(linger=5.0)))
    pb.client(b"QUIT\r\n") << (Accept,)
    pb.tick(4.0) << ()
    assert pb.gw.session_count == 1
    pb.tick(5.5) << (EventKind.SESSION_END,)
    assert pb.gw.session_count == 0


def test_a_final_221_alone_ends_the_session_too() -> None:
    """A 221 whose QUIT the gateway never read (met after it): a multi-line one counts
    when it ends."""
    pb = started(Gateway(Config(linger=5.0)))
    pb.server(b"221-Goodbye.\r\n") << (Accept,)  # not yet: a multi-line reply goes on
    pb.tick(30.0)
    assert pb.gw.session_count == 1
    pb.server(b"221 Come back soon.\r\n") << (Accept,)
    pb.tick(34.0) << ()
    assert pb.gw.session_count == 1
    pb.tick(35.5) << (EventKind.SESSION_END,)
    assert pb.gw.session_count == 0


def test_a_421_greeting_ends_the_session_too() -> None:
    """RFC 959 4.2's 421 (service not available, closing control connection), here as the
    greeting of a full server."""
    pb = Playbook(Gateway(Config(linger=5.0)))
    key = (S, 21, C, CPORT)
    pb.server(b"421 Too many users.\r\n") << (Lookup(key, from_server=True),)
    pb.answer(pb.found(key)) << (EventKind.SESSION_NEW, Accept)
    pb.tick(6.0) << (EventKind.SESSION_END,)
    assert pb.gw.session_count == 0


def test_a_segment_on_a_connection_conntrack_has_closed_starts_no_session() -> None:
    """After the session ended (221, then `linger`), conntrack keeps the entry in TIME_WAIT
    for two minutes: a late copy or junk on that tuple passes without a new session."""
    pb = Playbook(Gateway())
    key = (S, 21, C, CPORT)
    pb.server(b"221 Goodbye.\r\n") << (Lookup(key, from_server=True),)
    pb.answer(pb.found(key, closed=True)) << (EventKind.UNTRACKED, Accept)
    assert pb.gw.session_count == 0 and pb.gw.counters["closed-connection"] == 1


def test_a_port_reused_at_once_gets_a_session_of_its_own() -> None:
    """The client reuses its port for a new connection while the old session lingers after
    its QUIT, and before conntrack's destroy event of the old connection is read (a daemon
    busy with a burst). Its PASV, the first line the kernel queues of it (the login passed
    the skip rule), is looked up, not fed to the old session: conntrack's new id ends the
    old session and starts a new one, which pairs the 227 with the PASV."""
    pb = started(conn_id=7)
    pb.client(b"QUIT\r\n") << (Accept(2),)  # its 221 passes unqueued
    pb.cseq, pb.sseq = 900_000, 3_000_000  # the new connection's own numbers
    pb.client(b"PASV\r\n") << (Lookup(pb.original),)
    pb.answer(pb.found(pb.original, conn_id=8, watched=False))
    pb << (EventKind.SESSION_END, EventKind.SESSION_NEW, Accept(3))
    pb.server(b"227 Entering Passive Mode (198,51,100,2,4,1).\r\n")
    assert pb.gw.session_count == 1 and "refusal" not in pb.gw.counters


def test_a_late_segment_of_a_closing_session_stays_in_it() -> None:
    """The same look-up for a 221 queued after the QUIT (a multi-line one, or one the
    kernel's skip rule does not know): conntrack's id is the session's own."""
    pb = started(conn_id=7)
    pb.client(b"QUIT\r\n") << (Accept(2),)
    pb.server(b"221-Goodbye.\r\n221 Come back.\r\n") << (Lookup,)
    pb.answer(pb.found((S, 21, C, CPORT), conn_id=7)) << (Accept(3),)
    assert pb.gw.counters["session-new"] == 1


def test_a_segment_far_from_its_stream_is_looked_up() -> None:
    """A session that never saw its connection end (no 221): a segment 1 MB away from
    where its stream stands is taken for a newer connection's, and conntrack decides."""
    pb = started(conn_id=7)
    pb.client(b"USER a\r\n") << (Accept(2),)
    pb.cseq += 2_000_000
    pb.client(b"PWD\r\n") << (Lookup(pb.original),)
    pb.answer(pb.found(pb.original, conn_id=9)) << (
        EventKind.SESSION_END,
        EventKind.SESSION_NEW,
        Accept(3),
    )


def test_a_greeting_whose_end_passed_unseen_is_over_at_the_next_reply() -> None:
    """A multi-line greeting's first segment starts the session; its last line passed the
    skip rule before the look-up marked the connection (alg/kernel/rules_skip.py): the hole
    is passed once the client acknowledges it, the greeting counts as ended there, and the
    next reply answers the client's USER, so that the 234 answers AUTH."""
    pb = Playbook(Gateway())
    pb.server(b"220-welcome\r\n")
    pb.answer(pb.found((S, 21, C, CPORT), watched=False))
    pb << (EventKind.SESSION_NEW, Accept(1))
    pb.sseq += len(b"220 ready\r\n")  # it passed unqueued
    pb.client(b"USER a\r\n") << (Accept(2),)  # its ack covers what the gateway never saw
    pb.server(b"331 pw\r\n") << (EventKind.GAP, Accept(3))
    pb.client(b"AUTH TLS\r\n") << (Accept(4),)
    pb.server(b"234 go\r\n") << (EventKind.BLIND, Accept(5))


def test_a_segment_acknowledging_far_from_its_peer_stream_is_looked_up() -> None:
    """The client's stream has not started (its first line here), but its acknowledgement
    number lies 1 MB from the server's stream: a newer connection's segment."""
    pb = started(conn_id=7)
    pb.sseq += 2_000_000
    pb.client(b"PORT 192,168,0,1,4,1\r\n") << (Lookup(pb.original),)
    pb.sseq -= 2_000_000


def test_a_reused_port_is_a_new_connection_even_under_the_old_id() -> None:
    """conntrack's id hashes the entry's address: the entry created for a reused port can
    get the freed one's id. A first segment far from the old streams still starts a session
    of its own."""
    pb = started(conn_id=7)
    pb.client(b"QUIT\r\n") << (Accept(2),)
    pb.cseq, pb.sseq = 900_000, 3_000_000
    pb.client(b"PORT 192,168,0,1,4,1\r\n") << (Lookup(pb.original),)
    pb.answer(pb.found(pb.original, conn_id=7, watched=False))
    pb << (EventKind.SESSION_END, EventKind.SESSION_NEW, Reserve)
