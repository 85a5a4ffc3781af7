"""Network namespaces, veth links and addresses: the part of the lab that differs from VMs.

Everything goes through iproute2's `ip` so that what the lab does can be replayed by hand from
the log. Links are created directly inside their namespaces (`ip link add ... netns`), so no
interface, address or rule ever appears in the root namespace, not even for a moment. The one
exception is `enter`, for tests that open sockets inside a namespace from their own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)  # os.setns arrives with Python 3.12


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


def run_in(
    ns: str,
    *argv: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`run` of argv inside namespace ns."""
    return run(in_ns(ns, argv), env=env, timeout=timeout, check=check)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def enter(ns: str) -> Iterator[None]:
    """Run the block with the calling thread (only it) in namespace ns, then switch it back.

    A socket stays in the namespace it was created in, so a test opens its sockets (or a
    netlink handle) in here and uses them from anywhere afterwards.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / ns, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


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
