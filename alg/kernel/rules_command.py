"""`ftp-alg rules apply|remove|show|render`: install the rules the ALG needs, and only those.

The backend is iptables unless the kernel can queue from nftables (`--backend auto` probes for
nft_queue); applying one backend removes the other's rules, so packets are never queued twice.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alg.kernel import rules, rules_exec
from alg.kernel.rules_exec import RulesError
from alg.kernel.rules_ftps import FtpsRange, ranges_from
from alg.options import parse_balance, parse_ports

_FAMILIES = {"4": (4,), "6": (6,), "both": (4, 6)}


def register(subparsers: Any) -> None:
    """Add the `rules` subcommand to the `ftp-alg` parser."""
    parser = subparsers.add_parser(
        "rules",
        help="apply, remove or show the packet-filter rules",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=rules.WHY,
    )
    actions = parser.add_subparsers(dest="rules_action", required=True, metavar="ACTION")
    for name, func, text in (
        ("apply", cmd_apply, "install the rules (idempotent)"),
        ("remove", cmd_remove, "remove exactly what apply installed"),
        ("show", cmd_show, "print the installed rules"),
        ("render", cmd_render, "print the rule set apply would install, as a file"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        _options(action)
        action.set_defaults(func=func)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue-num", type=int, default=0, help="NFQUEUE number (default 0)")
    parser.add_argument(
        "--ports", default="21,2121", help="FTP control ports, comma-separated (default 21,2121)"
    )
    parser.add_argument(
        "--queue-balance", metavar="A:B", help="spread over queues A..B instead of --queue-num"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "iptables", "nft"),
        default="auto",
        help="auto: nft if the kernel has nft_queue, else iptables (render: iptables)",
    )
    parser.add_argument("--family", choices=tuple(_FAMILIES), default="both")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's config: its ftps_passive_ports/ftps_active_ports add the FTPS range"
        " DNAT rules, its watch_mark and passive_mark are the skip rules' (default:"
        " $FTP_ALG_CONFIG, else"
        " /etc/ftp-alg/ftp-alg.toml if present)",
    )


def _from_config(path: str | None) -> tuple[tuple[FtpsRange, ...], int, int]:
    """What the daemon's config says the rules need: its FTPS ranges (none without a config
    file), its watch mark (the skip rule must test the bits the daemon sets) and its passive
    mark (the bits the passive rules keep and the daemon reads)."""
    from alg.daemon.settings import Settings, config_default, load

    path = path or config_default()
    if path is None:
        return (), Settings().watch_mark, Settings().passive_mark
    try:
        settings = load(path, {})
    except OSError as exc:
        raise ValueError(f"cannot read the config {path}: {exc.strerror}") from None
    ranges = ranges_from(settings.ftps_passive_ports, settings.ftps_active_ports)
    return ranges, settings.watch_mark, settings.passive_mark


def _rule_options(args: argparse.Namespace) -> rules.RuleOptions:
    ftps, watch_mark, passive_mark = _from_config(args.config)
    return rules.RuleOptions(
        queue_num=args.queue_num,
        ports=parse_ports(args.ports),
        queue_balance=parse_balance(args.queue_balance) if args.queue_balance else None,
        families=_FAMILIES[args.family],
        ftps=ftps,
        watch_mark=watch_mark,
        passive_mark=passive_mark,
    )


def _fail(message: str, status: int = 1) -> int:
    print(f"ftp-alg rules: {message}", file=sys.stderr)
    return status


def _backend(choice: str, ftps: bool = False) -> str:
    if ftps and choice == "nft":
        raise RulesError("FTPS ranges need the iptables backend (ipset): use --backend iptables")
    if choice == "auto":
        return "nft" if not ftps and rules_exec.nft_has_queue() else "iptables"
    if choice == "nft" and not rules_exec.nft_has_queue():
        raise RulesError(
            "this kernel cannot queue from nftables (no nft_queue): use --backend iptables"
        )
    return choice


def cmd_apply(args: argparse.Namespace) -> int:
    try:
        opts = _rule_options(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        backend = _backend(args.backend, bool(opts.ftps))
        conflicts = rules_exec.ftp_helper_conflicts(opts)
        if conflicts:
            listed = "\n".join(f"  {line}" for line in conflicts)
            return _fail(
                "refusing: the kernel `ftp` helper is attached to FTP traffic here:\n"
                f"{listed}\n"
                "It would rewrite PORT/227 and create expectations on its own, against the "
                "ALG. Remove those rules first."
            )
        if backend == "nft":
            if any(rules_exec.iptables_installed(f) for f in (4, 6)):
                rules_exec.iptables_remove((4, 6))
            rules_exec.nft_apply(opts)
        else:
            rules_exec.nft_remove()
            rules_exec.iptables_apply(opts)
    except RulesError as exc:
        return _fail(str(exc))
    families = "+".join(f"IPv{f}" for f in opts.families)
    queue = (
        f"queues {opts.queue_balance[0]}-{opts.queue_balance[1]}"
        if opts.queue_balance
        else f"queue {opts.queue_num}"
    )
    ports = ",".join(map(str, opts.ports))
    print(f"ftp-alg rules applied ({backend}, {families}, {queue}, control ports {ports})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    try:
        if args.backend in ("auto", "iptables"):
            rules_exec.iptables_remove(_FAMILIES[args.family])
        if args.backend in ("auto", "nft"):
            rules_exec.nft_remove()
    except RulesError as exc:
        return _fail(str(exc))
    print("ftp-alg rules removed")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    shown = False
    try:
        if args.backend in ("auto", "iptables"):
            for family in _FAMILIES[args.family]:
                for table, lines in rules_exec.iptables_installed(family).items():
                    print(f"# {rules.TOOLS[family]} -t {table}")
                    print("\n".join(lines))
                    shown = True
        if args.backend in ("auto", "nft") and rules_exec.nft_table_installed():
            print(rules_exec.run(["nft", "list", "table", "inet", rules.NFT_TABLE]).stdout, end="")
            shown = True
    except RulesError as exc:
        return _fail(str(exc))
    if not shown:
        print("ftp-alg rules are not installed")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    try:
        opts = _rule_options(args)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.backend == "nft":
        if opts.ftps:
            return _fail("FTPS ranges need the iptables backend (ipset)", 2)
        sys.stdout.write(rules.render_nft(opts))
    else:
        sys.stdout.write(rules.render_iptables_script(opts))
    return 0
