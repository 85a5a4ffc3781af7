"""What the gateway does with one address-bearing line: the policy, in one function.

The announcer must name itself (anti-bounce, RFC 2577 3): a client's PORT/EPRT/LPRT its own
address, a server's 227/228 its own. Two names count as its own: the address it really has
(the inside one, which the gateway rewrites to the outside address) and the outside address
the peer already knows (servers configured with their public address, vsftpd `pasv_address`,
clients announcing theirs): then the text is right as it stands and only the expectation is
needed. Everything else is refused with a reason, and the line leaves unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

from alg.core.commands import DataExpectation, Dir, FlowKey
from alg.core.config import Config
from alg.core.grammar import HostPort, Kind
from alg.core.protocol import Notice, Refused
from alg.core.reports import EventKind, Reason
from alg.core.text import show_addr


class Plan(NamedTuple):
    """Create `proposal`'s expectation; rewrite the span to `announce` and the port the
    adapter reserved, unless `fixed` (the text already names the outside address)."""

    proposal: DataExpectation
    fixed: bool
    announce: bytes


def decide_default(
    line: bytes,
    session: int,
    family: int,
    tuples: tuple[FlowKey, FlowKey] | None,
    config: Config,
) -> Plan | Refused | Notice:
    """RFC 959's default data port: the server connects from port 20 to the client's control
    connection port. Behind masquerade that port is the router's (the reply tuple's), so the
    data connection must be expected there and sent on to the client's own port."""
    what = "default data port"
    if tuples is None:
        return Refused(Reason.NAT_UNKNOWN, f"{what}: the NAT mapping is unknown", line)
    orig, reply = tuples
    client, cport, outside, outside_port = orig[0], orig[1], reply[2], reply[3]
    if client == outside and cport == outside_port:
        return Notice(EventKind.UNCHANGED, f"{what}: no NAT on the client's side, nothing to do")
    if cport < config.min_data_port:
        return Refused(
            Reason.LOW_PORT,
            f"{what}: the client's control port {cport} < {config.min_data_port}",
            line,
        )
    proposal = DataExpectation(
        session=session,
        kind=Kind.DEFAULT,
        family=family,
        master=orig,
        peer=reply[0],
        outside=outside,
        outside_port=outside_port,
        inside=client,
        inside_port=cport,
        nat_dir=Dir.REPLY,
        timeout=config.expect_timeout,
    )
    return Plan(proposal, True, outside)


def decide(
    hp: HostPort,
    line: bytes,
    from_client: bool,
    session: int,
    family: int,
    tuples: tuple[FlowKey, FlowKey] | None,
    config: Config,
) -> Plan | Refused | Notice:
    what = hp.kind.value
    if tuples is None:
        return Refused(
            Reason.NAT_UNKNOWN,
            f"{what}: the connection's NAT mapping is unknown (no conntrack entry)",
            line,
        )
    if hp.family and hp.family != family:
        return Refused(
            Reason.FAMILY,
            f"{what} names an IPv{hp.family} address on an IPv{family} control connection",
            line,
        )
    orig, reply = tuples
    if from_client:
        own, outside, peer = orig[0], reply[2], reply[0]
    else:
        own, outside, peer = reply[0], orig[2], orig[0]
    addr = hp.addr if hp.addr is not None else own
    names_outside = addr == outside and outside != own
    if addr != own and not names_outside:
        if config.allow_fxp:
            return Notice(
                EventKind.FXP,
                f"{what} names {show_addr(addr)}, not {show_addr(own)}: FXP allowed, "
                "passed unchanged",
            )
        return Refused(
            Reason.BOUNCE,
            f"{what} names {show_addr(addr)}, not the "
            f"{'client' if from_client else 'server'} {show_addr(own)}",
            line,
        )
    if hp.port < config.min_data_port:
        return Refused(
            Reason.LOW_PORT, f"{what} names data port {hp.port} < {config.min_data_port}", line
        )
    if outside == own:
        return Notice(
            EventKind.UNCHANGED,
            f"{what} {show_addr(own)}:{hp.port}: no NAT on this side, nothing to rewrite",
        )
    proposal = DataExpectation(
        session=session,
        kind=hp.kind,
        family=family,
        master=orig,
        peer=peer,
        outside=outside,
        outside_port=hp.port,
        inside=own,
        inside_port=hp.port,
        nat_dir=Dir.REPLY if from_client else Dir.ORIGINAL,
        timeout=config.expect_timeout,
    )
    return Plan(proposal, names_outside, config.announce.get(outside, outside))
