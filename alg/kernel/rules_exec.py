"""Carry the rendered rules out: run iptables/nft, probe the kernel, check for conflicts.

Everything here shells out to the admin's own tools (`iptables -w`, `nft`), so what ftp-alg
installs is exactly what `rules/` shows and what `iptables -S` lists afterwards.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from alg.kernel.rules import (
    CHAINS,
    FTPS_NAT,
    NFT_TABLE,
    TABLES,
    TOOLS,
    RuleOptions,
    Step,
    apply_steps,
    remove_steps,
    render_nft,
)

_NFT_PROBE = """\
table inet ftp_alg_probe {
\tchain probe {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tqueue num 0 bypass
\t}
}
"""
# `-j CT --helper ftp` (or ftp-2121: the kernel names helpers on other ports ftp-PORT)
_IPT_FTP_HELPER = re.compile(r'--helper "?ftp(?:-\d+)?"?(?:\s|$)')
_IPT_PORTS = re.compile(r"--dports? (\S+)")
_NFT_FTP_HELPER = re.compile(r'type "ftp(?:-\d+)?"')


class RulesError(Exception):
    """A rule change failed or was refused; the message says what to do."""


def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise RulesError(f"{argv[0]} is not installed") from None


def _must(argv: Sequence[str], stdin: str | None = None) -> str:
    done = run(argv, stdin)
    if done.returncode != 0:
        raise RulesError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


# --- nftables --------------------------------------------------------------------------------


def nft_has_queue() -> bool:
    """True if the kernel accepts an nftables `queue` statement (CONFIG_NFT_QUEUE).

    `nft -c` sends a throwaway table to the kernel and aborts the transaction, so nothing is
    left behind; on kernels without nft_queue it fails with "No such file or directory".
    """
    try:
        return run(["nft", "-c", "-f", "-"], _NFT_PROBE).returncode == 0
    except RulesError:
        return False


def nft_table_installed() -> bool:
    try:
        return run(["nft", "list", "table", "inet", NFT_TABLE]).returncode == 0
    except RulesError:
        return False


def nft_apply(opts: RuleOptions) -> None:
    _must(["nft", "-f", "-"], render_nft(opts))


def nft_remove() -> None:
    if nft_table_installed():
        _must(["nft", "delete", "table", "inet", NFT_TABLE])


# --- iptables --------------------------------------------------------------------------------


def _ipt(tool: str, table: str, *args: str) -> list[str]:
    return [tool, "-w", "-t", table, *args]


def _chain_exists(tool: str, table: str, chain: str) -> bool:
    return run(_ipt(tool, table, "-S", chain)).returncode == 0


def run_step(step: Step) -> None:
    """Run one step with the semantics `rules.shell_line` renders."""
    tool, table, chain = step.tool, step.table, step.chain
    if step.kind == "set":
        _must(["ipset", *step.args])
    elif step.kind == "drop_sets":
        try:
            listed = run(["ipset", "list", "-n"]).stdout.split()
        except RulesError:  # no ipset tool: no sets of ours either
            return
        for name in (n for n in listed if n.startswith(chain)):
            _must(["ipset", "destroy", name])
    elif step.kind == "chain":
        if _chain_exists(tool, table, chain):
            _must(_ipt(tool, table, "-F", chain))
        else:
            _must(_ipt(tool, table, "-N", chain))
    elif step.kind == "rule":
        _must(_ipt(tool, table, "-A", chain, *step.args))
    elif step.kind == "jump":
        if run(_ipt(tool, table, "-C", step.hook, "-j", chain)).returncode != 0:
            _must(_ipt(tool, table, "-I", step.hook, "1", "-j", chain))
    elif step.kind == "unjump":
        while run(_ipt(tool, table, "-C", step.hook, "-j", chain)).returncode == 0:
            _must(_ipt(tool, table, "-D", step.hook, "-j", chain))
    elif step.kind == "drop_empty_table":
        leftover = [
            r
            for r in _must(_ipt(tool, table, "-S")).splitlines()
            if not (r.startswith("-P ") and r.endswith(" ACCEPT"))
        ]
        if not leftover and "nf_tables" in _must([tool, "-V"]):
            family = "ip6" if tool == "ip6tables" else "ip"
            run(["nft", "delete", "table", family, table])
    elif _chain_exists(tool, table, chain):  # drop_chain
        _must(_ipt(tool, table, "-F", chain))
        _must(_ipt(tool, table, "-X", chain))


def iptables_apply(opts: RuleOptions) -> None:
    for step in apply_steps(opts):
        run_step(step)


def iptables_remove(families: tuple[int, ...]) -> None:
    for step in remove_steps(families):
        run_step(step)


def iptables_installed(family: int) -> dict[str, list[str]]:
    """Our rules as `iptables -S` prints them, per table (only tables holding some): the
    jumps to our chains, then the chains."""
    tool = TOOLS[family]
    found: dict[str, list[str]] = {}
    chains = (*CHAINS, FTPS_NAT)
    for table in (*TABLES, FTPS_NAT.table):
        names = list(dict.fromkeys(c.name for c in chains if c.table == table))
        present = [name for name in names if _chain_exists(tool, table, name)]
        if not present:
            continue
        jumps = tuple(f"-j {name}" for name in present)
        lines: list[str] = []
        for hook in dict.fromkeys(c.hook for c in chains if c.table == table):
            listed = run(_ipt(tool, table, "-S", hook)).stdout.splitlines()
            lines += [line for line in listed if line.endswith(jumps)]
        for name in present:
            lines += run(_ipt(tool, table, "-S", name)).stdout.splitlines()
        found[table] = lines
    return found


# --- conflicts -------------------------------------------------------------------------------


def ftp_helper_conflicts(opts: RuleOptions) -> list[str]:
    """Rules that attach the kernel `ftp` helper to traffic ftp-alg would handle.

    An iptables rule conflicts unless it names destination ports, none of them ours; any
    nftables `ct helper` object of type "ftp" conflicts.
    """
    found: list[str] = []
    for family in opts.families:
        done = run([f"{TOOLS[family]}-save", "-t", "raw"])
        found += ftp_helper_lines(TOOLS[family], done.stdout, opts.ports)
    try:
        ruleset = run(["nft", "list", "ruleset"])
    except RulesError:
        return found
    return found + nft_ftp_helpers(ruleset.stdout)


def ftp_helper_lines(tool: str, save: str, ports: tuple[int, ...]) -> list[str]:
    """The `-j CT --helper ftp` rules of an `iptables-save` text that may catch our ports."""
    found: list[str] = []
    for line in save.splitlines():
        if line.startswith("-A") and _IPT_FTP_HELPER.search(line):
            spec = _IPT_PORTS.search(line)
            negated = "! --dport" in line
            if spec is None or negated or _overlaps(spec.group(1), ports):
                found.append(f"{tool}: {line}")
    return found


def nft_ftp_helpers(ruleset: str) -> list[str]:
    """The `ct helper` objects of type "ftp" in an `nft list ruleset` text."""
    return [f"nft: ct helper of {m.group(0)}" for m in _NFT_FTP_HELPER.finditer(ruleset)]


def _overlaps(spec: str, ours: tuple[int, ...]) -> bool:
    """Whether an iptables port spec ("21", "21,2121", "1000:2000") covers one of ours."""
    for item in spec.split(","):
        low, colon, high = item.partition(":")
        try:
            lo = int(low) if low else 0
            hi = int(high) if high else (65535 if colon else lo)
        except ValueError:
            return True  # a service name or something new: assume the worst
        if any(lo <= port <= hi for port in ours):
            return True
    return False
