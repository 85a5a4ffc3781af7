"""What a running lab is made of, kept on disk so that `down` stops exactly that.

/run/ftp-alg-lab/<prefix>/lab.json names the namespaces; nodes/<node>/ is each node's state
directory (LAB_STATE_DIR for its provisioning scripts): pid files, logs, server configuration,
the served tree. Pid files hold "PID STARTTIME" (written by provision/common.sh), so a recycled
PID is never mistaken for one of the lab's processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ROOT = Path("/run/ftp-alg-lab")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # short: it prefixes namespace names


@dataclass(frozen=True)
class LabRecord:
    prefix: str
    topology: str  # path of the topology.json the lab was built from
    namespaces: dict[str, str]  # node -> namespace name


@dataclass(frozen=True)
class Process:
    node: str
    name: str
    pid: int
    running: bool


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"lab prefix {prefix!r} must match {_PREFIX.pattern}")
    return prefix


def lab_dir(prefix: str) -> Path:
    return STATE_ROOT / check_prefix(prefix)


def node_dir(prefix: str, node: str) -> Path:
    return lab_dir(prefix) / "nodes" / node


def save(record: LabRecord) -> None:
    path = lab_dir(record.prefix)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)  # vsftpd's anonymous root lies below: the ftp user must traverse it
    (path / "lab.json").write_text(json.dumps(asdict(record), indent=2) + "\n")


def load(prefix: str) -> LabRecord | None:
    try:
        raw = json.loads((lab_dir(prefix) / "lab.json").read_text())
    except FileNotFoundError:
        return None
    return LabRecord(raw["prefix"], raw["topology"], dict(raw["namespaces"]))


def remove(prefix: str) -> None:
    shutil.rmtree(lab_dir(prefix), ignore_errors=True)
    with contextlib.suppress(OSError):  # the last lab out removes the root too
        STATE_ROOT.rmdir()


def gateway_mode(prefix: str, router: str) -> str | None:
    try:
        return (node_dir(prefix, router) / "gateway-mode").read_text().strip() or None
    except FileNotFoundError:
        return None


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 on (after the parenthesised name, which may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the PID, it names one process for good."""
    stat = _stat(pid)
    return stat[19] if stat else None


def alive(pid: int) -> bool:
    """Exists and is not a zombie (a reparented zombie may wait seconds for its reaper)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def processes(prefix: str, node: str, netns_path: Path) -> list[Process]:
    """The processes recorded for a node; running means alive, same start time, same netns."""
    found = []
    for pidfile in sorted((node_dir(prefix, node) / "pids").glob("*.pid")):
        fields = pidfile.read_text().split()
        if len(fields) != 2 or not fields[0].isdigit():
            continue
        pid = int(fields[0])
        running = alive(pid) and starttime(pid) == fields[1] and _same_netns(pid, netns_path)
        found.append(Process(node, pidfile.stem, pid, running))
    return found


def _same_netns(pid: int, netns_path: Path) -> bool:
    try:
        proc, ns = os.stat(f"/proc/{pid}/ns/net"), os.stat(netns_path)
    except OSError:
        return False
    return (proc.st_dev, proc.st_ino) == (ns.st_dev, ns.st_ino)
