"""The lab's command line, end to end, on a lab of its own (prefix `td`): `up` refuses to
build over an existing lab, `status --json` names the addresses and namespaces, `exec` returns
the command's status, `gateway` switches the router's rules, and `down` leaves nothing behind
(no namespace, no process, no state directory), however often it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alg.lab import backend, netns, state
from tests.lab.conftest import unavailable

pytestmark = pytest.mark.netns
PREFIX = os.environ.get("FTP_ALG_TEST_LAB", "") + "td"


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "alg.cli", "lab", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names `text` (the lab's state directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and state.alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def root_namespace_rules() -> str:
    commands = [
        [tool, "-t", table, "-S"]
        for tool in ("iptables", "ip6tables")
        for table in ("filter", "nat", "raw", "mangle")
    ]
    return "".join(
        subprocess.run(cmd, capture_output=True, text=True, check=False).stdout for cmd in commands
    )


@pytest.fixture
def own_lab() -> Iterator[dict[str, object]]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    rules_before = root_namespace_rules()
    up = lab_cli("up", "--prefix", PREFIX)
    try:
        assert up.returncode == 0, up.stderr
        status = lab_cli("status", "--json", "--prefix", PREFIX)
        assert status.returncode == 0, status.stderr
        yield json.loads(status.stdout)
    finally:
        backend.down(PREFIX, log=lambda _: None)
    assert root_namespace_rules() == rules_before, "the lab changed the root namespace's rules"


def test_status_names_addresses_namespaces_and_processes(own_lab: dict[str, object]) -> None:
    info = own_lab
    assert info["up"] is True
    assert info["gateway"] == "none"
    assert info["router_public"] == "198.51.100.1"
    assert info["router_public_v6"] == "fd00:198:51:100::1"
    assert info["outside_server"] == "198.51.100.20"
    assert info["inside_server"] == "192.168.78.20"
    assert info["inside_server_v6"] == "fd00:192:168:78::20"
    assert info["namespaces"] == {
        n: f"{PREFIX}-{n}" for n in ("client", "router", "server", "inside")
    }
    nodes = info["nodes"]
    assert isinstance(nodes, dict)
    for node in ("server", "inside"):
        procs = nodes[node]["processes"]
        assert set(procs) == {"vsftpd", "pyftpdlib"}
        assert all(p["running"] for p in procs.values()), procs


def test_up_twice_is_refused_clearly(own_lab: dict[str, object]) -> None:
    again = lab_cli("up", "--prefix", PREFIX)
    assert again.returncode == 1
    assert f"lab '{PREFIX}' is already up" in again.stderr
    assert lab_cli("status", "--prefix", PREFIX).returncode == 0  # and left it intact


def test_exec_runs_in_the_node_and_returns_its_status(own_lab: dict[str, object]) -> None:
    assert lab_cli("exec", "--prefix", PREFIX, "client", "--", "sh", "-c", "exit 7").returncode == 7
    route = subprocess.run(
        netns.in_ns(f"{PREFIX}-client", ["ip", "-4", "route", "show", "default"]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "via 192.168.77.1" in route.stdout
    # the outside server must not know the way back to the LAN or the DMZ
    routes = subprocess.run(
        netns.in_ns(f"{PREFIX}-server", ["ip", "route"]), capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes and "192.168." not in routes, routes


def test_gateway_switches_the_router_rules(own_lab: dict[str, object]) -> None:
    def helper_rules() -> str:
        argv = netns.in_ns(f"{PREFIX}-router", ["iptables", "-t", "raw", "-S", "LAB-HELPER"])
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    assert "--helper ftp" not in helper_rules()
    assert lab_cli("gateway", "--prefix", PREFIX, "kernel").returncode == 0
    assert helper_rules().count("--helper ftp") == 2  # ports 21 and 2121
    assert json.loads(lab_cli("status", "--json", "--prefix", PREFIX).stdout)["gateway"] == "kernel"
    assert lab_cli("gateway", "--prefix", PREFIX, "kernel").returncode == 0  # idempotent
    assert helper_rules().count("--helper ftp") == 2
    assert lab_cli("gateway", "--prefix", PREFIX, "none").returncode == 0
    assert "--helper ftp" not in helper_rules()


def test_down_leaves_nothing_behind_and_can_run_twice(own_lab: dict[str, object]) -> None:
    info = own_lab
    nodes = info["nodes"]
    assert isinstance(nodes, dict)
    pids = [p["pid"] for n in nodes.values() for p in n["processes"].values()]
    # a session process and a shell left running inside the lab must go too
    lab_cli("exec", "--prefix", PREFIX, "client", "--", "curl", "-s", "ftp://198.51.100.20/")
    sleeper = subprocess.Popen(netns.in_ns(f"{PREFIX}-client", ["sleep", "300"]))

    first = lab_cli("down", "--prefix", PREFIX)
    assert first.returncode == 0, first.stderr
    sleeper.wait(timeout=10)
    assert not [n for n in netns.names() if n.startswith(f"{PREFIX}-")]
    assert not [p for p in pids if state.alive(p)]
    assert not processes_mentioning(str(state.lab_dir(PREFIX)))
    assert not state.lab_dir(PREFIX).exists()
    second = lab_cli("down", "--prefix", PREFIX)
    assert second.returncode == 0, second.stderr
    assert lab_cli("status", "--prefix", PREFIX).returncode == 3  # "down"


def test_provisioning_again_changes_nothing(own_lab: dict[str, object]) -> None:
    """The scripts are idempotent: re-running `up` on every node keeps the rules (no duplicate),
    the running servers (same PIDs) and the test files (same sha256)."""
    record, topo = backend.lab_record(PREFIX)

    def snapshot() -> tuple[str, str, str, str]:
        router = f"{PREFIX}-router"
        rules = "".join(
            subprocess.run(
                netns.in_ns(router, [tool]), capture_output=True, text=True, check=False
            ).stdout
            for tool in ("iptables-save", "ip6tables-save")
        )
        rules = "\n".join(line for line in rules.splitlines() if not line.startswith(("#", ":")))
        status = json.dumps(backend.status(PREFIX)["nodes"], sort_keys=True)
        sums = "".join(
            (state.node_dir(PREFIX, n) / "ftp" / "1mib.bin.sha256").read_text()
            for n in ("server", "inside")
        )
        routes = subprocess.run(
            netns.in_ns(f"{PREFIX}-client", ["ip", "route"]),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return rules, status, sums, routes

    before = snapshot()
    for node in ("router", "server", "inside", "client"):
        backend.provision(record, topo, node, ["up", "none"] if node == "router" else ["up"])
    assert snapshot() == before
