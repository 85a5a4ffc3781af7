"""The packet-filter rules ftp-alg needs, rendered from options (pure: no I/O).

The same description yields three things, so they cannot drift apart: the steps
`ftp-alg rules apply|remove` runs (`rules_exec`), the shell script admins can read and run by
hand, and the nftables file. `rules/` at the top of the repository holds the default renderings
and a test checks that they equal `render_iptables_script()` and `render_nft()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CHAIN = "FTP_ALG"  # our own chain in the raw table: `remove` takes away exactly what we added
HOOKS = ("PREROUTING", "OUTPUT")  # forwarded and incoming traffic; the router's own connections
NFT_TABLE = "ftp_alg"  # `table inet ftp_alg`
ANCHOR_HELPER = "sane"
TOOLS = {4: "iptables", 6: "ip6tables"}
MAX_PORTS = 15  # the multiport match's limit

WHY = """\
Why these rules:
- Control-connection packets go to NFQUEUE in the raw table, before conntrack, in both
  directions: to the control ports (PORT, EPRT) and from them (227, 229). The ALG changes the
  length of those lines and shifts later seq/ack numbers itself, so conntrack must only ever
  see the corrected numbers. Queued after conntrack (mangle FORWARD), the server's acks cover
  bytes conntrack never saw: they are marked INVALID, not de-NATed, and the router sends RST.
- --queue-bypass (nft: bypass): when the daemon is not running, FTP passes unchanged instead
  of being dropped.
- The kernel creates an expectation (ctnetlink EXP_NEW) only for a connection that has a
  conntrack helper, and this kernel has no user-space helpers (nfnetlink_cthelper). The `sane`
  helper only parses the SANE scanner protocol's binary requests, never FTP text, so it serves
  as an inert anchor. Never attach the `ftp` helper as well: it would rewrite and expect on
  its own, behind the ALG's back.
- The anchor matches the destination port as packets arrive, before DNAT, so port-forwarded
  control connections (server behind the router) get it too; a rule on the inside address
  would never match.
- iptables: the anchor rule comes before the NFQUEUE rule, because a packet accepted from the
  queue continues at the next hook, not at the next rule. It matches every packet: in raw,
  conntrack has not run (no --ctstate NEW), and the CT target's template is only used when
  conntrack creates the connection, so later packets are unaffected.
- With a queue range (--queue-balance), the kernel spreads connections by addresses as seen
  before NAT, so the two directions of one connection can land on different queues: one
  process must serve the whole range."""


@dataclass(frozen=True)
class RuleOptions:
    queue_num: int = 0
    ports: tuple[int, ...] = (21, 2121)
    queue_balance: tuple[int, int] | None = None  # first and last queue, both included
    families: tuple[int, ...] = (4, 6)

    def __post_init__(self) -> None:
        if not self.ports or len(self.ports) > MAX_PORTS:
            raise ValueError(f"give 1 to {MAX_PORTS} control ports")
        if any(not 1 <= p <= 65535 for p in self.ports):
            raise ValueError("control ports must be in 1..65535")
        if not 0 <= self.queue_num <= 65535:
            raise ValueError("queue number must be in 0..65535")
        if self.queue_balance is not None:
            first, last = self.queue_balance
            if not 0 <= first < last <= 65535:
                raise ValueError("queue balance must be A:B with 0 <= A < B <= 65535")
        if not self.families or any(f not in (4, 6) for f in self.families):
            raise ValueError("families must be 4 and/or 6")


def parse_ports(text: str) -> tuple[int, ...]:
    """'21,2121' -> (21, 2121); duplicates dropped, order kept."""
    ports: list[int] = []
    for item in text.split(","):
        try:
            port = int(item.strip())
        except ValueError:
            raise ValueError(f"not a port list: {text!r}") from None
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def parse_balance(text: str) -> tuple[int, int]:
    first, sep, last = text.partition(":")
    try:
        if sep:
            return int(first), int(last)
    except ValueError:
        pass
    raise ValueError(f"queue balance must be A:B, not {text!r}")


# --- iptables --------------------------------------------------------------------------------

StepKind = Literal["chain", "rule", "jump", "unjump", "drop_chain"]


@dataclass(frozen=True)
class Step:
    """One idempotent change to the raw table of one family.

    chain: create CHAIN or empty it if it exists; rule: append `args` to CHAIN; jump: insert
    `-j CHAIN` first in `hook` unless present; unjump: delete every `-j CHAIN` from `hook`;
    drop_chain: empty and delete CHAIN if it exists.
    """

    kind: StepKind
    tool: str
    hook: str = ""
    args: tuple[str, ...] = field(default=())


def _port_match(opt: str, ports: tuple[int, ...]) -> tuple[str, ...]:
    if len(ports) == 1:
        return ("-p", "tcp", f"--{opt}", str(ports[0]))
    return ("-p", "tcp", "-m", "multiport", f"--{opt}s", ",".join(map(str, ports)))


def _queue_target(opts: RuleOptions) -> tuple[str, ...]:
    if opts.queue_balance is not None:
        first, last = opts.queue_balance
        return ("-j", "NFQUEUE", "--queue-balance", f"{first}:{last}", "--queue-bypass")
    return ("-j", "NFQUEUE", "--queue-num", str(opts.queue_num), "--queue-bypass")


def iptables_rules(opts: RuleOptions) -> tuple[tuple[str, ...], ...]:
    """The rules inside CHAIN, in order (the same for both families)."""
    to_ports = _port_match("dport", opts.ports)
    return (
        (*to_ports, "-j", "CT", "--helper", ANCHOR_HELPER),
        (*to_ports, *_queue_target(opts)),
        (*_port_match("sport", opts.ports), *_queue_target(opts)),
    )


def apply_steps(opts: RuleOptions) -> list[Step]:
    steps: list[Step] = []
    for family in opts.families:
        tool = TOOLS[family]
        steps.append(Step("chain", tool))
        steps += [Step("rule", tool, args=rule) for rule in iptables_rules(opts)]
        steps += [Step("jump", tool, hook=hook) for hook in HOOKS]
    return steps


def remove_steps(families: tuple[int, ...] = (4, 6)) -> list[Step]:
    steps: list[Step] = []
    for family in families:
        tool = TOOLS[family]
        steps += [Step("unjump", tool, hook=hook) for hook in HOOKS]
        steps.append(Step("drop_chain", tool))
    return steps


def shell_line(step: Step) -> str:
    """The POSIX shell equivalent of `rules_exec` running the step."""
    ipt = f"{step.tool} -w -t raw"
    if step.kind == "chain":
        return f"{ipt} -N {CHAIN} 2>/dev/null || {ipt} -F {CHAIN}"
    if step.kind == "rule":
        return f"{ipt} -A {CHAIN} {' '.join(step.args)}"
    if step.kind == "jump":
        return f"{ipt} -C {step.hook} -j {CHAIN} 2>/dev/null || {ipt} -I {step.hook} 1 -j {CHAIN}"
    if step.kind == "unjump":
        return f"while {ipt} -D {step.hook} -j {CHAIN} 2>/dev/null; do :; done"
    return f"if {ipt} -F {CHAIN} 2>/dev/null; then {ipt} -X {CHAIN}; fi"


def _comment(text: str) -> str:
    return "\n".join(f"# {line}".rstrip() for line in text.splitlines())


def render_iptables_script(opts: RuleOptions | None = None) -> str:
    opts = opts or RuleOptions()
    tools = " and ".join(TOOLS[f] for f in opts.families)
    saves = "; ".join(f"{TOOLS[f]}-save -t raw" for f in opts.families)
    body = [
        "#!/bin/sh",
        f"# ftp-alg rule set for {tools} (raw table, chain {CHAIN}).",
        "# Rendered by `ftp-alg rules render --backend iptables`; `ftp-alg rules apply` runs",
        "# the same commands. Usage: sh ftp-alg.iptables.sh apply|remove",
        "#",
        _comment(WHY),
        "set -e",
        "",
        "ftp_alg_check() {",
        "\t# refuse while the kernel ftp helper is attached: it would fight the ALG",
        f"\tif {{ {saves}; }} 2>/dev/null | grep -Eq -- '--helper \"?ftp(-[0-9]+)?\"?( |$)'; then",
        "\t\techo \"ftp-alg: remove the rules using '-j CT --helper ftp' first\" >&2",
        "\t\texit 1",
        "\tfi",
        "}",
        "",
        "ftp_alg_apply() {",
        *(f"\t{shell_line(s)}" for s in apply_steps(opts)),
        "}",
        "",
        "ftp_alg_remove() {",
        *(f"\t{shell_line(s)}" for s in remove_steps(opts.families)),
        "}",
        "",
        'case "${1:-}" in',
        "apply) ftp_alg_check; ftp_alg_apply ;;",
        "remove) ftp_alg_remove ;;",
        '*) echo "usage: $0 apply|remove" >&2; exit 2 ;;',
        "esac",
    ]
    return "\n".join(body) + "\n"


# --- nftables --------------------------------------------------------------------------------


def _nft_ports(ports: tuple[int, ...]) -> str:
    return str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, ports)) + " }"


def _nft_queue(opts: RuleOptions) -> str:
    if opts.queue_balance is not None:
        first, last = opts.queue_balance
        return f"queue num {first}-{last} bypass"
    return f"queue num {opts.queue_num} bypass"


def render_nft(opts: RuleOptions | None = None) -> str:
    """`table inet ftp_alg`; loading the file replaces the table (so it is idempotent).

    Here the anchor is a `ct helper` object set after conntrack (priority mangle, still before
    DNAT) on new connections, since nft cannot attach a helper before conntrack runs.
    """
    opts = opts or RuleOptions()
    only = "" if len(opts.families) == 2 else f"meta nfproto ipv{opts.families[0]} "
    ports = _nft_ports(opts.ports)
    queue = _nft_queue(opts)

    def chain(name: str, hook: str, priority: str, rules: list[str]) -> list[str]:
        return [
            f"\tchain {name} {{",
            f"\t\ttype filter hook {hook} priority {priority}; policy accept;",
            *(f"\t\t{rule}" for rule in rules),
            "\t}",
        ]

    queue_rules = [f"{only}tcp dport {ports} {queue}", f"{only}tcp sport {ports} {queue}"]
    anchor_rules = [f'{only}tcp dport {ports} ct state new ct helper set "ftp_alg_anchor"']
    body = [
        "#!/usr/sbin/nft -f",
        f"# ftp-alg rule set for nftables (table inet {NFT_TABLE}); needs a kernel with",
        "# nft_queue (CONFIG_NFT_QUEUE), otherwise use the iptables rule set.",
        "# Rendered by `ftp-alg rules render --backend nft`; `ftp-alg rules apply` loads the",
        f"# same text. Loading it replaces the table; `nft delete table inet {NFT_TABLE}`",
        "# removes it.",
        "#",
        _comment(WHY),
        "",
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        "",
        f"table inet {NFT_TABLE} {{",
        "\tct helper ftp_alg_anchor {",
        f'\t\ttype "{ANCHOR_HELPER}" protocol tcp',
        "\t}",
        "",
        *chain("queue_prerouting", "prerouting", "raw", queue_rules),
        "",
        *chain("queue_output", "output", "raw", queue_rules),
        "",
        *chain("anchor_prerouting", "prerouting", "mangle", anchor_rules),
        "",
        *chain("anchor_output", "output", "mangle", anchor_rules),
        "}",
    ]
    return "\n".join(body) + "\n"
