"""The packet-filter rules ftp-alg needs, rendered from options (pure: no I/O).

The same description yields three things, so they cannot drift apart: the steps
`ftp-alg rules apply|remove` runs (`rules_exec`), the shell script admins can read and run by
hand, and the nftables file. `rules/` at the top of the repository holds the default renderings
and a test checks that they equal `render_iptables_script()` and `render_nft()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alg.core.config import DEFAULT_CONTROL_PORTS
from alg.kernel import rules_skip
from alg.kernel.rules_ftps import SET_PREFIX, FtpsRange, create_set, dnat_rule
from alg.kernel.rules_skip import DEFAULT_PASSIVE_MARK, DEFAULT_WATCH_MARK, passive_rules, skip_rule


@dataclass(frozen=True)
class Chain:
    """One of our own chains: `remove` takes away exactly what we added."""

    table: str
    name: str
    hook: str  # the built-in chain that jumps to it


# raw PREROUTING: the anchor, before conntrack creates the connection (and before DNAT)
RAW_IN = Chain("raw", "FTP_ALG", "PREROUTING")
# raw OUTPUT: the anchor, for the router's own connections
RAW_OUT = Chain("raw", "FTP_ALG_OUT", "OUTPUT")
# mangle POSTROUTING: the queue, both directions (after conntrack and DNAT, before SNAT)
MANGLE_POST = Chain("mangle", "FTP_ALG", "POSTROUTING")
CHAINS = (RAW_IN, RAW_OUT, MANGLE_POST)
# nat PREROUTING: the FTPS range DNAT rules (rules_ftps), only when ranges are declared
FTPS_NAT = Chain("nat", "FTP_ALG_FTPS", "PREROUTING")
TABLES = ("raw", "mangle")
NFT_TABLE = "ftp_alg"  # `table inet ftp_alg`
ANCHOR_HELPER = "sane"
TOOLS = {4: "iptables", 6: "ip6tables"}
MAX_PORTS = 15  # the multiport match's limit

# Classic BPF for `-m bpf`: true when the packet carries TCP payload. The program sees the
# packet from its IP header. IPv4: total length > IP header + TCP header lengths. IPv6: if
# TCP follows the fixed header, payload length > TCP header length; with extension headers
# the program cannot find TCP cheaply and says yes (queued: the core reads them).
# (A u32 "payload length" match misses segments shorter than 4 bytes: docs/kernel-facts.md.)
PAYLOAD_BPF = {
    4: "10,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,45 0 1 0,"
    "6 0 0 1,6 0 0 0",
    6: "10,48 0 0 6,21 0 6 6,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,45 0 1 0,"
    "6 0 0 1,6 0 0 0",
}

WHY = """\
Why these rules:
- The kernel holds the sequence state. When ftp-alg changes the length of a PORT/EPRT line
  (client -> server) or a 227/229 line (server -> client), it writes the correction into the
  connection's conntrack seqadj record (ctnetlink, CTA_SEQ_ADJ_ORIG/REPLY) before the
  segment's verdict. From then on conntrack shifts seq, ack and SACK of every later packet
  itself, at the end of POSTROUTING, and its window tracking allows for the shift. A
  restarted daemon reads the record back; conntrackd carries it to a standby router.
- So only segments that carry payload go to the queue: pure ACKs, SYNs and FINs without data
  never leave the kernel (the -m bpf program compares the IP length with the headers').
- Nor do lines nobody needs: a segment of whole lines that holds no address, passive,
  transfer or AUTH word (nor 227/228/229/234/421) passes the queue (RETURN) when it starts
  with a plain single-line reply (200, 150, 226, 550, ...), or with a login verb (USER, PASS,
  SYST, TYPE, ...) while its connection lacks the watch bit in its connmark (watch_mark).
  ftp-alg sets the bit when it starts watching a connection (ctnetlink), so from then on
  every command is queued. (iptables only: nft has no match for a segment's last byte, so
  the nft rule set queues these lines too.)
- Both directions are queued in mangle POSTROUTING: after conntrack, so conntrack sees every
  packet as its sender sent it (one consistent numbering per direction), and before SNAT
  and before the shift, so ftp-alg sees inside addresses and the sender's numbers. A reply
  from a port-forwarded server is queued there before its un-DNAT.
- Only ESTABLISHED connections enter the queue (conntrack has seen both directions): junk,
  INVALID and untracked packets, and one-way floods that conntrack's loose pick-up tracks as
  NEW, never reach ftp-alg and cannot fill its queue. (`-m helper` cannot test the anchor: it
  matches a connection's master's helper.) A queued connection without the anchor (one that
  began before the rules were applied) is passed untouched by ftp-alg: without the anchor
  the kernel would neither keep its seqadj record nor accept its expectations.
- The kernel creates an expectation (ctnetlink EXP_NEW) and keeps a seqadj record only for a
  connection that has a conntrack helper, and this kernel has no user-space helpers
  (nfnetlink_cthelper). The `sane` helper only parses the SANE scanner protocol's binary
  requests, never FTP text, so it serves as an inert anchor. Never attach the `ftp` helper as
  well: it would rewrite and expect on its own, behind the ALG's back.
- The anchor matches the destination port as packets arrive, before DNAT, so port-forwarded
  control connections (server behind the router) get it too; a rule on the inside address
  would never match. It is attached in raw, before conntrack creates the connection: the CT
  target's template is only used then, so later packets are unaffected.
- In mangle POSTROUTING a port-forwarded (DNATed) control connection already shows the inside
  server's port: if a port forward changes the port, list both the public and the inside port.
- The router's own FTP clients: their packets pass mangle POSTROUTING too; raw OUTPUT only
  attaches the anchor. Connections to an FTP server on the router itself are not queued at
  all (their packets never reach POSTROUTING): no NAT stands between the two ends.
- --queue-bypass (nft: bypass): when the daemon is not running, FTP passes unchanged instead
  of being dropped, and the kernel still applies the offsets already written.
- With a queue range (--queue-balance), the kernel spreads packets by their addresses; one
  process must serve the whole range (the two directions may hash to different queues)."""


@dataclass(frozen=True)
class RuleOptions:
    queue_num: int = 0
    ports: tuple[int, ...] = DEFAULT_CONTROL_PORTS
    queue_balance: tuple[int, int] | None = None  # first and last queue, both included
    families: tuple[int, ...] = (4, 6)
    ftps: tuple[FtpsRange, ...] = ()  # declared FTPS ranges (daemon config), none by default
    # The daemon's watch_mark: login lines of connections without it pass unqueued (0: off).
    watch_mark: int = DEFAULT_WATCH_MARK
    # The daemon's passive_mark: passive exchanges of unwatched connections without DNAT pass
    # unqueued (0, or watch_mark 0: off).
    passive_mark: int = DEFAULT_PASSIVE_MARK

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
        if not 0 <= self.watch_mark <= 0xFFFFFFFF:
            raise ValueError("watch_mark must be a 32-bit mask")
        if problem := rules_skip.passive_mark_error(self.passive_mark, self.watch_mark):
            raise ValueError(problem)


# --- iptables --------------------------------------------------------------------------------

StepKind = Literal[
    "chain", "rule", "jump", "unjump", "drop_chain", "drop_empty_table", "set", "drop_sets"
]


@dataclass(frozen=True)
class Step:
    """One idempotent change to one table of one family.

    chain: create `chain` or empty it if it exists; rule: append `args` to `chain`; jump: insert
    `-j chain` first in `hook` unless present; unjump: delete every `-j chain` from `hook`;
    drop_chain: empty and delete `chain` if it exists; drop_empty_table: with iptables-nft,
    delete the table if nothing is left in it but ACCEPT policies (apply may have created it;
    an empty table filters nothing, so `iptables-save` then reads as before apply); set: run
    `ipset args` (create a set unless it exists); drop_sets: destroy every ipset named
    `chain`* (after the rules using them are gone).
    """

    kind: StepKind
    tool: str
    table: str
    chain: str
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


def iptables_rules(opts: RuleOptions, family: int = 4) -> dict[Chain, tuple[tuple[str, ...], ...]]:
    """The rules inside each of our chains, in order."""
    to_ports = _port_match("dport", opts.ports)
    anchor = (*to_ports, "-j", "CT", "--helper", ANCHOR_HELPER)
    inspect = ("-m", "conntrack", "--ctstate", "ESTABLISHED", "-m", "bpf", "--bytecode")
    payload = (*inspect, PAYLOAD_BPF[family], *_queue_target(opts))
    from_ports = _port_match("sport", opts.ports)
    skip: tuple[tuple[str, ...], ...] = ()
    if opts.watch_mark:
        mark = opts.watch_mark
        skip = (skip_rule(family, True, to_ports, mark), skip_rule(family, False, from_ports, mark))
        if opts.passive_mark:
            skip = (*passive_rules(family, to_ports, from_ports, mark, opts.passive_mark), *skip)
    return {
        RAW_IN: (anchor,),
        RAW_OUT: (anchor,),
        MANGLE_POST: (*skip, (*to_ports, *payload), (*from_ports, *payload)),
    }


def _all_jumps() -> list[tuple[str, str, str]]:
    """(table, hook, chain): every place a jump of ours can sit, this layout's or an older
    one's (the first rule set also jumped to FTP_ALG from raw OUTPUT and queued there)."""
    jumps: list[tuple[str, str, str]] = []
    for table in TABLES:
        ours = [c for c in CHAINS if c.table == table]
        jumps += [(table, hook.hook, chain.name) for hook in ours for chain in ours]
    return jumps


def apply_steps(opts: RuleOptions) -> list[Step]:
    wanted = {(c.table, c.hook, c.name) for c in CHAINS}
    steps: list[Step] = []
    for family in opts.families:
        tool = TOOLS[family]
        steps += [
            Step("unjump", tool, table, chain, hook=hook)
            for table, hook, chain in _all_jumps()
            if (table, hook, chain) not in wanted
        ]
        for chain, rules in iptables_rules(opts, family).items():
            steps.append(Step("chain", tool, chain.table, chain.name))
            steps += [Step("rule", tool, chain.table, chain.name, args=rule) for rule in rules]
            steps.append(Step("jump", tool, chain.table, chain.name, hook=chain.hook))
        steps += _ftps_steps(opts, family)
    return steps


def _ftps_steps(opts: RuleOptions, family: int) -> list[Step]:
    """The FTPS range sets and DNAT rules of one family; without declared ranges, only the
    removal of any left by an earlier apply (so apply converges on the config)."""
    tool, chain = TOOLS[family], FTPS_NAT
    ranges = [r for r in opts.ftps if r.family == family]
    if not ranges:
        return [
            Step("unjump", tool, chain.table, chain.name, hook=chain.hook),
            Step("drop_chain", tool, chain.table, chain.name),
        ]
    return [
        *(Step("set", "ipset", "", a[2], args=a) for a in dict.fromkeys(map(create_set, ranges))),
        Step("chain", tool, chain.table, chain.name),
        *(Step("rule", tool, chain.table, chain.name, args=dnat_rule(r)) for r in ranges),
        Step("jump", tool, chain.table, chain.name, hook=chain.hook),
    ]


def remove_steps(families: tuple[int, ...] = (4, 6)) -> list[Step]:
    steps: list[Step] = []
    for family in families:
        tool = TOOLS[family]
        steps += [
            Step("unjump", tool, table, chain, hook=hook) for table, hook, chain in _all_jumps()
        ]
        steps += [Step("drop_chain", tool, c.table, c.name) for c in CHAINS]
        steps += [Step("drop_empty_table", tool, t, "") for t in sorted({c.table for c in CHAINS})]
        steps += _ftps_steps(RuleOptions(), family)
    return [*steps, Step("drop_sets", "ipset", "", SET_PREFIX)]


def shell_line(step: Step) -> str:
    """The POSIX shell equivalent of `rules_exec` running the step."""
    ipt = f"{step.tool} -w -t {step.table}"
    chain = step.chain
    if step.kind == "set":
        return f"ipset {' '.join(step.args)}"
    if step.kind == "drop_sets":
        listed = f"$(ipset list -n 2>/dev/null | grep '^{chain}' || :)"
        return f'for s in {listed}; do ipset destroy "$s"; done'
    if step.kind == "chain":
        return f"{ipt} -N {chain} 2>/dev/null || {ipt} -F {chain}"
    if step.kind == "rule":
        return f"{ipt} -A {chain} {' '.join(map(_quote, step.args))}"
    if step.kind == "jump":
        return f"{ipt} -C {step.hook} -j {chain} 2>/dev/null || {ipt} -I {step.hook} 1 -j {chain}"
    if step.kind == "unjump":
        return f"while {ipt} -D {step.hook} -j {chain} 2>/dev/null; do :; done"
    if step.kind == "drop_empty_table":
        family = "ip6" if step.tool == "ip6tables" else "ip"
        return (
            f"if {step.tool} -V | grep -q nf_tables && ! {ipt} -S | grep -qv '^-P .* ACCEPT$';"
            f" then nft delete table {family} {step.table}; fi"
        )
    return f"if {ipt} -F {chain} 2>/dev/null; then {ipt} -X {chain}; fi"


def _quote(arg: str) -> str:
    return f"'{arg}'" if " " in arg or "|" in arg else arg


def _comment(text: str) -> str:
    return "\n".join(f"# {line}".rstrip() for line in text.splitlines())


def render_iptables_script(opts: RuleOptions | None = None) -> str:
    opts = opts or RuleOptions()
    tools = " and ".join(TOOLS[f] for f in opts.families)
    saves = "; ".join(f"{TOOLS[f]}-save -t raw" for f in opts.families)
    body = [
        "#!/bin/sh",
        f"# ftp-alg rule set for {tools}, in chains of its own:",
        *(f"#   {c.table} table, chain {c.name}, jumped to from {c.hook}" for c in CHAINS),
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

    The queue sits where the iptables one does: both directions at postrouting, priority
    mangle (after conntrack, before SNAT), only established anchored connections. nft
    cannot compare the IP length with the headers' lengths (no arithmetic between packet
    fields), so pure ACKs are queued too here; the core passes them unchanged and the kernel
    shifts them. The anchor is a `ct helper` object set after conntrack (priority mangle,
    still before DNAT) on new connections, since nft cannot attach a helper before conntrack
    runs.
    """
    opts = opts or RuleOptions()
    if opts.ftps:  # iptables matches ipsets, nft rules cannot (rules_ftps)
        raise ValueError("FTPS ranges (ftps_*_ports) need the iptables backend")
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

    anchored = f'ct state established ct helper "{ANCHOR_HELPER}"'
    queue_rules = [f"{only}tcp {way} {ports} {anchored} {queue}" for way in ("dport", "sport")]
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
        *chain("queue_postrouting", "postrouting", "mangle", queue_rules),
        "",
        *chain("anchor_prerouting", "prerouting", "mangle", anchor_rules),
        "",
        *chain("anchor_output", "output", "mangle", anchor_rules),
        "}",
    ]
    return "\n".join(body) + "\n"
