"""`ftp-alg lab ...`: the namespace lab from the command line.

up / down / status / exec / gateway / failover / demo / bench. Each handler returns an exit
status; a LabError becomes a one-line message and status 1, since the lab's users want the
reason, not a trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alg.lab import backend
from alg.lab.netns import CommandError
from alg.lab.topology import TopologyError


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (backend.LabError, CommandError, TopologyError, ValueError) as exc:
            print(f"ftp-alg lab: {exc}", file=sys.stderr)
            return 1

    return run


def _up(args: argparse.Namespace) -> int:
    backend.up(args.prefix, args.gateway, replace=args.replace, with_ha=args.ha)
    return 0


def _failover(args: argparse.Namespace) -> int:
    result = backend.failover(args.prefix)
    print(f"failed {result.failed}")
    print(f"active {result.active}")
    print(f"crash_seconds {result.crash_s:.3f}")
    print(f"takeover_seconds {result.takeover_s:.3f}")
    print(f"keepalived {int(result.keepalived)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    backend.down(args.prefix)
    return 0


def _status(args: argparse.Namespace) -> int:
    info = backend.status(args.prefix)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_status_text(info))
    return 0 if info["up"] else 3


def _status_text(info: dict[str, Any]) -> str:
    up = "up" if info["up"] else "down"
    lines = [
        f"lab '{info['prefix']}': {up}, gateway: {info['gateway'] or '-'}",
        f"  router public   {info['router_public']:<16} {info['router_public_v6']}",
        f"  outside server  {info['outside_server']:<16} {info['outside_server_v6']}",
        f"  inside server   {info['inside_server']:<16} {info['inside_server_v6']}"
        "  (reached from outside through the router public address)",
        f"  client          {info['client']:<16} {info['client_v6']}",
    ]
    for name, node in info["nodes"].items():
        procs = ", ".join(
            f"{p}={v['pid']}{'' if v['running'] else ' (dead)'}"
            for p, v in node["processes"].items()
        )
        state = "" if node["exists"] else " (missing)"
        lines.append(f"  {name:<8} netns {node['namespace']}{state}  {procs}")
    return "\n".join(lines)


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    return backend.exec_in(args.prefix, args.node, argv)


def _gateway(args: argparse.Namespace) -> int:
    info = backend.status(args.prefix)
    routers = [n for n in info["nodes"].values() if n["role"] == "router"]
    died = [n for n in routers if not n["processes"].get("ftp-alg", {}).get("running", False)]
    if args.mode == "ftp-alg" and info["gateway"] == "ftp-alg" and died:
        # The gateway is ftp-alg already and its daemon died: start it again, and keep the
        # sessions (no conntrack flush): they go on from the offsets conntrack holds.
        backend.daemon(args.prefix, "start")
    else:
        backend.set_gateway(args.prefix, args.mode)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from alg.lab.demo import run as demo  # imported late: only the demo needs the client runners

    return demo.run(args.prefix, working_gateway=args.gateway, keep=args.keep)


def _bench(args: argparse.Namespace) -> int:
    from alg.lab.bench import (
        run as bench,  # imported late: only the bench needs its probe and matplotlib
    )

    config = Path(args.daemon_config) if args.daemon_config else None
    return bench.command(
        args.prefix,
        args.quick,
        args.rounds,
        Path(args.output),
        args.keep,
        config,
        with_failover=not args.no_failover,
    )


def register(subparsers: Any) -> None:
    lab = subparsers.add_parser(
        "lab",
        help="network-namespace lab that reproduces FTP NAT failures",
        description="A client behind a masquerading router, an outside server, and an inside "
        "server behind a port forward, each in its own network namespace.",
    )
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        p.add_argument(
            "--prefix",
            default=backend.DEFAULT_PREFIX,
            help="namespace name prefix, so several labs coexist (default: %(default)s)",
        )
        p.set_defaults(func=_guarded(fn))
        return p

    p = add("up", _up, "build the lab and start its FTP servers")
    p.add_argument("--gateway", choices=backend.GATEWAY_MODES, default="none")
    p.add_argument("--replace", action="store_true", help="tear down a lab of this prefix first")
    p.add_argument(
        "--ha",
        action="store_true",
        help="two routers (conntrackd over a sync link, SNAT to a shared public address)",
    )
    add(
        "failover",
        _failover,
        "crash the active router of an --ha lab; the standby takes the addresses and commits "
        "conntrackd's cache",
    )
    add("down", _down, "stop the lab's processes and delete its namespaces and state")
    p = add("status", _status, "addresses, namespaces, gateway and processes of the lab")
    p.add_argument("--json", action="store_true")
    p = add("exec", _exec, "run a command inside a node: exec NODE -- CMD...")
    p.add_argument("node")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = add("gateway", _gateway, "switch the router's gateway on a running lab")
    p.add_argument("mode", choices=backend.GATEWAY_MODES)
    p = add("demo", _demo, "show FTP failing through NAT without a gateway, then working")
    p.add_argument(
        "--gateway",
        choices=[m for m in backend.GATEWAY_MODES if m != "none"],
        default="ftp-alg",
        help="gateway for the working half (default: %(default)s)",
    )
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p = add(
        "bench",
        _bench,
        "measure ftp-alg against the kernel helper and plain NAT: round trip, session rate, "
        "throughput, daemon CPU and memory; one `name value` figure per line",
    )
    p.set_defaults(prefix="bench")  # its own lab, apart from the default one
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    p.add_argument(
        "--quick", action="store_true", help="small sizes and short runs (the test uses it)"
    )
    p.add_argument(
        "--output", default="lab-bench.png", help="PNG chart path (default: %(default)s)"
    )
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.add_argument(
        "--no-failover",
        action="store_true",
        help="skip the failover lab (built under PREFIX + 'h', twice: 25-60 s)",
    )
    p.add_argument(
        "--daemon-config",
        metavar="TOML",
        help="config file for the router's ftp-alg daemon (e.g. busy_poll_us)",
    )
