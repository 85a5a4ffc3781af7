"""`ftp-alg ha repair-expectations`: make a standby router's committed expectations usable.

After a failover, `conntrackd -c expect` recreates the expectations it replicated, but only
their tuple, master, mask, timeout, flags and helper name: no NAT part and no expect function
(measured; docs/kernel-facts.md, "conntrackd"). Such an expectation matches the data
connection yet leaves it un-NATed, and the inside host never sees it. This command, run by the
standby right after the commit (a keepalived notify script, the lab's takeover step), deletes
each of them whose master is a NATed connection and creates it again with CTA_EXPECT_NAT and
`nat-follow-master`, as ftp-alg's daemon would have.

What the expectation lacks is derived from its master connection:
- the data connection comes from the control connection's REPLY source (the outside server)
  to its REPLY destination (the public address): an inside client's PORT/EPRT, NAT direction
  REPLY, inside address the master's ORIGINAL source;
- it comes from the ORIGINAL source (an outside client) to the ORIGINAL destination (the public
  address): an inside server's 227/229 behind a port forward, NAT direction ORIGINAL, inside
  address the master's REPLY source.
The inside port is the NAT tuple's port when the committed expectation still has one, else
the expected (outside) port: the daemon proposes the inside port first and only chooses
another when that one is taken, which a standby cannot know.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from alg.kernel.ctnetlink import NAT_FOLLOW_MASTER, Ctnetlink
from alg.kernel.cttypes import Conntrack, CtnetlinkError, Expectation, Tuple

REPLY, ORIGINAL = 1, 0


@dataclass(frozen=True)
class Repair:
    """One expectation created again with its NAT part."""

    expected: Tuple
    nat_dir: int
    inside: str
    inside_port: int


def needs_repair(exp: Expectation) -> bool:
    return exp.fn != NAT_FOLLOW_MASTER or exp.nat_dir is None


def nat_for(exp: Expectation, master: Conntrack) -> tuple[int, str, int] | None:
    """(NAT direction, inside address, inside port) for `exp`, or None when its master is
    not NATed in a way ftp-alg creates expectations for."""
    e, o, r = exp.expected, master.original, master.reply
    port = exp.nat_port or e.dport
    if o == r.reversed():
        return None  # no NAT: nothing to map
    if e.src == r.src and e.dst == r.dst:
        return REPLY, o.src, port
    if e.src == o.src and e.dst == o.dst:
        return ORIGINAL, r.src, port
    return None


def repair_expectations(ct: Ctnetlink) -> list[Repair]:
    """Re-create every expectation without its NAT part; returns what was repaired."""
    done: list[Repair] = []
    for exp in ct.list_expectations():
        if not needs_repair(exp):
            continue
        master = ct.get_conntrack(exp.master)
        nat = None if master is None else nat_for(exp, master)
        if nat is None:
            continue
        nat_dir, inside, port = nat
        ct.delete_expectation(exp.expected)
        ct.create_expectation(exp.master, exp.expected, nat_dir, inside, port, max(1, exp.timeout))
        done.append(Repair(exp.expected, nat_dir, inside, port))
    return done


def _repair(args: argparse.Namespace) -> int:
    try:
        with Ctnetlink() as ct:
            repaired = repair_expectations(ct)
    except (CtnetlinkError, OSError) as exc:
        print(f"ftp-alg ha repair-expectations: {exc}", file=sys.stderr)
        return 1
    for r in repaired:
        direction = "reply" if r.nat_dir == REPLY else "original"
        print(f"repaired {r.expected} -> {r.inside} port {r.inside_port} (nat dir {direction})")
    if not args.quiet:
        print(f"{len(repaired)} expectation(s) repaired", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("ha", help="router-pair support (run on the router taking over)")
    ha_sub = p.add_subparsers(dest="ha_command", required=True, metavar="ACTION")
    r = ha_sub.add_parser(
        "repair-expectations",
        help="after `conntrackd -c expect`: give the committed expectations their NAT part",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    r.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    r.set_defaults(func=_repair)
