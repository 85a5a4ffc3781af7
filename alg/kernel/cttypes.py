"""The plain values the ctnetlink adapter takes and returns, and its exceptions.

Kept free of pyroute2 and netlink, so the daemon can build and compare tuples without
opening anything.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

AF_OF_FAMILY: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a connection as conntrack sees it (addresses in canonical text form).

    In an expectation tuple, sport 0 means "any source port".
    """

    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int

    def __post_init__(self) -> None:
        af = AF_OF_FAMILY.get(self.family)
        if af is None:
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        for name in ("src", "dst"):
            try:  # canonical text form, as the kernel's replies decode (inet_ntop)
                canonical = socket.inet_ntop(af, socket.inet_pton(af, getattr(self, name)))
            except (OSError, TypeError):
                raise ValueError(
                    f"{name} {getattr(self, name)!r} is not an IPv{self.family} address"
                ) from None
            object.__setattr__(self, name, canonical)
        for name, top in (("proto", 255), ("sport", 65535), ("dport", 65535)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"{name} out of range: {value!r}")

    @classmethod
    def known(cls, family: int, proto: int, src: str, dst: str, sport: int, dport: int) -> Tuple:
        """A tuple of values that are valid by construction (inet_ntop of packed addresses,
        ports of 16 bits): the daemon builds several per session, and the checks above cost
        more than the rest of building them."""
        t = object.__new__(cls)
        for name, value in zip(_FIELDS, (family, proto, src, dst, sport, dport), strict=True):
            object.__setattr__(t, name, value)
        return t

    def reversed(self) -> Tuple:
        """The same connection seen from the other direction (before any NAT)."""
        return Tuple.known(self.family, self.proto, self.dst, self.src, self.dport, self.sport)

    def __str__(self) -> str:
        def ep(addr: str, port: int) -> str:
            return f"[{addr}]:{port}" if self.family == 6 else f"{addr}:{port}"

        return f"{ep(self.src, self.sport)} -> {ep(self.dst, self.dport)}"


_FIELDS = ("family", "proto", "src", "dst", "sport", "dport")


@dataclass(frozen=True, slots=True)
class SeqAdj:
    """A direction's struct nf_ct_seqadj as ctnetlink carries it (offsets signed)."""

    correction_pos: int
    offset_before: int
    offset_after: int


@dataclass(frozen=True, slots=True)
class Conntrack:
    """A conntrack entry: both directions, the helper attached to it (None: no anchor), and
    the seqadj record of each direction (None until IPS_SEQ_ADJUST is set)."""

    original: Tuple
    reply: Tuple
    helper: str | None
    status: int
    timeout: int
    seqadj_original: SeqAdj | None = None
    seqadj_reply: SeqAdj | None = None
    id: int = 0  # CTA_ID: unique among the entries alive at once
    tcp_state: int | None = None  # CTA_PROTOINFO_TCP_STATE (enum tcp_conntrack)
    mark: int = 0  # CTA_MARK, the connmark


@dataclass(frozen=True, slots=True)
class Expectation:
    """An expectation as the kernel lists it."""

    master: Tuple
    expected: Tuple
    mask: Tuple
    timeout: int
    nat_dir: int | None
    nat_addr: str | None
    nat_port: int | None
    helper: str | None
    fn: str | None
    flags: int
    id: int


class CtnetlinkError(Exception):
    """A ctnetlink request failed; `errno` is the kernel's answer."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class ExpectationExists(CtnetlinkError):
    """Another expectation already covers this tuple: choose another outside port."""
