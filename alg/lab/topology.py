"""The lab's topology: topology.json read into types, and flattened for the provisioning scripts.

One JSON file describes the lab for both backends (namespaces here, a Vagrantfile later), so
the addresses live in exactly one place. The scripts in provision/ never read the JSON: each
backend flattens it into environment variables by the rule in `env_for` (provision/README.md
repeats it for the Ruby side), which keeps the scripts free of a JSON parser.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).with_name("topology.json")
HA_PATH = Path(__file__).with_name("topology-ha.json")  # two routers: `lab up --ha`
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # must survive upper-casing into a shell variable


class TopologyError(ValueError):
    """topology.json does not describe a lab this backend can build."""


@dataclass(frozen=True)
class Address:
    ipv4: str
    ipv6: str


@dataclass(frozen=True)
class Network:
    name: str
    ipv4: ipaddress.IPv4Network
    ipv6: ipaddress.IPv6Network


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    route_via: str | None
    interfaces: dict[str, Address]  # network name -> this node's addresses on it


@dataclass(frozen=True)
class Topology:
    networks: dict[str, Network]
    nodes: dict[str, Node]
    nat: dict[str, Any]
    ftp: dict[str, Any]
    ha: dict[str, Any] | None = None  # routers, sync_network, virtual: see topology-ha.json

    @property
    def routers(self) -> list[str]:
        """The router nodes, the initially active one first."""
        if self.ha is None:
            return [self.router]
        return [str(r) for r in self.ha["routers"]]

    def virtual(self, network: str) -> Address | None:
        """The address the active router holds on `network` (HA only), or None."""
        if self.ha is None or network not in self.ha["virtual"]:
            return None
        v = self.ha["virtual"][network]
        return Address(str(v["ipv4"]), str(v["ipv6"]))

    def members(self, network: str) -> list[str]:
        """The nodes with an interface on `network`, in file order."""
        return [n.name for n in self.nodes.values() if network in n.interfaces]

    def shared_network(self, a: str, b: str) -> str:
        for net in self.nodes[a].interfaces:
            if net in self.nodes[b].interfaces:
                return net
        raise TopologyError(f"nodes {a!r} and {b!r} share no network")

    @property
    def router(self) -> str:
        return str(self.nat["router"])

    @property
    def public(self) -> Address:
        """The router's address on the public network: what outside clients connect to (with
        two routers, the shared address the active one holds)."""
        public = str(self.nat["public_network"])
        return self.virtual(public) or self.nodes[self.router].interfaces[public]

    @property
    def inside(self) -> Address:
        """The inside server's own (private) address, behind the port forward."""
        node = self.nodes[str(self.nat["forward_node"])]
        return node.interfaces[str(self.nat["forward_network"])]

    @property
    def outside_server(self) -> str:
        """The FTP server node that sits on the public network itself."""
        public = str(self.nat["public_network"])
        for node in self.nodes.values():
            if node.role == "ftp-server" and public in node.interfaces:
                return node.name
        raise TopologyError("no ftp-server node on the public network")

    @property
    def client(self) -> str:
        for node in self.nodes.values():
            if node.role == "client":
                return node.name
        raise TopologyError("no client node")

    def address(self, node: str) -> Address:
        """A single-homed node's address (the router has several: use `public`)."""
        interfaces = list(self.nodes[node].interfaces.values())
        if len(interfaces) != 1:
            raise TopologyError(f"node {node!r} has {len(interfaces)} interfaces")
        return interfaces[0]

    def env_for(self, node: str) -> dict[str, str]:
        """The flattened topology, as the provisioning scripts of `node` read it.

        LAB_NET_<NET>_IPV4/6 (prefixes), LAB_<NODE>_<NET>_IPV4/6 (addresses), LAB_NAT_<KEY>
        and LAB_FTP_<KEY> (scalars; lists joined by spaces, booleans 1/0, null empty), and for
        the node itself LAB_NODE, LAB_ROLE and LAB_ROUTE_VIA_IPV4/6 (the route_via node's
        address on the network the two share).
        """
        env: dict[str, str] = {}
        for net in self.networks.values():
            env[f"LAB_NET_{net.name.upper()}_IPV4"] = str(net.ipv4)
            env[f"LAB_NET_{net.name.upper()}_IPV6"] = str(net.ipv6)
        for n in self.nodes.values():
            for net_name, addr in n.interfaces.items():
                key = f"LAB_{n.name.upper()}_{net_name.upper()}"
                env[key + "_IPV4"] = addr.ipv4
                env[key + "_IPV6"] = addr.ipv6
        for section, values in (("NAT", self.nat), ("FTP", self.ftp)):
            for key, value in values.items():
                env[f"LAB_{section}_{key.upper()}"] = _shell_value(value)
        if self.ha is not None:
            env["LAB_HA_ROUTERS"] = " ".join(self.routers)
            env["LAB_HA_SYNC_NETWORK"] = str(self.ha["sync_network"])
            for net_name, v in self.ha["virtual"].items():
                env[f"LAB_HA_VIRTUAL_{net_name.upper()}_IPV4"] = str(v["ipv4"])
                env[f"LAB_HA_VIRTUAL_{net_name.upper()}_IPV6"] = str(v["ipv6"])
        me = self.nodes[node]
        env.update(LAB_NODE=me.name, LAB_ROLE=me.role, LAB_ROUTE_VIA_IPV4="", LAB_ROUTE_VIA_IPV6="")
        if me.route_via is not None:
            shared = self.shared_network(node, me.route_via)
            # with two routers, the route goes via the address that moves at failover
            via = self.virtual(shared) if me.route_via in self.routers else None
            via = via or self.nodes[me.route_via].interfaces[shared]
            env.update(LAB_ROUTE_VIA_IPV4=via.ipv4, LAB_ROUTE_VIA_IPV6=via.ipv6)
        return env


def _shell_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return " ".join(_shell_value(v) for v in value)
    return str(value)


def load(path: Path = DEFAULT_PATH) -> Topology:
    """Read and check topology.json; errors name the offending entry."""
    raw = json.loads(path.read_text())
    try:
        networks = {
            name: Network(name, ipaddress.IPv4Network(n["ipv4"]), ipaddress.IPv6Network(n["ipv6"]))
            for name, n in raw["networks"].items()
        }
        nodes = {
            name: Node(
                name=name,
                role=n["role"],
                route_via=n.get("route_via"),
                interfaces={
                    net: Address(a["ipv4"], a["ipv6"]) for net, a in n["interfaces"].items()
                },
            )
            for name, n in raw["nodes"].items()
        }
        ha = dict(raw["ha"]) if raw.get("ha") is not None else None
        topo = Topology(networks, nodes, dict(raw["nat"]), dict(raw["ftp"]), ha)
    except (KeyError, TypeError, ValueError) as exc:
        raise TopologyError(f"{path}: {exc!r}") from exc
    _check(topo)
    return topo


def _check(topo: Topology) -> None:
    for name in [*topo.networks, *topo.nodes]:
        if not _NAME.match(name):
            raise TopologyError(f"name {name!r} must match {_NAME.pattern}")
    for node in topo.nodes.values():
        for net, addr in node.interfaces.items():
            if net not in topo.networks:
                raise TopologyError(f"node {node.name!r}: unknown network {net!r}")
            network = topo.networks[net]
            if ipaddress.ip_address(addr.ipv4) not in network.ipv4:
                raise TopologyError(f"{node.name}: {addr.ipv4} is not in {network.ipv4}")
            if ipaddress.ip_address(addr.ipv6) not in network.ipv6:
                raise TopologyError(f"{node.name}: {addr.ipv6} is not in {network.ipv6}")
        if node.route_via is not None and node.route_via not in topo.nodes:
            raise TopologyError(f"node {node.name!r}: route_via {node.route_via!r} unknown")
    for net in topo.networks:
        members = len(topo.members(net))
        if members < 2 or (members > 2 and topo.ha is None):
            raise TopologyError(f"network {net!r} must join exactly two nodes (one link)")
    if topo.ha is not None:
        _check_ha(topo, topo.ha)
    for key in ("router", "forward_node"):
        if topo.nat.get(key) not in topo.nodes:
            raise TopologyError(f"nat.{key} names no node")


def _check_ha(topo: Topology, ha: dict[str, Any]) -> None:
    """Two router nodes, a sync network joining just them, virtual addresses in their nets."""
    routers = ha.get("routers")
    if not isinstance(routers, list) or len(routers) != 2 or topo.router not in routers:
        raise TopologyError("ha.routers must list two nodes, nat.router among them")
    for r in routers:
        if r not in topo.nodes or topo.nodes[r].role != "router":
            raise TopologyError(f"ha.routers: {r!r} is not a router node")
    if sorted(topo.members(str(ha.get("sync_network")))) != sorted(routers):
        raise TopologyError("ha.sync_network must join exactly the two routers")
    for net, v in dict(ha.get("virtual", {})).items():
        network = topo.networks.get(net)
        if network is None:
            raise TopologyError(f"ha.virtual: unknown network {net!r}")
        if ipaddress.ip_address(v["ipv4"]) not in network.ipv4:
            raise TopologyError(f"ha.virtual: {v['ipv4']} is not in {network.ipv4}")
        if ipaddress.ip_address(v["ipv6"]) not in network.ipv6:
            raise TopologyError(f"ha.virtual: {v['ipv6']} is not in {network.ipv6}")
