"""The core is pure: importing it loads no I/O, packet or netlink library, and no clock."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import alg.core

FORBIDDEN = (
    "scapy",
    "netfilterqueue",
    "pyroute2",
    "socket",
    "logging",
    "time",
    "datetime",
    "select",
    "subprocess",
    "os",
    "random",
    "asyncio",
    "threading",
)


def test_importing_the_core_loads_no_io_module() -> None:
    code = (
        "import sys, alg.core, alg.core.gateway;"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=pathlib.Path(alg.core.__file__).parents[2],
    )
    loaded = [m for m in done.stdout.strip().split(",") if m]
    # The interpreter itself may preload a few of these (os, time) before any user code;
    # what matters is that the core's own imports add none of the I/O libraries.
    assert not {
        "scapy",
        "netfilterqueue",
        "pyroute2",
        "socket",
        "logging",
        "select",
        "subprocess",
        "asyncio",
        "threading",
    } & set(loaded), loaded


def test_no_core_module_imports_io_or_clock() -> None:
    root = pathlib.Path(alg.core.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
    assert len(list(root.glob("*.py"))) >= 10  # the scan saw the whole core
