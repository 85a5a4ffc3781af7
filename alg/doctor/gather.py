"""Read the router for `ftp-alg doctor`: the daemon's status socket, /proc, the admin's own
tools (iptables-save, nft, conntrack). Read only: nothing here changes the system, and a tool
that is missing leaves its fact unknown (None) instead of failing the whole diagnosis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from alg.daemon.settings import Settings, load
from alg.daemon.status import query
from alg.doctor.facts import Facts, conntrack_invalid
from alg.kernel.rules import RuleOptions

PROC_NFQUEUE = Path("/proc/net/netfilter/nfnetlink_queue")
PROC_EXPECT = Path("/proc/net/nf_conntrack_expect")
SYSCTL = Path("/proc/sys/net/netfilter")
FTP_MODULE_PORTS = Path("/sys/module/nf_conntrack_ftp/parameters/ports")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.strip().isdigit() else None


def _run(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _options(settings: Settings, status: dict[str, Any] | None) -> RuleOptions:
    """The rules this daemon needs: the running daemon's ports and queues win over the config
    (they are what it really reads), both families."""
    ports = tuple(sorted(settings.core.control_ports))
    first, count = settings.queue_num, settings.queue_count
    if status is not None:
        if isinstance(status.get("control_ports"), list) and status["control_ports"]:
            ports = tuple(sorted(int(p) for p in status["control_ports"]))
        first = int(status.get("queue", first))
        count = int(status.get("queues", count))
    balance = (first, first + count - 1) if count > 1 else None
    return RuleOptions(
        queue_num=first,
        ports=ports,
        queue_balance=balance,
        watch_mark=settings.watch_mark,
        passive_mark=settings.passive_mark,
    )


def _saves() -> dict[str, str]:
    """`iptables-save` of both families, in the flavour `iptables` is; the other flavour's too
    when it holds tables (a helper rule there catches packets just the same)."""
    saves: dict[str, str] = {}
    version = _run("iptables", "-V") or ""
    other = "legacy" if "nf_tables" in version else "nft"
    for tool, names in (("iptables", "ip_tables_names"), ("ip6tables", "ip6_tables_names")):
        text = _run(f"{tool}-save")
        if text is not None:
            saves[tool] = text
        # legacy tables exist only once ip_tables is loaded and used: don't load it by asking
        if other == "legacy" and not (_read(Path("/proc/net") / names) or "").strip():
            continue
        text = _run(f"{tool}-{other}-save")
        if text and "\n-A " in text:
            saves[f"{tool}-{other}"] = text
    return saves


def _expect_count() -> int | None:
    text = _read(PROC_EXPECT)
    if text is None:
        text = _run("conntrack", "-L", "expect")
    return None if text is None else sum(1 for line in text.splitlines() if line.strip())


def _invalid_delta(seconds: float) -> int | None:
    if seconds <= 0:
        return None
    before = _run("conntrack", "-S")
    if before is None:
        return None
    time.sleep(seconds)
    after = _run("conntrack", "-S")
    return None if after is None else conntrack_invalid(after) - conntrack_invalid(before)


def _conntrackd_here() -> bool:
    """A conntrackd process in this network namespace."""
    try:
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (_read(entry / "comm") or "").strip() != "conntrackd":
            continue
        try:
            ns = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (own.st_dev, own.st_ino):
            return True
    return False


def gather(config: str | None, status_socket: str | None, invalid_seconds: float) -> Facts:
    config_error = ""
    settings = Settings()
    if config is not None:
        try:
            settings = load(config, {})
        except (OSError, ValueError) as exc:
            config_error = f"{config}: {exc}"
    socket_path = status_socket or settings.status_socket
    status: dict[str, Any] | None = None
    status_error = ""
    try:
        status = query(socket_path)
    except (OSError, ValueError) as exc:
        status_error = str(exc) or type(exc).__name__
    facts = Facts(
        expected=_options(settings, status),
        config_error=config_error,
        status_socket=socket_path,
        status=status,
        status_error=status_error,
        nfqueue=_read(PROC_NFQUEUE),
        saves=_saves(),
        nft_ruleset=_run("nft", "list", "ruleset"),
        auto_helper=(_read(SYSCTL / "nf_conntrack_helper") or "").strip() or None,
        ftp_module_ports=(_read(FTP_MODULE_PORTS) or "").strip() or None,
        expect_max=_int(SYSCTL / "nf_conntrack_expect_max"),
        expect_count=_expect_count(),
        invalid_delta=_invalid_delta(invalid_seconds),
        invalid_seconds=invalid_seconds,
        conntrackd_running=_conntrackd_here(),
    )
    if config is not None and not config_error:
        facts = replace(facts, config_ports=tuple(sorted(settings.core.control_ports)))
    return facts
