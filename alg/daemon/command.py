"""`ftp-alg run` and `ftp-alg status`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from alg.daemon.settings import (
    DEFAULT_STATUS_SOCKET,
    STATUS_SOCKET_ENV,
    load,
    status_socket_default,
)
from alg.options import cli_type, parse_balance, parse_ports


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the gateway on an NFQUEUE (root, after `rules apply`)")
    p.add_argument("--config", help="TOML config file (see docs/ftp-alg.toml)")
    p.add_argument("--queue-num", type=int, help="NFQUEUE number (default 0)")
    p.add_argument(
        "--queue-balance",
        metavar="A:B",
        type=cli_type(parse_balance),
        help="read queues A..B, as `rules apply --queue-balance A:B` spreads them",
    )
    p.add_argument(
        "--ports",
        type=cli_type(parse_ports),
        dest="control_ports",
        help="FTP control ports (default 21,2121)",
    )
    p.add_argument(
        "--fail-closed",
        action="store_true",
        default=None,
        help="drop a packet that hit an internal error instead of passing it",
    )
    p.add_argument(
        "--allow-fxp",
        action="store_true",
        default=None,
        help="let PORT/227 name a third host (server-to-server transfers)",
    )
    p.add_argument("--expect-timeout", type=float, help="seconds (default 60)")
    p.add_argument(
        "--busy-poll-us",
        type=int,
        help="poll the queue this long after traffic before sleeping (default 0)",
    )
    p.add_argument("--status-socket", help=f"unix socket (default {DEFAULT_STATUS_SOCKET})")
    p.add_argument(
        "--metrics-listen",
        metavar="ADDR:PORT",
        help="serve Prometheus /metrics here, e.g. 127.0.0.1:9477 or [::1]:9477 (default off)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)
    s = sub.add_parser("status", help="print the running daemon's counters")
    s.add_argument(
        "--status-socket",
        default=status_socket_default(),
        help=f"unix socket (default ${STATUS_SOCKET_ENV} or {DEFAULT_STATUS_SOCKET})",
    )
    s.add_argument("--json", action="store_true", help="print the state as one JSON document")
    s.set_defaults(func=status)


def run(args: argparse.Namespace) -> int:
    keys = (
        "queue_num",
        "control_ports",
        "fail_closed",
        "allow_fxp",
        "expect_timeout",
        "status_socket",
        "log_level",
        "busy_poll_us",
        "metrics_listen",
    )
    overrides = {k: getattr(args, k) for k in keys}
    if args.queue_balance is not None:
        first, last = args.queue_balance
        overrides.update(queue_num=first, queue_count=last - first + 1)
    try:
        settings = load(args.config, overrides)
    except (OSError, ValueError) as exc:
        print(f"ftp-alg run: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s ftp-alg %(levelname)s %(message)s",
    )
    from alg.daemon.loop import Daemon

    try:
        return Daemon(settings).run()
    except OSError as exc:  # queue already bound, not root, status socket path unusable
        logging.getLogger("ftp-alg").error("cannot start: %s", exc)
        return 1


def status(args: argparse.Namespace) -> int:
    from alg.daemon.status import query

    try:
        result = query(args.status_socket)
    except OSError as exc:
        print(f"ftp-alg status: no daemon answers on {args.status_socket}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"pid {result['pid']}, up {result['uptime']} s, queue {result['queue']}, "
        f"sessions {result['sessions']}, expectations {result['expectations']}"
    )
    for name, value in result["counters"].items():
        print(f"{name} {value}")
    return 0
