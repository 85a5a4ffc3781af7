"""The fast encoder and tuple walk agree with pyroute2's classes, which describe the layouts."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.kernel import messages as m
from alg.kernel.ctnetlink import Ctnetlink, Tuple, conntrack_from_message
from alg.kernel.netlink import NLM_F_ACK, NLM_F_REQUEST
from alg.lab import netns
from tests.kernel.lab import CLIENT4, OUTSIDE4, Lab

ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
tuples = st.one_of(
    st.builds(Tuple, st.just(4), st.just(6), v4, v4, ports, ports),
    st.builds(Tuple, st.just(6), st.just(6), v6, v6, ports, ports),
)


def _pyroute2_tuple(t: Tuple) -> dict[str, Any]:
    v = "V6" if t.family == 6 else "V4"
    return {
        "attrs": [
            ["CTA_TUPLE_IP", {"attrs": [[f"CTA_IP_{v}_SRC", t.src], [f"CTA_IP_{v}_DST", t.dst]]}],
            [
                "CTA_TUPLE_PROTO",
                {
                    "attrs": [
                        ["CTA_PROTO_NUM", t.proto],
                        ["CTA_PROTO_SRC_PORT", t.sport],
                        ["CTA_PROTO_DST_PORT", t.dport],
                    ]
                },
            ],
        ]
    }


def _fast_tuple(atype: int, t: Tuple) -> bytes:
    af = socket.AF_INET6 if t.family == 6 else socket.AF_INET
    src, dst = socket.inet_pton(af, t.src), socket.inet_pton(af, t.dst)
    return m.tuple_attr(atype, t.family == 6, src, dst, t.proto, t.sport, t.dport)


@given(master=tuples, expected=tuples, nat_dir=st.integers(0, 1), timeout=st.integers(0, 3600))
def test_expectation_encoding_equals_pyroute2(
    master: Tuple, expected: Tuple, nat_dir: int, timeout: int
) -> None:
    ref = m.exp_msg()
    ref["nfgen_family"] = socket.AF_INET
    ref["attrs"] = [
        ["CTA_EXPECT_MASTER", _pyroute2_tuple(master)],
        ["CTA_EXPECT_TUPLE", _pyroute2_tuple(expected)],
        ["CTA_EXPECT_TIMEOUT", timeout],
        [
            "CTA_EXPECT_NAT",
            {
                "attrs": [
                    ["CTA_EXPECT_NAT_DIR", nat_dir],
                    ["CTA_EXPECT_NAT_TUPLE", _pyroute2_tuple(expected)],
                ]
            },
        ],
        ["CTA_EXPECT_FN", "nat-follow-master"],
    ]
    ref["header"] = {"type": m.EXP_NEW, "flags": 5, "sequence_number": 7, "pid": 0}
    ref.encode()

    attrs = (
        _fast_tuple(m.CTA_EXPECT_MASTER, master)
        + _fast_tuple(m.CTA_EXPECT_TUPLE, expected)
        + m.be32(m.CTA_EXPECT_TIMEOUT, timeout)
        + m.nest(
            m.CTA_EXPECT_NAT,
            m.be32(m.CTA_EXPECT_NAT_DIR, nat_dir),
            _fast_tuple(m.CTA_EXPECT_NAT_TUPLE, expected),
        )
        + m.asciiz(m.CTA_EXPECT_FN, "nat-follow-master")
    )
    assert m.message(m.EXP_NEW, 5, 7, socket.AF_INET, attrs) == bytes(ref.data)


@given(t=tuples)
def test_tuple_walk_equals_pyroute2_decoding(t: Tuple) -> None:
    data = m.message(m.CT_GET, 1, 1, socket.AF_INET, _fast_tuple(m.CTA_TUPLE_ORIG, t))
    msg = m.ct_msg(data)
    msg.decode()
    cta = msg.get_attr("CTA_TUPLE_ORIG")
    v = "V6" if t.family == 6 else "V4"
    ip, proto = cta.get_attr("CTA_TUPLE_IP"), cta.get_attr("CTA_TUPLE_PROTO")

    _family, top = m.message_attrs(data)
    src, dst, num, sport, dport = m.parse_tuple(data, top[m.CTA_TUPLE_ORIG])

    af = socket.AF_INET6 if t.family == 6 else socket.AF_INET
    assert (socket.inet_ntop(af, src), socket.inet_ntop(af, dst)) == (
        ip.get_attr(f"CTA_IP_{v}_SRC"),
        ip.get_attr(f"CTA_IP_{v}_DST"),
    )
    assert (num, sport, dport) == (
        proto.get_attr("CTA_PROTO_NUM"),
        proto.get_attr("CTA_PROTO_SRC_PORT"),
        proto.get_attr("CTA_PROTO_DST_PORT"),
    )


def test_tuple_canonical_form_and_validation() -> None:
    t = Tuple(6, 6, "FD77:1:0::2", "fd77:2::0:2", 1, 21)
    assert (t.src, t.dst) == ("fd77:1::2", "fd77:2::2")
    assert t.reversed() == Tuple(6, 6, "fd77:2::2", "fd77:1::2", 21, 1)
    assert str(t) == "[fd77:1::2]:1 -> [fd77:2::2]:21"
    for bad in (
        (5, 6, "1.2.3.4", "1.2.3.4", 1, 1),
        (4, 6, "fd77::1", "1.2.3.4", 1, 1),
        (4, 6, "1.2.3.4", "1.2.3.400", 1, 1),
        (4, 6, "1.2.3.4", "1.2.3.4", 70000, 1),
        (4, 256, "1.2.3.4", "1.2.3.4", 1, 1),
    ):
        with pytest.raises(ValueError):
            Tuple(*bad)


@pytest.mark.netns
def test_real_conntrack_reply_decodes_alike(lab: Lab) -> None:
    """A reply from the kernel (with protoinfo, counters...) read both ways."""
    lab.listen(lab.outside, OUTSIDE4, 21)
    sock = lab.connect(lab.client, OUTSIDE4, 21)
    seen = Tuple(4, 6, CLIENT4, OUTSIDE4, sock.getsockname()[1], 21)
    with netns.enter(lab.router), Ctnetlink() as ct:
        attrs = _fast_tuple(m.CTA_TUPLE_ORIG, seen)
        flags = NLM_F_REQUEST | NLM_F_ACK
        (raw,) = ct._request(m.CT_GET, flags, socket.AF_INET, attrs, None)
        (ref,) = ct._request(m.CT_GET, flags, socket.AF_INET, attrs, m.ct_msg)

    fast = conntrack_from_message(raw)
    assert fast is not None and fast.original == seen
    for name, got in (("CTA_TUPLE_ORIG", fast.original), ("CTA_TUPLE_REPLY", fast.reply)):
        cta = ref.get_attr(name)
        ip, proto = cta.get_attr("CTA_TUPLE_IP"), cta.get_attr("CTA_TUPLE_PROTO")
        assert (got.src, got.dst, got.sport, got.dport) == (
            ip.get_attr("CTA_IP_V4_SRC"),
            ip.get_attr("CTA_IP_V4_DST"),
            proto.get_attr("CTA_PROTO_SRC_PORT"),
            proto.get_attr("CTA_PROTO_DST_PORT"),
        )
    assert fast.status == ref.get_attr("CTA_STATUS")
