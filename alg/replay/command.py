"""`ftp-alg replay CAPTURE`: what the gateway would do to a recorded FTP capture."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from alg.core import Config
from alg.core.config import DEFAULT_CONTROL_PORTS
from alg.options import cli_type, parse_ports
from alg.replay import capture
from alg.replay.engine import Replay
from alg.replay.report import as_json, as_text


def _nat(values: list[str] | None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for text in values or []:
        addr = ipaddress.ip_address(text)
        out[addr.version] = addr.packed
    return out


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="replay a capture through the gateway and report", description=__doc__
    )
    p.add_argument("capture", help="pcap or pcapng file (optionally gzipped)")
    nat = p.add_mutually_exclusive_group()
    nat.add_argument(
        "--client-nat",
        action="append",
        metavar="ADDR",
        help="the client sits behind a NAT with this outside address (once per address family)",
    )
    nat.add_argument(
        "--server-nat",
        action="append",
        metavar="ADDR",
        help="the server sits behind a port forward on this outside address",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write the rewritten capture here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--ports",
        type=cli_type(parse_ports),
        default=frozenset(DEFAULT_CONTROL_PORTS),
        help="FTP control ports, comma-separated (default 21,2121)",
    )
    p.add_argument("--allow-fxp", action="store_true", help="let PORT/227 name a third host")
    p.set_defaults(func=run)


def replay(
    path: str,
    client_nat: dict[int, bytes],
    server_nat: dict[int, bytes],
    output: str | None = None,
    config: Config | None = None,
) -> Replay:
    config = config or Config()
    rep = Replay(path, config, client_nat, server_nat)
    frames = capture.read(path)
    writer: capture.Writer | None = None
    for frame, ip in rep.run(frames):
        if output is None:
            continue
        if writer is None:
            writer = capture.Writer(output, frame.linktype)
        writer.write(frame, ip)
    if writer is not None:
        writer.close()
    return rep


def run(args: argparse.Namespace) -> int:
    config = Config(control_ports=frozenset(args.ports), allow_fxp=args.allow_fxp)
    try:
        rep = replay(
            args.capture, _nat(args.client_nat), _nat(args.server_nat), args.output, config
        )
    except (OSError, ValueError) as exc:  # unreadable capture or address
        print(f"ftp-alg replay: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(as_json(rep.report) if args.json else as_text(rep.report))
    return 0
