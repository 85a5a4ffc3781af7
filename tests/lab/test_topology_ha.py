"""topology-ha.json (the failover lab) without a lab: no root needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alg.lab.topology import HA_PATH, TopologyError, load


def test_the_pair_shares_virtual_addresses() -> None:
    topo = load(HA_PATH)
    assert topo.routers == ["router", "router2"]
    assert topo.public.ipv4 == "198.51.100.1"  # the shared address, not a router's own
    assert topo.nodes["router"].interfaces["wan"].ipv4 == "198.51.100.2"
    assert topo.members("lan") == ["client", "router", "router2"]
    assert topo.members("sync") == ["router", "router2"]


def test_end_hosts_route_via_the_address_that_moves() -> None:
    topo = load(HA_PATH)
    assert topo.env_for("client")["LAB_ROUTE_VIA_IPV4"] == "192.168.77.1"
    assert topo.env_for("inside")["LAB_ROUTE_VIA_IPV6"] == "fd00:192:168:78::1"
    env = topo.env_for("router2")
    assert env["LAB_HA_ROUTERS"] == "router router2"
    assert env["LAB_HA_SYNC_NETWORK"] == "sync"
    assert env["LAB_HA_VIRTUAL_WAN_IPV4"] == "198.51.100.1"
    assert env["LAB_NAT_MASQUERADE"] == "0"  # SNAT: MASQUERADE's entries die with the link
    assert "LAB_HA_ROUTERS" not in load().env_for("router")


def _write(tmp_path: Path, raw: dict[str, object]) -> Path:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_sync_network_with_another_member_is_refused(tmp_path: Path) -> None:
    raw = json.loads(HA_PATH.read_text())
    raw["nodes"]["client"]["interfaces"]["sync"] = {
        "ipv4": "192.168.79.10",
        "ipv6": "fd00:192:168:79::10",
    }
    with pytest.raises(TopologyError, match="sync_network"):
        load(_write(tmp_path, raw))


def test_a_virtual_address_outside_its_network_is_refused(tmp_path: Path) -> None:
    raw = json.loads(HA_PATH.read_text())
    raw["ha"]["virtual"]["wan"]["ipv4"] = "203.0.113.1"
    with pytest.raises(TopologyError, match=r"203\.0\.113\.1"):
        load(_write(tmp_path, raw))


def test_without_ha_three_members_stay_refused(tmp_path: Path) -> None:
    raw = json.loads(HA_PATH.read_text())
    del raw["ha"]
    with pytest.raises(TopologyError, match="exactly two nodes"):
        load(_write(tmp_path, raw))
