"""Flow keys: how a queued packet finds its session, and when it may not be that session's.

A key is (src, sport, dst, dport) as the packet shows at the queue (mangle POSTROUTING, after
DNAT and before SNAT), addresses packed.
"""

from __future__ import annotations

from collections.abc import Iterator

from alg.core.commands import FlowKey
from alg.core.packet import ACK, Segment
from alg.core.seqadj import seq_diff
from alg.core.session import Session
from alg.core.stream import Stream

# Bytes from a stream's next one: a control stream never has that much in flight or unseen.
_STRANGER = 1 << 20


def stranger(session: Session, stream: Stream, seg: Segment) -> bool:
    """Whether a segment found by its tuple may belong to a newer connection: its session is
    closing (QUIT, or the server sent 221 or 421), or the segment is `distant`. A client that reuses
    its port at once gets there before conntrack's destroy event of the old connection is
    read; a look-up then tells (`Gateway._session_for`)."""
    return session.closing_at is not None or distant(session, stream, seg)


def distant(session: Session, stream: Stream, seg: Segment) -> bool:
    """Its sequence or acknowledgement number lies far from where the session's streams
    stand: it cannot be of the session's connection, whatever conntrack's id says (a new
    entry can take the id of the one freed for it: the id hashes the entry's address)."""
    if _far(seg.seq, stream.front()):
        return True
    return bool(seg.flags & ACK) and _far(seg.ack, session.peer(stream).front())


def _far(number: int, expected: int | None) -> bool:
    return expected is not None and abs(seq_diff(number, expected)) > _STRANGER


def reverse(key: FlowKey) -> FlowKey:
    return (key[2], key[3], key[0], key[1])


def inside_view(orig: FlowKey, reply: FlowKey) -> FlowKey:
    """The client's packets after DNAT and before SNAT (mangle POSTROUTING, where both
    directions are queued): source as sent, destination as the server really is."""
    return (orig[0], orig[1], reply[0], reply[1])


def session_keys(session: Session) -> Iterator[tuple[FlowKey, Stream]]:
    """Every key a session is found by: conntrack's original tuple (destroy events name it)
    and both directions as mangle POSTROUTING queues them, after DNAT and before SNAT. Behind
    masquerade the client's view is the original tuple itself, through a port forward the
    server's is the reply tuple: equal keys are stored once."""
    orig, reply = session.tuples
    inside = inside_view(orig, reply)
    back = reverse(inside)
    yield orig, session.orig
    if inside != orig:
        yield inside, session.orig
    yield (reply if back == reply else back), session.reply
