"""Python ftplib as one of the lab's FTP clients: run inside a node, print one JSON outcome.

Run as `python -m alg.lab.probes.ftplib_probe ...` under `ip netns exec`, since a namespace
belongs to a process, not to a socket the caller could hand over. The transcript uses curl's verbose
markers ("> " command, "< " reply, "* " note) so that one parser reads both clients.
ftplib picks the verb from the address family: PORT/PASV over IPv4, EPRT/EPSV over IPv6.
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import json
import os
import sys
from typing import Any


class RecordingFTP(ftplib.FTP):
    """ftplib.FTP that keeps every line it sends and receives, in order."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.transcript: list[str] = []

    def putline(self, line: str) -> None:
        self.transcript.append("> " + line)
        super().putline(line)

    def getline(self) -> str:
        line = super().getline()
        self.transcript.append("< " + line)
        return line


def _session(ftp: RecordingFTP, args: argparse.Namespace, result: dict[str, Any]) -> None:
    ftp.connect(args.host, args.port)
    ftp.login()
    ftp.set_pasv(args.mode == "passive")
    # ftplib's own switch (Python >= 3.9), missing from typeshed's stub
    ftp.trust_server_pasv_ipv4_address = args.trust_pasv  # type: ignore[attr-defined]
    if args.op == "retr":
        digest = hashlib.sha256()
        size = 0

        def sink(block: bytes) -> None:
            nonlocal size
            digest.update(block)
            size += len(block)

        ftp.retrbinary(f"RETR {args.path}", sink)
        result.update(sha256=digest.hexdigest(), bytes=size)
    elif args.op == "stor":
        with open(args.local, "rb") as fh:
            ftp.storbinary(f"STOR upload/{os.path.basename(args.local)}", fh)
    else:
        lines: list[str] = []
        ftp.retrlines("LIST", lines.append)
        result["listing"] = "\n".join(lines)
    ftp.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=21)
    parser.add_argument("--mode", choices=("active", "passive"), required=True)
    parser.add_argument("--op", choices=("retr", "stor", "list"), required=True)
    parser.add_argument("--path", default="1mib.bin", help="file to RETR")
    parser.add_argument("--local", help="file to STOR into upload/")
    parser.add_argument("--trust-pasv", action="store_true", help="use the 227 address")
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args(argv)

    ftp = RecordingFTP(args.timeout)
    result: dict[str, Any] = {"ok": False, "error": None}
    try:
        _session(ftp, args, result)
        result["ok"] = True
    except (OSError, EOFError, ftplib.Error) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        ftp.transcript.append(f"* {result['error']}")
        ftp.close()
    result["transcript"] = ftp.transcript
    json.dump(result, sys.stdout)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
