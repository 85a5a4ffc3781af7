"""The checks of `ftp-alg doctor`: pure functions from gathered Facts to Findings.

Each finding says what is wrong, why FTP fails because of it, and the command that fixes it.
The checks never read the system themselves (alg.doctor.gather does), so each is tested with
sample texts of what a broken router shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from alg.doctor.facts import Facts, Rule, normalise, parse_nfqueue, parse_save, rule_ports
from alg.kernel import rules
from alg.kernel.rules_exec import ftp_helper_lines, nft_ftp_helpers


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


@dataclass(frozen=True)
class Finding:
    severity: Severity
    what: str
    fix: str = ""


Check = Callable[[Facts], list[Finding]]
EXPECT_NEAR_FULL = 0.8  # share of nf_conntrack_expect_max that makes a warning


def _ok(what: str) -> list[Finding]:
    return [Finding(Severity.OK, what)]


def _apply_command(opts: rules.RuleOptions) -> str:
    ports = ",".join(map(str, opts.ports))
    if opts.queue_balance:
        queue = f"--queue-balance {opts.queue_balance[0]}:{opts.queue_balance[1]}"
    else:
        queue = f"--queue-num {opts.queue_num}"
    return f"ftp-alg rules apply --ports {ports} {queue}"


def _queues(opts: rules.RuleOptions) -> range:
    if opts.queue_balance:
        return range(opts.queue_balance[0], opts.queue_balance[1] + 1)
    return range(opts.queue_num, opts.queue_num + 1)


# --- the daemon ------------------------------------------------------------------------------


def check_daemon(facts: Facts) -> list[Finding]:
    if facts.status is None:
        return [
            Finding(
                Severity.ERROR,
                f"the daemon does not answer on {facts.status_socket}: {facts.status_error}. "
                "With --queue-bypass, FTP passes unhandled: active and passive transfers "
                "through NAT fail",
                "start it (`systemctl start ftp-alg`; its log: `journalctl -u ftp-alg`), or "
                "name its socket with --status-socket",
            )
        ]
    pid, uptime = facts.status.get("pid", "?"), facts.status.get("uptime", "?")
    return _ok(f"the daemon answers (pid {pid}, up {uptime} s)")


def check_queue_bound(facts: Facts) -> list[Finding]:
    if facts.nfqueue is None:
        return [Finding(Severity.WARNING, "/proc/net/netfilter/nfnetlink_queue is unreadable")]
    bound = parse_nfqueue(facts.nfqueue)
    missing = [n for n in _queues(facts.expected) if n not in bound or bound[n].portid == 0]
    if missing:
        listed = ", ".join(map(str, missing))
        return [
            Finding(
                Severity.ERROR,
                f"nobody reads NFQUEUE {listed}: the rules queue FTP control packets there, "
                "and with --queue-bypass they pass unhandled",
                "start the daemon on that queue (`ftp-alg run --queue-num N`, or the queue "
                "range of `rules apply --queue-balance`)",
            )
        ]
    return _ok(f"NFQUEUE {_queues(facts.expected).start}.. has a reader")


def check_queue_drops(facts: Facts) -> list[Finding]:
    if facts.nfqueue is None:
        return []
    bound = parse_nfqueue(facts.nfqueue)
    found: list[Finding] = []
    for n in _queues(facts.expected):
        q = bound.get(n)
        if q is not None and (q.dropped or q.user_dropped):
            found.append(
                Finding(
                    Severity.WARNING,
                    f"NFQUEUE {n} dropped packets since the daemon bound it: {q.dropped} with "
                    f"the queue full, {q.user_dropped} with the daemon's socket full; dropped "
                    "control packets stall FTP sessions until TCP retransmits",
                    "the daemon is too slow for the load: spread it with --queue-balance, set "
                    "busy_poll_us, check its CPU; the counters reset when it rebinds",
                )
            )
    return found or _ok("no NFQUEUE drops")


# --- the rules -------------------------------------------------------------------------------


def _expected(opts: rules.RuleOptions, family: int) -> dict[tuple[str, str], list[Rule]]:
    """(table, chain) -> rules, our chains and the jumps into them, as iptables-save shows
    (the payload test differs per family)."""
    want: dict[tuple[str, str], list[Rule]] = {}
    for chain, chain_rules in rules.iptables_rules(opts, family).items():
        want[(chain.table, chain.name)] = [normalise(r) for r in chain_rules]
        want.setdefault((chain.table, chain.hook), []).append(("-j", chain.name))
    return want


def _ours(facts: Facts) -> dict[str, dict[str, dict[str, list[Rule]]]]:
    """Per tool (iptables, ip6tables) that holds at least one of our chains: its tables."""
    names = {c.name for c in rules.CHAINS}
    found = {}
    for family in facts.expected.families:
        tool = rules.TOOLS[family]
        tables = parse_save(facts.saves.get(tool, ""))
        if any(names & set(t) for t in tables.values()):
            found[tool] = tables
    return found


def _nft_ours(facts: Facts) -> bool:
    return facts.nft_ruleset is not None and f"table inet {rules.NFT_TABLE}" in facts.nft_ruleset


def check_rules(facts: Facts) -> list[Finding]:
    opts = facts.expected
    ours = _ours(facts)
    if not ours and not _nft_ours(facts):
        return [
            Finding(
                Severity.ERROR,
                "the ftp-alg rules are not installed: no FTP packet reaches the daemon",
                _apply_command(opts),
            )
        ]
    found: list[Finding] = []
    names = {c.name for c in rules.CHAINS}
    for tool, tables in ours.items():
        differences: list[str] = []
        family = 6 if tool == rules.TOOLS[6] else 4
        for (table, chain), want in _expected(opts, family).items():
            have = tables.get(table, {}).get(chain, [])
            if chain not in names:  # a built-in hook: only our jumps matter there
                have = [r for r in have if r[:1] == ("-j",) and r[1] in names]
            if sorted(have) != sorted(want) or (chain in names and have != want):
                differences.append(f"{table} {chain}: {_diff(have, want)}")
        if differences:
            found.append(
                Finding(
                    Severity.ERROR,
                    f"the {tool} rules are stale (not what `rules apply` installs for this "
                    "daemon): " + "; ".join(differences),
                    _apply_command(opts),
                )
            )
    for family in opts.families:
        tool = rules.TOOLS[family]
        if ours and tool not in ours and not _nft_ours(facts):
            found.append(
                Finding(
                    Severity.INFO,
                    f"no {tool} rules: FTP over IPv{family} is not handled",
                    f"{_apply_command(opts)} --family both, if IPv{family} FTP crosses the NAT",
                )
            )
    return found or _ok("the rules are installed as `rules apply` renders them")


def _diff(have: list[Rule], want: list[Rule]) -> str:
    missing = [" ".join(r) for r in want if r not in have]
    extra = [" ".join(r) for r in have if r not in want]
    parts = [f"missing `{r}`" for r in missing] + [f"unexpected `{r}`" for r in extra]
    return ", ".join(parts) or "the rules are in the wrong order"


def check_anchor(facts: Facts) -> list[Finding]:
    """The `sane` helper on the control connections: without it the kernel refuses every
    expectation (EOPNOTSUPP) and gives the connection no seqadj extension."""
    ports = set(facts.expected.ports)
    ours = _ours(facts)
    if not ours and not _nft_ours(facts):
        return []  # check_rules reports the missing rules
    found: list[Finding] = []
    for tool, tables in ours.items():
        covered: set[int] = set()
        raw = tables.get("raw", {})
        # forwarded control connections pass PREROUTING only (FTP_ALG_OUT serves the router's
        # own): the anchor must be in our chain there or in PREROUTING itself
        for chain in (rules.RAW_IN.name, rules.RAW_IN.hook):
            for rule in raw.get(chain, []):
                if rule[-3:] == ("CT", "--helper", rules.ANCHOR_HELPER) and "!" not in rule:
                    covered |= set(rule_ports(rule))
        if not ports <= covered:
            missing = ",".join(map(str, sorted(ports - covered)))
            found.append(
                Finding(
                    Severity.ERROR,
                    f"{tool}: no `-j CT --helper {rules.ANCHOR_HELPER}` anchor for control "
                    f"port(s) {missing} in raw PREROUTING: the kernel refuses the ALG's "
                    "expectations (data connections are refused) and rewrites that change a "
                    "line's length break the session",
                    _apply_command(facts.expected),
                )
            )
    if _nft_ours(facts) and f'type "{rules.ANCHOR_HELPER}"' not in (facts.nft_ruleset or ""):
        found.append(
            Finding(
                Severity.ERROR,
                f'nft table {rules.NFT_TABLE} has no ct helper of type "sane" (the anchor)',
                _apply_command(facts.expected),
            )
        )
    return found or _ok("the `sane` anchor covers the control ports")


def check_ftp_helper(facts: Facts) -> list[Finding]:
    """The kernel's own ftp helper would rewrite and expect behind the ALG's back."""
    ports = facts.expected.ports
    lines: list[str] = []
    for tool, save in sorted(facts.saves.items()):
        lines += ftp_helper_lines(tool, save, ports)
    lines += nft_ftp_helpers(facts.nft_ruleset or "")
    found: list[Finding] = []
    if lines:
        found.append(
            Finding(
                Severity.ERROR,
                "the kernel `ftp` helper is attached to FTP traffic: it rewrites PORT/227 and "
                "creates expectations itself, against the ALG (doubled rewrites, broken "
                "sequence numbers): " + "; ".join(lines),
                "delete those rules (`iptables -t raw -D ...`, or the nft `ct helper` object "
                'of type "ftp" and the rules setting it)',
            )
        )
    if facts.auto_helper == "1" and facts.ftp_module_ports:
        found.append(
            Finding(
                Severity.ERROR,
                "net.netfilter.nf_conntrack_helper = 1: the kernel attaches the ftp helper to "
                f"port(s) {facts.ftp_module_ports} by itself",
                "sysctl -w net.netfilter.nf_conntrack_helper=0 (and in /etc/sysctl.d)",
            )
        )
    return found or _ok("the kernel ftp helper is not attached")


def check_ports_agree(facts: Facts) -> list[Finding]:
    want = set(facts.expected.ports)
    found: list[Finding] = []
    if facts.config_ports is not None and set(facts.config_ports) != want:
        found.append(
            Finding(
                Severity.WARNING,
                f"the running daemon watches ports {_ports(want)}, its config file says "
                f"{_ports(facts.config_ports)}: it was started with other options, or the "
                "config changed since",
                "restart the daemon (`systemctl restart ftp-alg`) and re-apply the rules",
            )
        )
    for tool, tables in _ours(facts).items():
        queued: set[int] = set()
        for chain in rules.CHAINS:
            for rule in tables.get(chain.table, {}).get(chain.name, []):
                if "NFQUEUE" in rule:
                    queued |= set(rule_ports(rule))
        if queued and queued != want:
            found.append(
                Finding(
                    Severity.ERROR,
                    f"{tool} queues control ports {_ports(queued)}, the daemon handles "
                    f"{_ports(want)}: sessions on {_ports(want ^ queued)} are not rewritten",
                    _apply_command(facts.expected),
                )
            )
    return found or _ok(f"the config, the daemon and the rules agree on ports {_ports(want)}")


def _ports(ports: set[int] | tuple[int, ...]) -> str:
    return ",".join(map(str, sorted(ports)))


# --- conntrack -------------------------------------------------------------------------------


def check_expect_table(facts: Facts) -> list[Finding]:
    if facts.expect_max is None or facts.expect_count is None:
        return []
    used, limit = facts.expect_count, facts.expect_max
    if limit and used >= limit * EXPECT_NEAR_FULL:
        return [
            Finding(
                Severity.ERROR if used >= limit else Severity.WARNING,
                f"the conntrack expectation table holds {used} of {limit}: new data "
                "connections are refused when it is full",
                f"sysctl -w net.netfilter.nf_conntrack_expect_max={limit * 4}, and look for "
                "what creates so many (`conntrack -L expect`)",
            )
        ]
    return _ok(f"expectation table {used}/{limit}")


def check_invalid(facts: Facts) -> list[Finding]:
    if facts.invalid_delta is None:
        return []
    if facts.invalid_delta > 0:
        ports = _ports(facts.expected.ports)
        return [
            Finding(
                Severity.WARNING,
                f"conntrack marked {facts.invalid_delta} packets INVALID in "
                f"{facts.invalid_seconds:g} s; on FTP control connections that means "
                "sequence numbers out of step (a stale or missing anchor, the ftp helper, "
                "or packets rewritten twice)",
                "see which: `iptables -t mangle -I FORWARD -p tcp -m multiport --ports "
                f"{ports} -m conntrack --ctstate INVALID -j LOG --log-prefix ftp-invalid:`",
            )
        ]
    return _ok(f"no INVALID packets in {facts.invalid_seconds:g} s")


def check_masquerade(facts: Facts) -> list[Finding]:
    """With conntrackd (an HA pair), MASQUERADE's entries vanish with the WAN link and the
    standby receives the deletions, so sessions do not survive a failover."""
    if not facts.conntrackd_running:
        return []
    lines = [
        f"{tool}: -A {chain} {' '.join(rule)}"
        for tool, save in sorted(facts.saves.items())
        for chain, chain_rules in parse_save(save).get("nat", {}).items()
        for rule in chain_rules
        if rule[-2:] == ("-j", "MASQUERADE") or "MASQUERADE" in rule
    ]
    if lines:
        return [
            Finding(
                Severity.WARNING,
                "conntrackd runs (an HA pair?) and NAT uses MASQUERADE: when the WAN link "
                "goes down the kernel deletes the masqueraded entries and conntrackd "
                "replicates the deletions, so FTP sessions do not survive a failover: "
                + "; ".join(lines),
                "SNAT to the shared public address instead (`-j SNAT --to-source ADDR`)",
            )
        ]
    return []


CHECKS: tuple[Check, ...] = (
    check_daemon,
    check_queue_bound,
    check_queue_drops,
    check_rules,
    check_anchor,
    check_ftp_helper,
    check_ports_agree,
    check_expect_table,
    check_invalid,
    check_masquerade,
)


def diagnose(facts: Facts) -> list[Finding]:
    found: list[Finding] = []
    if facts.config_error:
        found.append(
            Finding(Severity.ERROR, f"the config file: {facts.config_error}", "fix the file")
        )
    for check in CHECKS:
        found += check(facts)
    return found
