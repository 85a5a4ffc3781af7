"""After lost DESTROY events: ask conntrack which tracked connections still exist.

The kernel drops conntrack events when the listener's socket buffer is full (ENOBUFS, counted
as `destroy-events-lost`). A session whose DESTROY was among them would otherwise stay until
`idle_timeout` (two hours by default). After a loss the daemon looks every session's
connection up again, a few per loop turn so that the queue keeps its turn, and forgets the
ones conntrack no longer holds (`destroy-recheck-forgotten`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from alg.core import FlowKey
from alg.daemon.conntrack import to_tuple
from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import CtnetlinkError

log = logging.getLogger("ftp-alg")

BATCH = 64  # look-ups per loop turn (~50 us each): the queue waits at most a few ms


class Recheck:
    """The connections still to look up since the last loss."""

    def __init__(self) -> None:
        self.todo: list[tuple[FlowKey, int]] = []

    @property
    def pending(self) -> bool:
        return bool(self.todo)

    def start(self, connections: Iterable[tuple[FlowKey, int]]) -> None:
        """Look up these (original tuple, conntrack id) pairs, starting over if under way."""
        self.todo = list(connections)

    def step(self, ct: Ctnetlink, batch: int = BATCH) -> list[tuple[FlowKey, int]]:
        """Look up to `batch` connections up; those conntrack no longer holds (or holds as
        another, newer connection) come back, to be forgotten."""
        gone = []
        for _ in range(min(batch, len(self.todo))):
            key, conn_id = self.todo.pop()
            try:
                entry = ct.get_conntrack(to_tuple(key))
            except CtnetlinkError as exc:  # no answer is no verdict: keep the session
                log.warning("re-checking %s after lost destroy events failed: %s", key, exc)
                continue
            if entry is None or (conn_id and entry.id and entry.id != conn_id):
                gone.append((key, conn_id))
        return gone
