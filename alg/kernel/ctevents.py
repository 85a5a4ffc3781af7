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
CTA_STATUS = 3
IPS_SEEN_REPLY = 1 << 1
_ATTRS = 20  # nlmsghdr (16) + nfgenmsg (4): where a message's attributes begin
_STEPS = 8  # attributes looked at before giving up (STATUS comes 3rd to 5th)

Insn = tuple[int, int, int, int]  # classic BPF: code, jt, jf, k
Asm = tuple[int | str, int | str | None, int | str | None, int]  # str: a label or its use


def seen_reply_filter() -> list[Insn]:
    """Classic BPF run by the kernel on each DESTROY message: drop it if its CTA_STATUS
    lacks IPS_SEEN_REPLY, pass anything else (a layout it cannot read included).

    A connection that never had a reply never had a packet queued (the rules queue only
    ESTABLISHED ones, i.e. seen a reply), so it never had a session. Measured (issue 10): a
    junk flood destroys one unreplied entry per packet, ~30k events/s; decoding them in
    Python took most of a CPU, slowed every transfer and overflowed the buffer.

    Attributes are walked unrolled (cBPF has no loops; the SKF_AD_NLATTR helper found
    nothing in these messages on Linux 6.18). Netlink lengths and types are host order and
    BPF loads big-endian, so lengths are read byte by byte (little-endian hosts only, like
    the rest of this package). An out-of-bounds load ends the program: dropped."""
    code: list[Asm] = [(0x00, 0, 0, _ATTRS), (0x07, 0, 0, 0)]
    for i in range(_STEPS):
        adv = f"adv{i}"
        code += [
            (0x50, 0, 0, 2),  # ldb [x+2]: type, low byte
            (0x15, 0, adv, CTA_STATUS),  # jeq #3
            (0x50, 0, 0, 3),  # ldb [x+3]: type, high byte (flags)
            (0x15, "found", adv, 0),  # jeq #0
            (adv, None, None, 0),  # label
            (0x87, 0, 0, 0),  # txa
            (0x02, 0, 0, 1),  # st M[1]: this attribute's offset
            (0x50, 0, 0, 1),  # ldb [x+1]
            (0x64, 0, 0, 8),  # lsh #8
            (0x02, 0, 0, 0),  # st M[0]
            (0x50, 0, 0, 0),  # ldb [x+0]
            (0x61, 0, 0, 0),  # ldx M[0]
            (0x4C, 0, 0, 0),  # or x: A = nla_len
            (0x35, 0, "pass", 4),  # jge #4, else a bogus length: pass
            (0x04, 0, 0, 3),  # add #3
            (0x54, 0, 0, 0xFFFFFFFC),  # and #~3
            (0x61, 0, 0, 1),  # ldx M[1]
            (0x0C, 0, 0, 0),  # add x
            (0x07, 0, 0, 0),  # tax: the next attribute
        ]
    code += [
        (0x06, 0, 0, 0xFFFFFFFF),  # not found within _STEPS: pass
        ("found", None, None, 0),
        (0x40, 0, 0, 4),  # ld [x+4]: the status, big-endian like BPF loads
        (0x45, "pass", "drop", IPS_SEEN_REPLY),  # jset
        ("pass", None, None, 0),
        (0x06, 0, 0, 0xFFFFFFFF),
        ("drop", None, None, 0),
        (0x06, 0, 0, 0),
    ]
    return _assemble(code)


def _assemble(code: list[Asm]) -> list[Insn]:
    """Resolve string labels (entries `(label, None, None, 0)`) into relative jumps."""
    where: dict[str, int] = {}
    body: list[tuple[int, int | str | None, int | str | None, int]] = []
    for op, jt, jf, k in code:
        if isinstance(op, str):
            where[op] = len(body)
        else:
            body.append((op, jt, jf, k))

    def rel(target: int | str | None, pc: int) -> int:
        return where[target] - pc - 1 if isinstance(target, str) else target or 0

    return [(op, rel(jt, pc), rel(jf, pc), k) for pc, (op, jt, jf, k) in enumerate(body)]


class DestroyListener:
    """A non-blocking socket subscribed to conntrack DESTROY events (TCP only) of
    connections that had a reply (the others are filtered out in the kernel)."""

    def __init__(self, rcvbuf: int = 4 << 20, ports: Iterable[int] | None = None) -> None:
        self._nl = NetlinkSocket(groups=(NFNLGRP_CONNTRACK_DESTROY,), rcvbuf=rcvbuf)
        try:
            self._nl.attach_filter(seen_reply_filter())
        except BaseException:
            self._nl.close()
            raise
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
