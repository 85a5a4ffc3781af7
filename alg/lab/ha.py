"""The failover lab's own parts: a switch for networks with more than two members, which
router is active, and `failover` (crash the active router, let the standby take over: its
keepalived notices the silence, takes the addresses and runs the notify script that commits
conntrackd's cache; without keepalived the lab does the same by hand).

A VM lab gets its switch from the hypervisor's private networks; in namespaces the switch is a
bridge per network in its own namespace (`<prefix>-sw`), so that a router's links can go down
without taking a neighbour's down with them. The scripts do what a router does
(provision/router-ha.sh); this module only orders them and records who is active.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alg.lab import netns, state
from alg.lab.topology import Topology

SWITCH = "sw"  # the switch namespace is <prefix>-sw; no node may be named so
Log = Callable[[str], None]


def switch_namespace(prefix: str) -> str:
    return f"{prefix}-{SWITCH}"


def wire_switched(prefix: str, spaces: dict[str, str], topo: Topology, network: str) -> None:
    """Join every member of `network` to a bridge named after it in the switch namespace; each
    member's end of its link is named after the network, as on a point-to-point link."""
    sw = switch_namespace(prefix)
    if not netns.exists(sw):
        netns.add(sw)
    netns.run(["ip", "-n", sw, "link", "add", network, "type", "bridge"])
    netns.run(["ip", "-n", sw, "link", "set", network, "up"])
    for i, node in enumerate(topo.members(network)):
        port = f"{network}{i}"
        netns.veth(spaces[node], network, sw, port)
        netns.run(["ip", "-n", sw, "link", "set", port, "master", network])


def active_router(prefix: str, topo: Topology) -> str:
    """The router holding the virtual addresses (the first one until a failover)."""
    try:
        name = (state.lab_dir(prefix) / "active-router").read_text().strip()
    except FileNotFoundError:
        return topo.router
    return name if name in topo.routers else topo.router


def set_active(prefix: str, router: str) -> None:
    (state.lab_dir(prefix) / "active-router").write_text(router + "\n")


@dataclass(frozen=True)
class Failover:
    """What a failover did and how long each step took (seconds)."""

    failed: str
    active: str
    crash_s: float
    takeover_s: float  # from the crash's end to the standby's commit done (and caches flushed)
    keepalived: bool

    @property
    def total_s(self) -> float:
        return self.crash_s + self.takeover_s


def failover(
    prefix: str,
    topo: Topology,
    spaces: dict[str, str],
    provision: Callable[[str, list[str]], str],
    log: Log,
) -> Failover:
    """Crash the active router (daemons SIGKILLed, links down), then make the other one take
    the virtual addresses and commit conntrackd's cache. The end hosts' neighbour caches are
    flushed as well as announced (gratuitous ARP): IPv6 has no unsolicited NA tool here."""
    if topo.ha is None:
        raise ValueError("this lab has one router: build it with `ftp-alg lab up --ha`")
    failed = active_router(prefix, topo)
    standby = next(r for r in topo.routers if r != failed)
    standby_dir = state.node_dir(prefix, standby)
    vrrp = any(
        p.name == "keepalived" and p.running
        for p in state.processes(prefix, standby, netns.NETNS_DIR / spaces[standby])
    )
    t0 = time.monotonic()
    provision(failed, ["crash"])
    t1, since = time.monotonic(), time.time()
    if vrrp:
        _wait_master(standby_dir / "ha-state", since, standby)
    else:
        provision(standby, ["takeover"])
    for node in topo.nodes:
        if node not in topo.routers:
            netns.run(["ip", "-n", spaces[node], "neigh", "flush", "all"], check=False)
    t2 = time.monotonic()
    set_active(prefix, standby)
    result = Failover(failed, standby, t1 - t0, t2 - t1, vrrp)
    how = "keepalived" if vrrp else "by hand"
    log(
        f"lab '{prefix}': {failed} crashed ({result.crash_s:.2f} s), {standby} took over "
        f"({how}, {result.takeover_s:.2f} s)"
    )
    return result


def _wait_master(ha_state: Path, since: float, standby: str, limit: float = 15) -> None:
    """Until the standby's notify script recorded "master" after `since` (wall clock)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            word, stamp = ha_state.read_text().split()
            if word == "master" and float(stamp) >= since:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{standby} did not take over within {limit:.0f} s (see its logs/)")
