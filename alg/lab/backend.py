"""The namespace backend: builds the topology out of namespaces and veths, then hands every node
to the same provisioning scripts a Vagrant VM runs (provision/*.sh).

Only the wiring (namespaces, links, addresses) is done here, because that is what VMs get from
their hypervisor instead; routes, sysctls, NAT rules, the gateway and the FTP servers are the
scripts' job, so both backends build the same lab. `down` undoes exactly what `up` recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alg.daemon.settings import CONFIG_ENV, STATUS_SOCKET_ENV
from alg.lab import ha, netns, state
from alg.lab.topology import DEFAULT_PATH, HA_PATH, Topology, load

PROVISION_DIR = Path(__file__).with_name("provision")
SCRIPTS = {"router": "router.sh", "ftp-server": "ftp-server.sh", "client": "client.sh"}
GATEWAY_MODES = ("none", "kernel", "ftp-alg")
DEFAULT_PREFIX = "alg"
Log = Callable[[str], None]


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def namespace(prefix: str, node: str) -> str:
    return f"{prefix}-{node}"


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, iptables, port 21)")


def lab_record(prefix: str) -> tuple[state.LabRecord, Topology]:
    """The record of a running lab and the topology it was built from."""
    record = state.load(prefix)
    if record is None:
        raise LabError(
            f"no lab '{prefix}' is up (start one with `ftp-alg lab up --prefix {prefix}`)"
        )
    return record, load(Path(record.topology))


def _known(prefix: str) -> tuple[state.LabRecord | None, Topology, dict[str, str]]:
    """What is known of a lab that may be up, half-built or gone: its record if any, its
    topology (the default one without a record, or if the recorded file went away) and its
    namespace names, so that `down` and `status` work on whatever is left."""
    record = state.load(prefix)
    path = Path(record.topology) if record else DEFAULT_PATH
    topo = load(path if path.exists() else DEFAULT_PATH)
    spaces = record.namespaces if record else {n: namespace(prefix, n) for n in topo.nodes}
    return record, topo, spaces


def _order(topo: Topology) -> list[str]:
    """Router first (the others route through it), then servers, then the client."""
    rank = {"router": 0, "ftp-server": 1, "client": 2}
    return sorted(topo.nodes, key=lambda n: rank.get(topo.nodes[n].role, 3))


def is_up(prefix: str, topo: Topology | None = None) -> bool:
    """A lab exists if its record or any of its namespaces does (even half-built)."""
    nodes = [*(topo or load()).nodes, ha.SWITCH]
    return state.load(prefix) is not None or any(netns.exists(namespace(prefix, n)) for n in nodes)


def up(
    prefix: str = DEFAULT_PREFIX,
    gateway: str = "none",
    *,
    topology_path: Path = DEFAULT_PATH,
    replace: bool = False,
    with_ha: bool = False,
    servers: bool = True,
    names: Callable[[str], str] | None = None,
    log: Log = _stderr,
) -> None:
    """Build and provision the lab (`with_ha`: the two-router failover lab of
    topology-ha.json). An existing lab of the same prefix is an error unless `replace`, which
    tears it down first. A failure half-way tears down what was built.

    `servers=False` leaves the FTP servers out (the server nodes get their routes only): the
    bare NAT network the kernel tests run their own sockets through. `names` maps a node to
    its namespace name (default `<prefix>-<node>`); the record keeps them for `down`."""
    _require_root()
    if with_ha and topology_path == DEFAULT_PATH:
        topology_path = HA_PATH
    if gateway not in GATEWAY_MODES:
        raise LabError(f"unknown gateway mode {gateway!r} (one of {', '.join(GATEWAY_MODES)})")
    topo = load(topology_path)
    if is_up(prefix, topo):
        if not replace:
            raise LabError(
                f"lab '{prefix}' is already up: `ftp-alg lab down --prefix {prefix}` first, "
                "or `ftp-alg lab up --replace`"
            )
        down(prefix, log=log)
    spaces = {n: names(n) if names else namespace(prefix, n) for n in topo.nodes}
    record = state.LabRecord(prefix, str(topology_path.resolve()), spaces)
    state.save(record)
    try:
        _wire(record, topo, log)
        for node in _order(topo):
            role = topo.nodes[node].role
            if role == "router":
                args = ["up", gateway]
            else:
                args = ["routes"] if role == "ftp-server" and not servers else ["up"]
            provision(record, topo, node, args)
    except BaseException:
        log(f"lab '{prefix}': up failed, tearing down what was built")
        down(prefix, log=log)
        raise
    routers = f", routers {' and '.join(topo.routers)}" if topo.ha else ""
    log(f"lab '{prefix}' is up, gateway: {gateway}{routers}")


def _wire(record: state.LabRecord, topo: Topology, log: Log) -> None:
    for ns in record.namespaces.values():
        netns.add(ns)
    for net in topo.networks.values():
        members = topo.members(net.name)
        if len(members) == 2:
            a, b = members
            netns.veth(record.namespaces[a], net.name, record.namespaces[b], net.name)
        else:
            ha.wire_switched(record.prefix, record.namespaces, topo, net.name)
        for node in members:
            addr = topo.nodes[node].interfaces[net.name]
            ns = record.namespaces[node]
            netns.address(ns, net.name, f"{addr.ipv4}/{net.ipv4.prefixlen}")
            netns.address(ns, net.name, f"{addr.ipv6}/{net.ipv6.prefixlen}")
    log(f"lab '{record.prefix}': namespaces {', '.join(record.namespaces.values())} wired")


def script_env(record: state.LabRecord, topo: Topology, node: str) -> dict[str, str]:
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        **topo.env_for(node),
        "LAB_STATE_DIR": str(state.lab_dir(record.prefix)),
        "LAB_PYTHON": sys.executable,
        "LAB_FTP_ALG": str(venv_bin / "ftp-alg"),
    }
    if topo.ha is not None:  # which router claims the virtual addresses at `up`
        env["LAB_HA_ACTIVE"] = ha.active_router(record.prefix, topo)
        env["LAB_HA_KEEPALIVED"] = os.environ.get("LAB_HA_KEEPALIVED", "1")  # 0: by hand
    return env


def provision(record: state.LabRecord, topo: Topology, node: str, args: Sequence[str]) -> str:
    """Run the node's provisioning script inside its namespace; its log lines are returned.
    Public so that tests and tools can re-run a script on a running lab (they are idempotent)."""
    script = PROVISION_DIR / SCRIPTS[topo.nodes[node].role]
    argv = netns.in_ns(record.namespaces[node], ["bash", str(script), *args])
    try:
        proc = netns.run(argv, env=script_env(record, topo, node))
    except netns.CommandError as exc:
        raise LabError(
            f"provisioning {node} ({script.name} {' '.join(args)}) failed: {exc}"
        ) from exc
    return proc.stderr


def set_gateway(prefix: str, mode: str, *, log: Log = _stderr) -> None:
    """Switch the routers' gateway on a running lab (flushes their conntrack tables)."""
    _require_root()
    if mode not in GATEWAY_MODES:
        raise LabError(f"unknown gateway mode {mode!r} (one of {', '.join(GATEWAY_MODES)})")
    record, topo = lab_record(prefix)
    for router in topo.routers:
        provision(record, topo, router, ["gateway", mode])
    log(f"lab '{prefix}': gateway {mode}")


def daemon(prefix: str, action: str, *, log: Log = _stderr) -> None:
    """Start or stop (SIGTERM) the router's ftp-alg daemon alone: rules, conntrack and the
    sessions in it stay, as across an upgrade or `systemctl restart`."""
    _require_root()
    if action not in ("start", "stop"):
        raise LabError(f"unknown daemon action {action!r} (start or stop)")
    record, topo = lab_record(prefix)
    provision(record, topo, ha.active_router(prefix, topo), ["daemon", action])
    log(f"lab '{prefix}': ftp-alg daemon {action}")


def down(prefix: str = DEFAULT_PREFIX, *, log: Log = _stderr) -> None:
    """Stop the lab's processes, delete its namespaces and state. Safe to repeat."""
    _require_root()
    record, topo, spaces = _known(prefix)
    for node in reversed(_order(topo)):
        ns = spaces.get(node)
        if ns is None or not netns.exists(ns):
            continue
        if record is not None:
            try:
                provision(record, topo, node, ["down"])
            except LabError as exc:
                log(f"warning: {exc}")
        # Whatever still runs in the namespace was started in the lab (a server's session
        # process, a shell from `lab exec`) and would keep the namespace alive.
        _terminate(netns.pids(ns), ns, log)
        netns.delete(ns)
    netns.delete(ha.switch_namespace(prefix))  # only bridges in it: nothing runs there
    state.remove(prefix)
    log(f"lab '{prefix}' is down")


def _terminate(pids: list[int], ns: str, log: Log) -> None:
    if not pids:
        return
    for pid in pids:
        log(f"{ns}: stopping leftover pid {pid} ({_comm(pid)})")
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(state.alive(p) for p in pids):
        time.sleep(0.1)
    for pid in netns.pids(ns):
        if pid in pids and state.alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def status(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Addresses, namespaces, gateway mode and recorded processes of a lab (up or not)."""
    record, topo, spaces = _known(prefix)
    inside, outside = topo.inside, topo.address(topo.outside_server)
    client = topo.address(topo.client)
    nodes: dict[str, Any] = {}
    for name, node in topo.nodes.items():
        ns = spaces[name]
        procs = state.processes(prefix, name, netns.NETNS_DIR / ns) if netns.exists(ns) else []
        nodes[name] = {
            "namespace": ns,
            "exists": netns.exists(ns),
            "role": node.role,
            "addresses": {net: vars(a) for net, a in node.interfaces.items()},
            "processes": {p.name: {"pid": p.pid, "running": p.running} for p in procs},
        }
    return {
        "prefix": prefix,
        "up": record is not None and all(n["exists"] for n in nodes.values()),
        "gateway": state.gateway_mode(prefix, topo.router),
        "active_router": ha.active_router(prefix, topo),
        "router_public": topo.public.ipv4,
        "router_public_v6": topo.public.ipv6,
        "outside_server": outside.ipv4,
        "outside_server_v6": outside.ipv6,
        "inside_server": inside.ipv4,
        "inside_server_v6": inside.ipv6,
        "client": client.ipv4,
        "client_v6": client.ipv6,
        "ports": {"vsftpd": topo.ftp["vsftpd_port"], "pyftpdlib": topo.ftp["pyftpdlib_port"]},
        "namespaces": dict(spaces),
        "state_dir": str(state.lab_dir(prefix)),
        "nodes": nodes,
    }


def exec_in(prefix: str, node: str, argv: Sequence[str]) -> int:
    """Run argv inside a node, attached to this terminal; its exit status is returned."""
    record, _ = lab_record(prefix)
    if node not in record.namespaces:
        raise LabError(f"no node {node!r} (nodes: {', '.join(record.namespaces)})")
    if not argv:
        raise LabError("nothing to run: `ftp-alg lab exec NODE -- CMD...`")
    env = exec_env(record, load(Path(record.topology)), node)
    return subprocess.run(
        netns.in_ns(record.namespaces[node], argv), env=env, check=False
    ).returncode


def failover(prefix: str = DEFAULT_PREFIX, *, log: Log = _stderr) -> ha.Failover:
    """Crash the active router and let the standby take over (the failover lab only)."""
    _require_root()
    record, topo = lab_record(prefix)
    if topo.ha is None:
        raise LabError(f"lab '{prefix}' has one router: build it with `ftp-alg lab up --ha`")

    def run(node: str, args: list[str]) -> str:
        return provision(record, topo, node, args)

    try:
        return ha.failover(prefix, topo, record.namespaces, run, log)
    except TimeoutError as exc:
        raise LabError(str(exc)) from exc


def exec_env(record: state.LabRecord, topo: Topology, node: str) -> dict[str, str]:
    """The caller's environment, with this checkout's `ftp-alg` first on PATH and, on the
    router, the lab daemon's status socket and config named, so that `ftp-alg status` and
    `ftp-alg doctor` run there find the lab's daemon without options (FTP_ALG_CONFIG empty:
    no config file, never the host's /etc one)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/sbin:/usr/bin')}"
    if node in topo.routers:
        here = state.node_dir(record.prefix, node)
        config = here / "ftp-alg.toml"
        env[STATUS_SOCKET_ENV] = str(here / "ftp-alg-status.sock")
        env[CONFIG_ENV] = str(config) if config.exists() else ""
    return env
