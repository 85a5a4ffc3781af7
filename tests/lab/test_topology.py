"""topology.json and how it reaches the scripts and the tests, without a lab (no root needed):
the flattening rule the Vagrantfile must mirror, the checks on a bad topology, and the parsing
of the clients' debug output that every lab test relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alg.lab.demo import clients
from alg.lab.demo.clients import Mode, Outcome, Request
from alg.lab.demo.scenarios import all_cases, failing_cases
from alg.lab.topology import DEFAULT_PATH, TopologyError, load


def test_env_for_the_router_flattens_the_whole_topology() -> None:
    env = load().env_for("router")
    assert env["LAB_NODE"] == "router"
    assert env["LAB_ROUTER_WAN_IPV4"] == "198.51.100.1"
    assert env["LAB_INSIDE_DMZ_IPV6"] == "fd00:192:168:78::20"
    assert env["LAB_NET_LAN_IPV4"] == "192.168.77.0/24"
    assert env["LAB_NAT_FORWARD_PORTS"] == "21 2121"
    assert env["LAB_NAT_MASQUERADE"] == "1"
    assert env["LAB_FTP_VSFTPD_PASV_MIN"] == "30000"
    assert env["LAB_ROUTE_VIA_IPV4"] == ""


def test_route_via_is_the_routers_address_on_the_shared_network() -> None:
    topo = load()
    assert topo.env_for("client")["LAB_ROUTE_VIA_IPV4"] == "192.168.77.1"
    assert topo.env_for("inside")["LAB_ROUTE_VIA_IPV6"] == "fd00:192:168:78::1"
    # the outside server must have no way back to private addresses
    assert topo.env_for("server")["LAB_ROUTE_VIA_IPV4"] == ""


def test_a_network_with_three_nodes_is_refused(tmp_path: Path) -> None:
    raw = json.loads(DEFAULT_PATH.read_text())
    raw["nodes"]["inside"]["interfaces"]["lan"] = {
        "ipv4": "192.168.77.30",
        "ipv6": "fd00:192:168:77::30",
    }
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(TopologyError, match="exactly two nodes"):
        load(path)


def test_an_address_outside_its_network_is_refused(tmp_path: Path) -> None:
    raw = json.loads(DEFAULT_PATH.read_text())
    raw["nodes"]["client"]["interfaces"]["lan"]["ipv4"] = "10.0.0.1"
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(TopologyError, match=r"10\.0\.0\.1"):
        load(path)


def test_failing_cases_are_client_side_active_and_server_side_passive() -> None:
    failing = failing_cases()
    assert failing and all((c.side == "client-side") == c.mode.active for c in failing), failing
    assert len(failing) < len(list(all_cases()))


def outcome(transcript: list[str], mode: Mode = Mode.PORT) -> Outcome:
    return Outcome("curl", Request("198.51.100.20", 21, mode), 0, tuple(transcript), "")


def test_reply_to_skips_continuation_lines() -> None:
    o = outcome(
        [
            "> FEAT",
            "< 211-Features:",
            "<  EPRT",
            "< 211 End",
            "> PORT 1,2,3,4,5,6",
            "< 500 Illegal PORT command.",
        ]
    )
    assert o.reply_to("FEAT") == "211 End"
    assert o.reply_to("PORT") == "500 Illegal PORT command."
    assert o.reply_to("EPSV") is None


def test_a_client_switching_to_passive_has_not_stayed() -> None:
    o = outcome(
        ["> EPRT |2|fd00::1|5|", "< 501 Rejected", "> EPSV", "< 229 (|||30001|)"], Mode.EPRT
    )
    assert o.data_verbs() == ["EPRT", "EPSV"]
    assert not o.stayed()


def test_debug_output_parsers() -> None:
    curl = clients._curl_lines("* Trying 1.2.3.4:21...\n< 220 hi\n> USER anonymous\n} [5 bytes]\n")
    assert curl == ["* Trying 1.2.3.4:21...", "< 220 hi", "> USER anonymous"]
    lftp = clients._arrow_lines("---- Connecting\n<--- 220 hi\n---> PORT 1,2,3,4,5,6\n")
    assert lftp == ["* Connecting", "< 220 hi", "> PORT 1,2,3,4,5,6"]
    busybox = clients._busybox_lines(
        "Connecting to h (h:21)\nftpget: cmd (null) (null)\nftpget: cmd EPSV (null)\n"
        "ftpget: cmd RETR 1mib.bin\n"
    )
    assert busybox == ["* Connecting to h (h:21)", "> EPSV", "> RETR 1mib.bin"]
