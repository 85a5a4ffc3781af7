"""Conntrack lookups and NAT expectations through ctnetlink: plain values in, plain values out.

The daemon needs two things from the kernel. First, a control connection's NAT mapping
(`lookup`): the masqueraded or port-forwarded address is in the conntrack entry, so nothing
has to be configured by hand. Second, an expectation (`create_expectation`) that lets the data
connection announced by PORT/EPRT/227/229 through the NAT and maps it to the inside host, the
way the kernel's own FTP helper would, via the `nat-follow-master` expect function.

Kernel facts this relies on (measured; docs/kernel-facts.md):
- EXP_NEW fails with EOPNOTSUPP unless the master connection has a helper; the rules attach
  the inert `sane` helper as that anchor.
- The helper's policy sets the timeout on creation; a second EXP_NEW without NLM_F_EXCL that
  carries CTA_EXPECT_TIMEOUT changes it. It finds the expectation by tuple alone, so it is only
  sent after our own create succeeded.
- EXCL creation fails with EEXIST when another master expects the same tuple: the caller picks
  another outside port.

One `Ctnetlink` holds one socket (opened in the network namespace of the thread that creates
it) and is meant for one thread. Lookups and creates take ~50-70 µs (requests are encoded and
replies walked by hand, cross-checked against pyroute2 in tests); `list_expectations` decodes
with the pyroute2 classes and takes ~0.5 ms, fine for `status`, not for a per-packet path.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from alg.kernel import messages as m
from alg.kernel.cttypes import (
    AF_OF_FAMILY,
    Conntrack,
    CtnetlinkError,
    Expectation,
    ExpectationExists,
    SeqAdj,
    Tuple,
)
from alg.kernel.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NetlinkSocket,
)

__all__ = [
    "Conntrack",
    "Ctnetlink",
    "CtnetlinkError",
    "Expectation",
    "ExpectationExists",
    "Tuple",
    "conntrack_from_message",
]

NAT_FOLLOW_MASTER = "nat-follow-master"
IPPROTO_TCP = 6
_AF = AF_OF_FAMILY
_FAMILY: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 6}
_ONES = {4: b"\xff" * 4, 6: b"\xff" * 16}


_NO_ANCHOR = (
    "this connection has no helper anchor: apply the rules with `ftp-alg rules apply`"
    " (the kernel accepts expectations only for connections with a conntrack helper)"
)


def _error(exc: OSError, action: str) -> CtnetlinkError:
    err = exc.errno or 0
    if err == errno.EOPNOTSUPP:
        return CtnetlinkError(err, _NO_ANCHOR)
    if err in (errno.EEXIST, errno.EBUSY, errno.EALREADY):
        return ExpectationExists(err, f"{action}: another expectation covers this tuple")
    if err == errno.EMFILE:
        return CtnetlinkError(err, f"{action}: the kernel's expectation table is full")
    if err == errno.ENOENT:
        return CtnetlinkError(err, f"{action}: no such connection (already closed?)")
    if err == errno.EPERM:
        return CtnetlinkError(err, f"{action}: permission denied (needs CAP_NET_ADMIN)")
    return CtnetlinkError(err, f"{action}: {exc.strerror or exc}")


def _packed(t: Tuple) -> tuple[bytes, bytes]:
    af = _AF[t.family]
    return socket.inet_pton(af, t.src), socket.inet_pton(af, t.dst)


def _tuple_attr(atype: int, t: Tuple) -> bytes:
    src, dst = _packed(t)
    return m.tuple_attr(atype, t.family == 6, src, dst, t.proto, t.sport, t.dport)


def _decode_tuple(family: int, cta: Any) -> Tuple:
    ip = cta.get_attr("CTA_TUPLE_IP")
    proto = cta.get_attr("CTA_TUPLE_PROTO")
    v = "V6" if family == 6 else "V4"
    return Tuple(
        family,
        proto.get_attr("CTA_PROTO_NUM"),
        ip.get_attr(f"CTA_IP_{v}_SRC"),
        ip.get_attr(f"CTA_IP_{v}_DST"),
        proto.get_attr("CTA_PROTO_SRC_PORT") or 0,
        proto.get_attr("CTA_PROTO_DST_PORT") or 0,
    )


class Ctnetlink:
    """ctnetlink requests over one reused socket (see the module docstring)."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._nl = NetlinkSocket()
        self._nl.settimeout(timeout)  # the kernel answers at once; never hang the daemon

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Ctnetlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- conntrack -------------------------------------------------------------------------

    def get_conntrack(self, seen: Tuple) -> Conntrack | None:
        """The entry whose original or reply tuple is `seen` (a packet in raw PREROUTING).
        One request: the kernel looks the tuple up in its hash, which holds both directions
        of every entry, whichever attribute carries it."""
        return self._get(seen, None)[0]

    def get_and_mark(self, seen: Tuple, value: int, mask: int) -> tuple[Conntrack | None, int]:
        """`get_conntrack`, then set the connmark bits `mask` of the entry to `value`'s, in
        the same round trip (two messages in one datagram, carried out in order). Returns the
        entry as it was before (its mark unchanged) and the mark update's errno (0: set)."""
        return self._get(seen, (value, mask))

    def _get(self, seen: Tuple, mark: tuple[int, int] | None) -> tuple[Conntrack | None, int]:
        attrs = _tuple_attr(m.CTA_TUPLE_ORIG, seen)
        af = _AF[seen.family]
        then = None
        if mark is not None:
            value, mask = mark
            update = attrs + m.be32(m.CTA_MARK, value & mask) + m.be32(m.CTA_MARK_MASK, mask)

            def then(seq: int) -> bytes:
                return m.message(m.CT_NEW, NLM_F_REQUEST | NLM_F_ACK, seq, af, update)

        try:
            replies, marking = self._nl.request_then(
                lambda seq: m.message(m.CT_GET, NLM_F_REQUEST | NLM_F_ACK, seq, af, attrs),
                bytes,
                then,
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None, errno.ENOENT
            raise _error(exc, f"conntrack lookup {seen}") from None
        return (conntrack_from_message(replies[0]) if replies else None), marking

    def lookup(self, seen: Tuple) -> tuple[Tuple, Tuple] | None:
        """(original, reply) of the connection `seen` belongs to, or None if there is none."""
        entry = self.get_conntrack(seen)
        return None if entry is None else (entry.original, entry.reply)

    def set_seqadj(self, original: Tuple, direction: int, record: SeqAdj) -> None:
        """Write one direction's seqadj record (0: ORIGINAL, 1: REPLY) into the entry whose
        original tuple is `original`: the kernel then shifts seq, ack and SACK of every later
        packet itself. CT_NEW without NLM_F_CREATE updates; the kernel ACKs it even when the
        entry has no seqadj extension (then it does nothing: the `sane` anchor provides it)."""
        which = m.CTA_SEQ_ADJ_REPLY if direction else m.CTA_SEQ_ADJ_ORIG
        attrs = _tuple_attr(m.CTA_TUPLE_ORIG, original) + m.nest(
            which,
            m.be32(m.CTA_SEQADJ_CORRECTION_POS, record.correction_pos & 0xFFFFFFFF),
            m.be32(m.CTA_SEQADJ_OFFSET_BEFORE, record.offset_before & 0xFFFFFFFF),
            m.be32(m.CTA_SEQADJ_OFFSET_AFTER, record.offset_after & 0xFFFFFFFF),
        )
        try:
            self._request(m.CT_NEW, NLM_F_REQUEST | NLM_F_ACK, _AF[original.family], attrs, None)
        except OSError as exc:
            raise _error(exc, f"seqadj update of {original}") from None

    # --- expectations ----------------------------------------------------------------------

    def create_expectation(
        self,
        master: Tuple,
        expected: Tuple,
        nat_dir: int,
        nat_addr: str,
        nat_port: int,
        timeout: int,
    ) -> None:
        """Expect `expected` (sport 0 = any) as a child of `master` and NAT it inside.

        `master` is the control connection's original tuple (from `lookup`). `expected` is the
        data connection as it arrives at the router: peer -> public address:public port.
        `nat_dir` is the direction opposite to the one whose addresses the data connection
        takes (1 for a PORT/EPRT from an inside client, 0 for a 227/229 from an inside
        server); `nf_nat_follow_master` takes the address from the master and the port from
        `nat_port`, so `nat_addr` is only recorded (it shows in `conntrack -L expect`).
        Raises ExpectationExists if another expectation covers `expected`.
        """
        if nat_dir not in (0, 1):
            raise ValueError(f"nat_dir must be 0 (original) or 1 (reply), not {nat_dir!r}")
        if timeout < 1:
            raise ValueError(f"timeout must be at least 1 s, not {timeout!r}")
        if expected.family != master.family:
            raise ValueError("master and expected tuples are of different families")
        family = master.family
        nat_tuple = Tuple(family, expected.proto, nat_addr, nat_addr, nat_port, 0)
        ones = _ONES[family]
        head = (
            _tuple_attr(m.CTA_EXPECT_MASTER, master)
            + _tuple_attr(m.CTA_EXPECT_TUPLE, expected)
            + m.tuple_attr(
                m.CTA_EXPECT_MASK,
                family == 6,
                ones,
                ones,
                expected.proto,
                0xFFFF if expected.sport else 0,
                0xFFFF,
            )
        )
        create = (
            head
            + m.be32(m.CTA_EXPECT_TIMEOUT, timeout)
            + m.nest(
                m.CTA_EXPECT_NAT,
                m.be32(m.CTA_EXPECT_NAT_DIR, nat_dir),
                _tuple_attr(m.CTA_EXPECT_NAT_TUPLE, nat_tuple),
            )
            + m.asciiz(m.CTA_EXPECT_FN, NAT_FOLLOW_MASTER)
        )
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        self._exp_request(m.EXP_NEW, flags, family, create, f"expect {expected}")
        # The helper's policy set the timeout; now set ours. ENOENT means the data connection
        # already arrived and consumed the expectation, which is success.
        update = head + m.be32(m.CTA_EXPECT_TIMEOUT, timeout)
        try:
            self._exp_request(
                m.EXP_NEW, NLM_F_REQUEST | NLM_F_ACK, family, update, f"expect {expected}"
            )
        except CtnetlinkError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def delete_expectation(self, expected: Tuple) -> bool:
        """Remove the expectation for `expected`; False if there was none."""
        attrs = _tuple_attr(m.CTA_EXPECT_TUPLE, expected)  # without it the kernel flushes all
        try:
            self._exp_request(
                m.EXP_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                expected.family,
                attrs,
                f"delete expectation {expected}",
            )
        except CtnetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def list_expectations(self, master: Tuple | None = None) -> list[Expectation]:
        """All expectations (of both families), or those of one master connection."""
        family, attrs = 0, b""
        if master is not None:
            family, attrs = _AF[master.family], _tuple_attr(m.CTA_EXPECT_MASTER, master)
        try:
            replies = self._request(m.EXP_GET, NLM_F_REQUEST | NLM_F_DUMP, family, attrs, m.exp_msg)
        except OSError as exc:
            if master is not None and exc.errno == errno.ENOENT:
                return []  # the master is gone, and its expectations with it
            raise _error(exc, "list expectations") from None
        return [_expectation(msg) for msg in replies]

    def _request(
        self, mtype: int, flags: int, af: int, attrs: bytes, cls: type[Any] | None
    ) -> list[Any]:
        """Replies as raw bytes (cls None) or decoded by a pyroute2 message class."""

        def payload(seq: int) -> bytes:
            return m.message(mtype, flags, seq, af, attrs)

        def decode(data: bytes) -> Any:
            if cls is None:
                return data
            msg = cls(data)
            msg.decode()
            return msg

        return self._nl.request(payload, decode)

    def _exp_request(self, mtype: int, flags: int, family: int, attrs: bytes, what: str) -> None:
        try:
            self._request(mtype, flags, _AF[family], attrs, m.exp_msg)
        except OSError as exc:
            raise _error(exc, what) from None


def _raw_tuple(family: int, data: bytes, span: tuple[int, int]) -> Tuple:
    src, dst, proto, sport, dport = m.parse_tuple(data, span)
    af = _AF[family]
    src_text, dst_text = socket.inet_ntop(af, src), socket.inet_ntop(af, dst)
    return Tuple.known(family, proto, src_text, dst_text, sport, dport)


def conntrack_from_message(data: bytes) -> Conntrack | None:
    """A CT_NEW/CT_DELETE message (reply or event) as a Conntrack; None if not IPv4/IPv6."""
    af, top = m.message_attrs(data)
    family = _FAMILY.get(af)
    if family is None or m.CTA_TUPLE_ORIG not in top or m.CTA_TUPLE_REPLY not in top:
        return None
    helper = None
    if m.CTA_HELP in top:
        helper = m.parse_str(data, m.attrs(data, *top[m.CTA_HELP]).get(m.CTA_HELP_NAME))
    return Conntrack(
        original=_raw_tuple(family, data, top[m.CTA_TUPLE_ORIG]),
        reply=_raw_tuple(family, data, top[m.CTA_TUPLE_REPLY]),
        helper=helper,
        status=m.parse_u32(data, top.get(m.CTA_STATUS)),
        timeout=m.parse_u32(data, top.get(m.CTA_TIMEOUT)),
        seqadj_original=_seqadj(data, top.get(m.CTA_SEQ_ADJ_ORIG)),
        seqadj_reply=_seqadj(data, top.get(m.CTA_SEQ_ADJ_REPLY)),
        id=m.parse_u32(data, top.get(m.CTA_ID)),
        tcp_state=_tcp_state(data, top.get(m.CTA_PROTOINFO)),
        mark=m.parse_u32(data, top.get(m.CTA_MARK)),
    )


def _tcp_state(data: bytes, span: tuple[int, int] | None) -> int | None:
    if span is None:
        return None
    tcp = m.attrs(data, *span).get(m.CTA_PROTOINFO_TCP)
    state = None if tcp is None else m.attrs(data, *tcp).get(m.CTA_PROTOINFO_TCP_STATE)
    return None if state is None else data[state[0]]


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


def _seqadj(data: bytes, span: tuple[int, int] | None) -> SeqAdj | None:
    if span is None:
        return None
    inner = m.attrs(data, *span)
    return SeqAdj(
        m.parse_u32(data, inner.get(m.CTA_SEQADJ_CORRECTION_POS)),
        _signed(m.parse_u32(data, inner.get(m.CTA_SEQADJ_OFFSET_BEFORE))),
        _signed(m.parse_u32(data, inner.get(m.CTA_SEQADJ_OFFSET_AFTER))),
    )


def _expectation(msg: Any) -> Expectation:
    family = _FAMILY[msg["nfgen_family"]]
    nat = msg.get_attr("CTA_EXPECT_NAT")
    nat_dir = nat_addr = nat_port = None
    if nat is not None:
        nat_dir = nat.get_attr("CTA_EXPECT_NAT_DIR")
        nat_tuple = nat.get_attr("CTA_EXPECT_NAT_TUPLE")
        if nat_tuple is not None:
            t = _decode_tuple(family, nat_tuple)
            nat_addr, nat_port = t.src, t.sport
    return Expectation(
        master=_decode_tuple(family, msg.get_attr("CTA_EXPECT_MASTER")),
        expected=_decode_tuple(family, msg.get_attr("CTA_EXPECT_TUPLE")),
        mask=_decode_tuple(family, msg.get_attr("CTA_EXPECT_MASK")),
        timeout=msg.get_attr("CTA_EXPECT_TIMEOUT") or 0,
        nat_dir=nat_dir,
        nat_addr=nat_addr,
        nat_port=nat_port,
        helper=msg.get_attr("CTA_EXPECT_HELP_NAME"),
        fn=msg.get_attr("CTA_EXPECT_FN"),
        flags=msg.get_attr("CTA_EXPECT_FLAGS") or 0,
        id=msg.get_attr("CTA_EXPECT_ID") or 0,
    )
