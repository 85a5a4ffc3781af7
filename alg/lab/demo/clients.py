"""The lab's real FTP clients, driven one way: a Request in, an Outcome (with the transcript) out.

The demo and the tests both need to say *why* a transfer failed ("500 Illegal PORT command.",
"Network is unreachable"), not only that it did, so every client runs with its debug output on
and the lines are normalised to curl's verbose markers: "> " command sent, "< " reply received,
"* " a note from the client. Each client runs inside a node through `ip netns exec`.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alg.lab import netns

CLIENTS = ("curl", "ftplib", "lftp", "tnftp", "wget", "busybox")
OPS = ("retr", "stor", "list")
_REPLY = re.compile(r"^\d{3}[ -]")
_serial = itertools.count()
_Parser = Callable[[str], list[str]]  # a client's output -> normalised transcript lines


class Mode(enum.StrEnum):
    """How the data connection is opened (RFC 959 PORT/PASV, RFC 2428 EPRT/EPSV)."""

    PORT = "PORT"
    EPRT = "EPRT"
    PASV = "PASV"
    EPSV = "EPSV"

    @property
    def active(self) -> bool:
        return self in (Mode.PORT, Mode.EPRT)


# What each client can be made to send, per address family, and which operations it does.
# ftplib, lftp and wget choose PORT/PASV over IPv4 and EPRT/EPSV over IPv6 by themselves; tnftp
# starts with EPRT/EPSV on both; busybox ftpget/ftpput are passive only and start with EPSV.
_MODES: dict[str, set[tuple[Mode, int]]] = {
    "curl": {(m, f) for m in Mode for f in (4, 6)} - {(Mode.PORT, 6), (Mode.PASV, 6)},
    "ftplib": {(Mode.PORT, 4), (Mode.EPRT, 6), (Mode.PASV, 4), (Mode.EPSV, 6)},
    "lftp": {(Mode.PORT, 4), (Mode.EPRT, 6), (Mode.PASV, 4), (Mode.EPSV, 4), (Mode.EPSV, 6)},
    "tnftp": {(Mode.EPRT, 4), (Mode.EPRT, 6), (Mode.EPSV, 4), (Mode.EPSV, 6)},
    "wget": {(Mode.PORT, 4), (Mode.EPRT, 6), (Mode.PASV, 4), (Mode.EPSV, 6)},
    "busybox": {(Mode.EPSV, 4), (Mode.EPSV, 6)},
}
_OPS = {
    "curl": OPS,
    "ftplib": OPS,
    "lftp": OPS,
    "tnftp": ("retr", "stor"),
    "wget": ("retr",),
    "busybox": ("retr", "stor"),
}


@dataclass(frozen=True)
class Request:
    host: str
    port: int
    mode: Mode
    op: str = "retr"
    trust_pasv: bool = False  # connect to the address in a 227 rather than the control peer
    path: str = "1mib.bin"  # what RETR fetches
    local: Path | None = None  # what STOR sends, as upload/<its name>
    timeout: float = 10

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if self.family == 6 else self.host
        return f"ftp://{host}:{self.port}/"

    @property
    def upload_name(self) -> str:
        if self.local is None:
            raise ValueError("a STOR request needs a local file")
        return self.local.name


@dataclass(frozen=True)
class Outcome:
    client: str
    request: Request
    status: int
    transcript: tuple[str, ...]
    output: str = field(repr=False)  # everything the client printed, for a failure message
    sha256: str | None = None  # of what RETR brought back
    listing: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    def reply_to(self, verb: str) -> str | None:
        """The final reply line to the first command starting with `verb`, if any."""
        sent = False
        for line in self.transcript:
            if line.startswith("> ") and line[2:].upper().startswith(verb.upper()):
                sent = True
            elif sent and line.startswith("< ") and re.match(r"^\d{3} ", line[2:]):
                return line[2:]
        return None

    def data_verbs(self) -> list[str]:
        """The data-connection commands the client sent (PORT, EPRT, PASV, EPSV), in order."""
        verbs = [line[2:6].upper() for line in self.transcript if line.startswith("> ")]
        return [v for v in verbs if v in Mode.__members__]

    def stayed(self) -> bool:
        """True if the client never switched between active and passive on its own (lftp
        does after a failure, which would pass a test for the wrong reason)."""
        return all(Mode(v).active == self.request.mode.active for v in self.data_verbs())

    def notes(self) -> list[str]:
        return [line[2:] for line in self.transcript if line.startswith("* ")]

    def show(self) -> str:
        return "\n".join(self.transcript) or self.output


def supports(client: str, mode: Mode, family: int, op: str = "retr") -> bool:
    return (mode, family) in _MODES[client] and op in _OPS[client]


def run(client: str, ns: str, req: Request, workdir: Path) -> Outcome:
    """Run one transfer with `client` inside namespace `ns`; files land in workdir."""
    if not supports(client, req.mode, req.family, req.op):
        raise ValueError(f"{client} cannot do {req.op} with {req.mode} over IPv{req.family}")
    out = workdir / f"{client}-{next(_serial)}.out"
    if client == "ftplib":
        return _ftplib(ns, req)
    argv, parse = _BUILDERS[client](req, out)
    # tnftp -u names the remote file after the local argument as given: run beside the file
    cwd = req.local.parent if req.local is not None else None
    proc = netns.run(netns.in_ns(ns, argv), check=False, timeout=req.timeout * 3 + 10, cwd=cwd)
    text = proc.stdout + proc.stderr
    sha = listing = None
    if proc.returncode == 0 and req.op == "retr" and out.exists():
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
    if proc.returncode == 0 and req.op == "list" and out.exists():
        listing = out.read_text(errors="replace")
    return Outcome(client, req, proc.returncode, tuple(parse(text)), text, sha, listing)


def _ftplib(ns: str, req: Request) -> Outcome:
    mode = "active" if req.mode.active else "passive"
    opts = {"--host": req.host, "--port": str(req.port), "--mode": mode, "--op": req.op}
    opts.update({"--path": req.path, "--timeout": str(req.timeout)})
    argv = [sys.executable, "-m", "alg.lab.probes.ftplib_probe", *itertools.chain(*opts.items())]
    if req.trust_pasv:
        argv.append("--trust-pasv")
    if req.op == "stor":
        argv += ["--local", str(req.local)]
    proc = netns.run(netns.in_ns(ns, argv), check=False, timeout=req.timeout * 3 + 10)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return Outcome("ftplib", req, proc.returncode or 1, (), proc.stdout + proc.stderr)
    return Outcome(
        "ftplib",
        req,
        proc.returncode,
        tuple(result["transcript"]),
        proc.stdout + proc.stderr,
        result.get("sha256"),
        result.get("listing"),
    )


def _curl(req: Request, out: Path) -> tuple[list[str], _Parser]:
    argv = ["curl", "-g", "-sS", "-v", "--max-time", str(req.timeout)]
    argv += {
        Mode.PORT: ["-P", "-", "--disable-eprt"],
        Mode.EPRT: ["-P", "-"],
        Mode.PASV: ["--disable-epsv"],
        Mode.EPSV: [],
    }[req.mode]
    argv.append("--no-ftp-skip-pasv-ip" if req.trust_pasv else "--ftp-skip-pasv-ip")
    if req.op == "retr":
        argv += ["-o", str(out), req.url + req.path]
    elif req.op == "list":
        argv += ["-o", str(out), req.url]
    else:
        argv += ["-T", str(req.local), req.url + "upload/" + req.upload_name]
    return argv, _curl_lines


def _curl_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line[:2] in ("> ", "< ", "* ")]


def _lftp(req: Request, out: Path) -> tuple[list[str], _Parser]:
    settings = [
        "set cmd:fail-exit yes",
        "set net:max-retries 1",
        f"set net:timeout {req.timeout}",
        "set net:reconnect-interval-base 1",
        "set ftp:ssl-allow no",
        f"set ftp:passive-mode {'off' if req.mode.active else 'on'}",
        f"set ftp:prefer-epsv {'yes' if req.mode is Mode.EPSV else 'no'}",
        f"set ftp:fix-pasv-address {'no' if req.trust_pasv else 'yes'}",
    ]
    if req.op == "retr":
        op = f"get {req.path} -o {out}"
    elif req.op == "list":
        op = f"ls > {out}"
    else:
        op = f"put {req.local} -o upload/{req.upload_name}"
    return ["lftp", "-d", "-e", "; ".join([*settings, op, "bye"]), req.url], _arrow_lines


def _arrow_lines(text: str) -> list[str]:
    """lftp and tnftp debug output: "---> " sent, "<--- " received, "---- " note."""
    marks = {"---> ": "> ", "<--- ": "< ", "---- ": "* "}
    lines = []
    for line in text.splitlines():
        if line[:5] in marks:
            lines.append(marks[line[:5]] + line[5:].rstrip())
        elif _REPLY.match(line):  # tnftp -v prints replies bare
            lines.append("< " + line.rstrip())
    return lines


def _tnftp(req: Request, out: Path) -> tuple[list[str], _Parser]:
    argv = ["tnftp", "-d", "-v", "-q", str(int(req.timeout)), "-A" if req.mode.active else "-p"]
    if req.op == "retr":
        argv += ["-o", str(out), req.url + req.path]
    else:
        argv += ["-u", req.url + "upload/", req.upload_name]
    return argv, _arrow_lines


def _wget(req: Request, out: Path) -> tuple[list[str], _Parser]:
    argv = ["wget", "-d", "--no-hsts", "--tries=1", f"--timeout={req.timeout}", "-O", str(out)]
    if req.mode.active:
        argv.append("--no-passive-ftp")
    return [*argv, req.url + req.path], _wget_lines


def _wget_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if line.startswith("--> "):
            lines.append("> " + line[4:].rstrip())
        elif _REPLY.match(line):
            lines.append("< " + line.rstrip())
    return lines


def _busybox(req: Request, out: Path) -> tuple[list[str], _Parser]:
    server = ["-v", "-P", str(req.port), req.host]
    if req.op == "retr":
        return ["busybox", "ftpget", *server, str(out), req.path], _busybox_lines
    upload = [f"upload/{req.upload_name}", str(req.local)]
    return ["busybox", "ftpput", *server, *upload], _busybox_lines


def _busybox_lines(text: str) -> list[str]:
    """busybox -v prints the commands it sends ("ftpget: cmd EPSV (null)"), not the replies."""
    lines = []
    for line in text.splitlines():
        m = re.match(r"^ftp(?:get|put): cmd (.*?)(?: \(null\))*$", line)
        if m:
            if m.group(1) != "(null)":  # the greeting and the final reply: no command sent
                lines.append("> " + m.group(1))
        elif line.strip():
            lines.append("* " + line.rstrip())
    return lines


_BUILDERS = {"curl": _curl, "lftp": _lftp, "tnftp": _tnftp, "wget": _wget, "busybox": _busybox}
