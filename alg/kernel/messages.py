# mypy: allow-subclassing-any
"""ctnetlink message layouts, described with pyroute2's netlink attribute framework.

pyroute2 ships conntrack messages but no expectation messages, so both are declared here from
the attribute enums of `linux/netfilter/nfnetlink_conntrack.h` (the numbers are the kernel's,
named once below and used in the layouts). Only the attributes ftp-alg sends or reads are
named; anything else the kernel adds decodes as UNKNOWN and is ignored.

Replies and events are decoded with the pyroute2 classes. Requests are encoded by the small
`nest`/`tuple_attr`/`message` functions instead: pyroute2 needs ~0.8 ms to encode one
expectation, more than a daemon can spend per PORT command, while these take a few µs. A test
checks that both encoders produce the same bytes, so the classes stay the single description.

Every nest carries NLA_F_NESTED: the kernel accepts nests either way today, but newer policies
are strict about it and the flag costs nothing.
"""

from __future__ import annotations

import struct

from pyroute2.netlink import NLA_F_NESTED, nla
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP, nfgen_msg

# enum cntl_msg_types / ctnl_exp_msg_types; the netlink message type carries the subsystem in
# its high byte.
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | 0
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | 1
CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | 2
EXP_NEW = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | 0
EXP_GET = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | 1
EXP_DELETE = (NFNL_SUBSYS_CTNETLINK_EXP << 8) | 2

# enum ctattr_type (the part used here)
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_HELP = 5
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_ID = 12
CTA_SEQ_ADJ_ORIG = 15
CTA_SEQ_ADJ_REPLY = 16
CTA_MARK_MASK = 21
# enum ctattr_protoinfo, ctattr_protoinfo_tcp
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
# enum tcp_conntrack (the states after both FINs or a RST: no more payload belongs there)
TCP_CONNTRACK_LAST_ACK = 6
TCP_CONNTRACK_TIME_WAIT = 7
TCP_CONNTRACK_CLOSE = 8
# enum ctattr_seqadj
CTA_SEQADJ_CORRECTION_POS = 1
CTA_SEQADJ_OFFSET_BEFORE = 2
CTA_SEQADJ_OFFSET_AFTER = 3
# enum ctattr_tuple
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
# enum ctattr_ip
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
# enum ctattr_l4proto
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
# enum ctattr_help
CTA_HELP_NAME = 1
# enum ctattr_expect
CTA_EXPECT_MASTER = 1
CTA_EXPECT_TUPLE = 2
CTA_EXPECT_MASK = 3
CTA_EXPECT_TIMEOUT = 4
CTA_EXPECT_ID = 5
CTA_EXPECT_HELP_NAME = 6
CTA_EXPECT_ZONE = 7
CTA_EXPECT_FLAGS = 8
CTA_EXPECT_CLASS = 9
CTA_EXPECT_NAT = 10
CTA_EXPECT_FN = 11
# enum ctattr_expect_nat
CTA_EXPECT_NAT_DIR = 1
CTA_EXPECT_NAT_TUPLE = 2


class cta_ip(nla):
    """enum ctattr_ip: the addresses of a tuple (or of a mask)."""

    nla_flags = NLA_F_NESTED
    prefix = "CTA_IP_"
    nla_map = (
        (CTA_IP_V4_SRC, "CTA_IP_V4_SRC", "ip4addr"),
        (CTA_IP_V4_DST, "CTA_IP_V4_DST", "ip4addr"),
        (CTA_IP_V6_SRC, "CTA_IP_V6_SRC", "ip6addr"),
        (CTA_IP_V6_DST, "CTA_IP_V6_DST", "ip6addr"),
    )


class cta_proto(nla):
    """enum ctattr_l4proto: protocol number and ports (network byte order)."""

    nla_flags = NLA_F_NESTED
    prefix = "CTA_PROTO_"
    nla_map = (
        (CTA_PROTO_NUM, "CTA_PROTO_NUM", "uint8"),
        (CTA_PROTO_SRC_PORT, "CTA_PROTO_SRC_PORT", "be16"),
        (CTA_PROTO_DST_PORT, "CTA_PROTO_DST_PORT", "be16"),
    )


class cta_tuple(nla):
    """enum ctattr_tuple: one direction of a connection, or an expectation tuple or mask."""

    nla_flags = NLA_F_NESTED
    prefix = "CTA_TUPLE_"
    nla_map = (
        (CTA_TUPLE_IP, "CTA_TUPLE_IP", "cta_ip"),
        (CTA_TUPLE_PROTO, "CTA_TUPLE_PROTO", "cta_proto"),
    )
    cta_ip = cta_ip
    cta_proto = cta_proto


class cta_help(nla):
    """enum ctattr_help: the helper attached to a connection (our anchor is `sane`)."""

    nla_flags = NLA_F_NESTED
    prefix = "CTA_HELP_"
    nla_map = ((CTA_HELP_NAME, "CTA_HELP_NAME", "asciiz"),)


class cta_expect_nat(nla):
    """enum ctattr_expect_nat: where `nat-follow-master` sends the expected connection."""

    nla_flags = NLA_F_NESTED
    prefix = "CTA_EXPECT_NAT_"
    nla_map = (
        (CTA_EXPECT_NAT_DIR, "CTA_EXPECT_NAT_DIR", "be32"),
        (CTA_EXPECT_NAT_TUPLE, "CTA_EXPECT_NAT_TUPLE", "cta_tuple"),
    )
    cta_tuple = cta_tuple


class ct_msg(nfgen_msg):
    """enum ctattr_type, the part a lookup needs: both tuples of a conntrack entry."""

    prefix = "CTA_"
    nla_map = (
        (CTA_TUPLE_ORIG, "CTA_TUPLE_ORIG", "cta_tuple"),
        (CTA_TUPLE_REPLY, "CTA_TUPLE_REPLY", "cta_tuple"),
        (CTA_STATUS, "CTA_STATUS", "be32"),
        (CTA_HELP, "CTA_HELP", "cta_help"),
        (CTA_TIMEOUT, "CTA_TIMEOUT", "be32"),
        (CTA_ID, "CTA_ID", "be32"),
    )
    cta_tuple = cta_tuple
    cta_help = cta_help


class exp_msg(nfgen_msg):
    """enum ctattr_expect: one expectation (subsystem NFNL_SUBSYS_CTNETLINK_EXP)."""

    prefix = "CTA_EXPECT_"
    nla_map = (
        (CTA_EXPECT_MASTER, "CTA_EXPECT_MASTER", "cta_tuple"),
        (CTA_EXPECT_TUPLE, "CTA_EXPECT_TUPLE", "cta_tuple"),
        (CTA_EXPECT_MASK, "CTA_EXPECT_MASK", "cta_tuple"),
        (CTA_EXPECT_TIMEOUT, "CTA_EXPECT_TIMEOUT", "be32"),
        (CTA_EXPECT_ID, "CTA_EXPECT_ID", "be32"),
        (CTA_EXPECT_HELP_NAME, "CTA_EXPECT_HELP_NAME", "asciiz"),
        (CTA_EXPECT_ZONE, "CTA_EXPECT_ZONE", "be16"),
        (CTA_EXPECT_FLAGS, "CTA_EXPECT_FLAGS", "be32"),
        (CTA_EXPECT_CLASS, "CTA_EXPECT_CLASS", "be32"),
        (CTA_EXPECT_NAT, "CTA_EXPECT_NAT", "cta_expect_nat"),
        (CTA_EXPECT_FN, "CTA_EXPECT_FN", "asciiz"),
    )
    cta_tuple = cta_tuple
    cta_expect_nat = cta_expect_nat


# --- request encoding (same bytes as pyroute2 would produce for the classes above) ---------

_NLA_HDR = struct.Struct("=HH")
_NLMSG_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")  # family, version NFNETLINK_V0, res_id (0 in any byte order)
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _NLA_HDR.pack(length, atype) + payload + b"\0" * (-length % 4)


def nest(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def be32(atype: int, value: int) -> bytes:
    return attr(atype, _BE32.pack(value))


def asciiz(atype: int, value: str) -> bytes:
    return attr(atype, value.encode("ascii") + b"\0")


def tuple_attr(
    atype: int, v6: bool, src: bytes, dst: bytes, proto: int, sport: int, dport: int
) -> bytes:
    """A CTA_TUPLE_* nest; `src`/`dst` are packed addresses (4 or 16 bytes)."""
    ip_src, ip_dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if v6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    return nest(
        atype,
        nest(CTA_TUPLE_IP, attr(ip_src, src), attr(ip_dst, dst)),
        nest(
            CTA_TUPLE_PROTO,
            attr(CTA_PROTO_NUM, bytes((proto,))),
            attr(CTA_PROTO_SRC_PORT, _BE16.pack(sport)),
            attr(CTA_PROTO_DST_PORT, _BE16.pack(dport)),
        ),
    )


def message(msg_type: int, flags: int, seq: int, family: int, attrs: bytes) -> bytes:
    """A whole nfnetlink request: nlmsghdr, nfgenmsg, attributes."""
    body = _NFGEN.pack(family, 0, 0) + attrs
    return _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), msg_type, flags, seq, 0) + body


# --- reply decoding for the hot paths (same values as the pyroute2 classes decode) ---------
#
# Decoding a conntrack reply with the classes above costs ~250 µs (every nest becomes an
# object); lookups and destroy events only need the tuples, which this walk reads in a few µs.
# The classes remain the reference: a test decodes real kernel replies both ways.

_NLMSG_BODY = _NLMSG_HDR.size + _NFGEN.size


def attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """{type: (payload start, payload end)} of the attributes in data[start:end]; first wins."""
    found: dict[int, tuple[int, int]] = {}
    while start + 4 <= end:
        length, atype = _NLA_HDR.unpack_from(data, start)
        if length < 4 or start + length > end:
            break
        found.setdefault(atype & 0x3FFF, (start + 4, start + length))
        start += (length + 3) & ~3
    return found


def message_attrs(data: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """(nfgen family, top-level attributes) of one whole nfnetlink message."""
    return data[_NLMSG_HDR.size], attrs(data, _NLMSG_BODY, len(data))


def parse_tuple(data: bytes, span: tuple[int, int]) -> tuple[bytes, bytes, int, int, int]:
    """(src, dst, proto, sport, dport) of a CTA_TUPLE_* nest; addresses packed."""
    outer = attrs(data, *span)
    ip = attrs(data, *outer[CTA_TUPLE_IP])
    proto = attrs(data, *outer[CTA_TUPLE_PROTO])
    src = ip.get(CTA_IP_V4_SRC) or ip[CTA_IP_V6_SRC]
    dst = ip.get(CTA_IP_V4_DST) or ip[CTA_IP_V6_DST]
    num = proto[CTA_PROTO_NUM]
    sport = proto.get(CTA_PROTO_SRC_PORT)
    dport = proto.get(CTA_PROTO_DST_PORT)
    return (
        bytes(data[src[0] : src[1]]),
        bytes(data[dst[0] : dst[1]]),
        data[num[0]],
        _BE16.unpack_from(data, sport[0])[0] if sport else 0,
        _BE16.unpack_from(data, dport[0])[0] if dport else 0,
    )


def parse_u32(data: bytes, span: tuple[int, int] | None) -> int:
    return int(_BE32.unpack_from(data, span[0])[0]) if span else 0


def parse_str(data: bytes, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    return bytes(data[span[0] : span[1]]).split(b"\0", 1)[0].decode("ascii", "replace")
