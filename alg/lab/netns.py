"""Network namespaces, veth links and addresses: the part of the lab that differs from VMs.

Everything goes through iproute2's `ip` so that what the lab does can be replayed by hand from
the log. Links are created directly inside their namespaces (`ip link add ... netns`), so no
interface, address or rule ever appears in the root namespace, not even for a moment.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class CommandError(RuntimeError):
    """A command the lab ran failed; the message carries its stderr."""


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv with captured text output; raise CommandError (with stderr) if check fails."""
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"{' '.join(argv)}: no answer within {timeout} s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise CommandError(f"{' '.join(argv)} exited {proc.returncode}: {detail}")
    return proc


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def names() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def add(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def delete(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "delete", ns])


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """One point-to-point link between two namespaces, both ends up."""
    run(
        [
            "ip",
            "link",
            "add",
            if_a,
            "netns",
            ns_a,
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            ns_b,
        ]
    )
    run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
    run(["ip", "-n", ns_b, "link", "set", if_b, "up"])


def address(ns: str, ifname: str, cidr: str) -> None:
    """Add an address; IPv6 skips duplicate address detection so it is usable at once."""
    extra = ["nodad"] if ":" in cidr else []
    run(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname, *extra])


def pids(ns: str) -> list[int]:
    """Every process whose network namespace is ns (what keeps it alive after `delete`)."""
    if not exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
