"""Carry the rendered rules out: run iptables/nft, probe the kernel, check for conflicts.

Everything here shells out to the admin's own tools (`iptables -w`, `nft`), so what ftp-alg
installs is exactly what `rules/` shows and what `iptables -S` lists afterwards.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from alg.kernel.rules import (
    CHAIN,
    HOOKS,
    NFT_TABLE,
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


def _ipt(tool: str, *args: str) -> list[str]:
    return [tool, "-w", "-t", "raw", *args]


def _chain_exists(tool: str) -> bool:
    return run(_ipt(tool, "-S", CHAIN)).returncode == 0


def run_step(step: Step) -> None:
    """Run one step with the semantics `rules.shell_line` renders."""
    tool = step.tool
    if step.kind == "chain":
        if _chain_exists(tool):
            _must(_ipt(tool, "-F", CHAIN))
        else:
            _must(_ipt(tool, "-N", CHAIN))
    elif step.kind == "rule":
        _must(_ipt(tool, "-A", CHAIN, *step.args))
    elif step.kind == "jump":
        if run(_ipt(tool, "-C", step.hook, "-j", CHAIN)).returncode != 0:
            _must(_ipt(tool, "-I", step.hook, "1", "-j", CHAIN))
    elif step.kind == "unjump":
        while run(_ipt(tool, "-C", step.hook, "-j", CHAIN)).returncode == 0:
            _must(_ipt(tool, "-D", step.hook, "-j", CHAIN))
    elif _chain_exists(tool):  # drop_chain
        _must(_ipt(tool, "-F", CHAIN))
        _must(_ipt(tool, "-X", CHAIN))


def iptables_apply(opts: RuleOptions) -> None:
    for step in apply_steps(opts):
        run_step(step)


def iptables_remove(families: tuple[int, ...]) -> None:
    for step in remove_steps(families):
        run_step(step)


def iptables_installed(family: int) -> list[str]:
    """Our rules as `iptables -S` prints them: the jumps, then the chain."""
    tool = TOOLS[family]
    if not _chain_exists(tool):
        return []
    lines: list[str] = []
    for hook in HOOKS:
        listed = run(_ipt(tool, "-S", hook)).stdout.splitlines()
        lines += [line for line in listed if line.endswith(f"-j {CHAIN}")]
    return lines + run(_ipt(tool, "-S", CHAIN)).stdout.splitlines()


# --- conflicts -------------------------------------------------------------------------------


def ftp_helper_conflicts(opts: RuleOptions) -> list[str]:
    """Rules that attach the kernel `ftp` helper to traffic ftp-alg would handle.

    An iptables rule conflicts unless it names destination ports, none of them ours; any
    nftables `ct helper` object of type "ftp" conflicts.
    """
    found: list[str] = []
    for family in opts.families:
        done = run([f"{TOOLS[family]}-save", "-t", "raw"])
        for line in done.stdout.splitlines():
            if line.startswith("-A") and _IPT_FTP_HELPER.search(line):
                ports = _IPT_PORTS.search(line)
                negated = "! --dport" in line
                if ports is None or negated or _overlaps(ports.group(1), opts.ports):
                    found.append(f"{TOOLS[family]}: {line}")
    try:
        ruleset = run(["nft", "list", "ruleset"])
    except RulesError:
        return found
    for match in _NFT_FTP_HELPER.finditer(ruleset.stdout):
        found.append(f"nft: ct helper of {match.group(0)}")
    return found


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
