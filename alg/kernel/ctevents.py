"""Conntrack DESTROY events, for a daemon's select loop.

The daemon keeps per-connection state (seq/ack shifts, pending expectations) that must go when
the kernel forgets the connection: after a close, a timeout, or `conntrack -D`. Subscribing to
the DESTROY group tells it, without polling.

With `net.netfilter.nf_conntrack_events = 2` (the default since Linux 6.0) the kernel adds the
event extension only to connections created while some socket listens, so open the listener
before the control connections it should report on (at daemon start).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable

from alg.kernel import messages as m
from alg.kernel.ctnetlink import IPPROTO_TCP, conntrack_from_message
from alg.kernel.cttypes import Conntrack
from alg.kernel.netlink import NetlinkSocket

NFNLGRP_CONNTRACK_DESTROY = 3


class DestroyListener:
    """A non-blocking socket subscribed to conntrack DESTROY events (TCP only)."""

    def __init__(self, rcvbuf: int = 4 << 20, ports: Iterable[int] | None = None) -> None:
        self._nl = NetlinkSocket(groups=(NFNLGRP_CONNTRACK_DESTROY,), rcvbuf=rcvbuf)
        self.lost = 0  # times the kernel reported dropped events (ENOBUFS)
        # A busy router destroys connections of every kind; decoding each in Python is the
        # daemon's main background cost. With `ports`, a message is decoded only if it holds
        # a CTA_PROTO_SRC_PORT or CTA_PROTO_DST_PORT attribute with one of them: a byte search.
        self._marks = (
            None
            if ports is None
            else tuple(
                struct.pack("=HH", 6, kind) + struct.pack("!H", port)
                for port in ports
                for kind in (m.CTA_PROTO_SRC_PORT, m.CTA_PROTO_DST_PORT)
            )
        )
        self.skipped = 0  # messages not decoded because they named none of `ports`

    def fileno(self) -> int:
        return self._nl.fileno()

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> DestroyListener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read_events(self) -> list[Conntrack]:
        """The TCP connections destroyed since the last call (tuples and conntrack id, which
        tells them from a newer connection on the same tuple); never blocks.

        If the kernel dropped events (the buffer overflowed), `lost` is incremented and the
        events that were read are returned: the caller may then re-check its connections with
        `Ctnetlink.lookup`.
        """
        events: list[Conntrack] = []
        try:
            for mtype, data in self._nl.receive_nowait():
                if mtype != m.CT_DELETE:
                    continue
                if self._marks is not None and not any(k in data for k in self._marks):
                    self.skipped += 1
                    continue
                entry = conntrack_from_message(data)
                if entry is not None and entry.original.proto == IPPROTO_TCP:
                    events.append(entry)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.lost += 1
        return events
