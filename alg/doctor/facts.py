"""What `ftp-alg doctor` knows about a router, as plain data, and the parsers for the texts it
is gathered from (`iptables-save`, /proc/net/netfilter/nfnetlink_queue, `conntrack -S`).

The checks read only this, so each one is tested with sample texts, no router needed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from alg.kernel.rules import RuleOptions


@dataclass(frozen=True)
class Facts:
    """Everything gathered; None means "could not be read" (the check then says so or skips)."""

    # What ftp-alg should look like here: the running daemon's ports and queues, else the
    # config's (`config_ports` is the config file's own, None without one).
    expected: RuleOptions
    config_ports: tuple[int, ...] | None = None
    config_error: str = ""
    status_socket: str = ""
    status: dict[str, Any] | None = None
    status_error: str = ""
    nfqueue: str | None = None  # /proc/net/netfilter/nfnetlink_queue
    # `iptables-save` output per tool name: "iptables", "ip6tables" (the flavour `rules apply`
    # uses), and the other flavour's ("iptables-legacy", ...) when it holds tables.
    saves: dict[str, str] = field(default_factory=dict)
    nft_ruleset: str | None = None
    auto_helper: str | None = None  # net.netfilter.nf_conntrack_helper (gone since Linux 6.0)
    ftp_module_ports: str | None = None  # nf_conntrack_ftp's `ports` parameter
    expect_max: int | None = None
    expect_count: int | None = None
    invalid_delta: int | None = None  # INVALID packets counted over `invalid_seconds`
    invalid_seconds: float = 0.0
    conntrackd_running: bool = False


@dataclass(frozen=True)
class QueueLine:
    """One queue of /proc/net/netfilter/nfnetlink_queue."""

    number: int
    portid: int  # the netlink port of the bound socket; 0 = nobody reads
    waiting: int
    dropped: int  # queue full
    user_dropped: int  # netlink socket buffer full


def parse_nfqueue(text: str) -> dict[int, QueueLine]:
    """Fields: number, peer portid, queue_total, copy mode, copy range, queue_dropped,
    user_dropped, id sequence, 1."""
    found: dict[int, QueueLine] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and all(x.isdigit() for x in f[:7]):
            found[int(f[0])] = QueueLine(int(f[0]), int(f[1]), int(f[2]), int(f[5]), int(f[6]))
    return found


Rule = tuple[str, ...]


def parse_save(text: str) -> dict[str, dict[str, list[Rule]]]:
    """`iptables-save` text -> table -> chain -> rules (each the tokens after `-A CHAIN`),
    normalised so a rendered rule compares equal: `-m tcp` (implied by `-p tcp --dport`)
    dropped, multiport lists sorted, quotes removed."""
    tables: dict[str, dict[str, list[Rule]]] = {}
    table: dict[str, list[Rule]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            table.setdefault(tokens[1], []).append(normalise(tuple(tokens[2:])))
    return tables


def normalise(rule: Rule) -> Rule:
    out: list[str] = []
    i = 0
    while i < len(rule):
        if rule[i] == "-m" and i + 1 < len(rule) and rule[i + 1] in ("tcp", "udp"):
            i += 2
            continue
        token = rule[i]
        if out and out[-1] in ("--dports", "--sports"):
            token = ",".join(sorted(token.split(","), key=_port_key))
        out.append(token)
        i += 1
    return tuple(out)


def _port_key(item: str) -> tuple[int, str]:
    head = item.split(":")[0]
    return (int(head) if head.isdigit() else 0, item)


_PORT_OPTS = re.compile(r"^--(d|s)ports?$")


def rule_ports(rule: Rule) -> tuple[int, ...]:
    """The ports a rule matches by --dport(s)/--sport(s) (ranges left out), in order."""
    for i, token in enumerate(rule[:-1]):
        if _PORT_OPTS.match(token):
            return tuple(int(p) for p in rule[i + 1].split(",") if p.isdigit())
    return ()


def conntrack_invalid(text: str) -> int:
    """The INVALID counter of `conntrack -S`, summed over CPUs."""
    return sum(int(n) for n in re.findall(r"\binvalid=(\d+)", text))
