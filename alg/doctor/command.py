"""`ftp-alg doctor`: print every finding with its fix; exit 1 if any is a warning or error."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from alg.daemon.settings import CONFIG_ENV, STATUS_SOCKET_ENV, config_default
from alg.doctor.checks import Finding, Severity, diagnose

_MARK = {
    Severity.OK: "ok",
    Severity.INFO: "info",
    Severity.WARNING: "WARNING",
    Severity.ERROR: "ERROR",
}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help=f"the daemon's TOML config (default ${CONFIG_ENV}, else /etc/ftp-alg/ftp-alg.toml "
        "if present)",
    )
    parser.add_argument(
        "--status-socket",
        help=f"the daemon's status socket (default ${STATUS_SOCKET_ENV}, else the config's)",
    )
    parser.add_argument(
        "--invalid-seconds",
        type=float,
        default=1.0,
        help="watch conntrack's INVALID counter this long; 0 skips it (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only what is wrong")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check this router for what makes FTP fail, with fixes (root)",
        description=__doc__,
    )
    add_options(p)
    p.set_defaults(func=doctor)


def render(findings: list[Finding], quiet: bool = False) -> str:
    lines: list[str] = []
    for f in findings:
        if quiet and f.severity < Severity.WARNING:
            continue
        lines.append(f"{_MARK[f.severity]}: {f.what}")
        if f.fix and f.severity > Severity.OK:
            lines.append(f"  fix: {f.fix}")
    return "\n".join(lines)


def exit_status(findings: list[Finding]) -> int:
    return 1 if any(f.severity >= Severity.WARNING for f in findings) else 0


def doctor(args: argparse.Namespace) -> int:
    from alg.doctor.gather import gather  # reads the system: only when run

    if os.geteuid() != 0:
        print(
            "ftp-alg doctor: run it as root: iptables-save, nft and conntrack show nothing "
            "otherwise, and every rule would look missing",
            file=sys.stderr,
        )
        return 2

    config = args.config or config_default()
    socket_path = args.status_socket or os.environ.get(STATUS_SOCKET_ENV) or None
    findings = diagnose(gather(config, socket_path, args.invalid_seconds))
    if args.json:
        doc = [
            {"severity": _MARK[f.severity].lower(), "what": f.what, "fix": f.fix} for f in findings
        ]
        print(json.dumps(doc, indent=1))
    else:
        text = render(findings, args.quiet)
        if text:
            print(text)
    status = exit_status(findings)
    if not args.json:
        print(
            "ftp-alg doctor: " + ("problems found" if status else "nothing wrong found"),
            file=sys.stderr,
        )
    return status
