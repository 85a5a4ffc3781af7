"""The rule sets: rendering (pure) and `ftp-alg rules` against the router namespace."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alg.kernel import rules, rules_exec
from alg.kernel.ctnetlink import Ctnetlink, Tuple
from alg.kernel.rules_skip import bytecode, skip_program
from alg.lab import netns
from alg.options import parse_balance, parse_ports
from tests.kernel.lab import CLIENT4, INSIDE4, OUTSIDE4, OUTSIDE6, ROUTER_OUT4, Lab

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


# --- rendering -----------------------------------------------------------------------------------


def test_rules_folder_matches_the_renderer() -> None:
    assert (RULES_DIR / "ftp-alg.iptables.sh").read_text() == rules.render_iptables_script()
    assert (RULES_DIR / "ftp-alg.nft").read_text() == rules.render_nft()


def test_queue_placement_and_anchor_order() -> None:
    """Both directions queued once, in mangle POSTROUTING (after conntrack), only anchored
    connections, only payload; raw PREROUTING and OUTPUT: the anchor only."""
    for family in (4, 6):
        chains = rules.iptables_rules(rules.RuleOptions(), family)
        placed = {(c.table, c.hook): c.name for c in chains}
        assert placed == {
            ("raw", "PREROUTING"): "FTP_ALG",
            ("raw", "OUTPUT"): "FTP_ALG_OUT",
            ("mangle", "POSTROUTING"): "FTP_ALG",
        }
        raw_in, raw_out, mangle = (
            chains[c] for c in (rules.RAW_IN, rules.RAW_OUT, rules.MANGLE_POST)
        )
        anchor = (
            *("-p", "tcp", "-m", "multiport", "--dports", "21,2121"),
            *("-j", "CT", "--helper", "sane"),
        )
        assert raw_in == (anchor,) and raw_out == (anchor,)
        client, server = (True, False), (False, True)
        assert [("--dports" in r, "--sports" in r) for r in mangle] == [
            *(client, client, server, client, client, client),
            *(client, server, client, server),
        ]
        passive, skips, queues = mangle[:6], mangle[6:8], mangle[8:]
        for rule in mangle:
            assert rule[rule.index("--ctstate") + 1] == "ESTABLISHED"
        # The passive exchanges of unwatched connections without DNAT pass first: the
        # passive command sets the passive bit, its reply and transfer need it (and no watch
        # bit), the transfer marks it used (rules_skip.py) ...
        marks = [r[r.index("--mark") + 1] for r in passive]
        spent, fresh = "0x6000000/0x7000000", "0x2000000/0x7000000"
        assert marks == ["0x0/0x1000000"] * 2 + [fresh, spent, fresh, spent]
        for rule in passive:
            at = rule.index("DNAT")
            assert rule[at - 3 : at] == ("conntrack", "!", "--ctstate")
        assert [r[r.index("-j") :] for r in passive] == [
            ("-j", "CONNMARK", "--set-xmark", "0x2000000/0x6000000"),
            ("-j", "RETURN"),
            ("-j", "RETURN"),
            ("-j", "CONNMARK", "--set-xmark", "0x0/0x2000000"),
            ("-j", "CONNMARK", "--set-xmark", "0x4000000/0x4000000"),
            ("-j", "RETURN"),
        ]
        assert passive[0][:-4] == passive[1][:-2] and passive[3][:-4] == passive[5][:-2]
        # ... then login lines of connections the daemon has not met, and plain replies of
        # any ...
        for rule, from_client in zip(skips, (True, False), strict=True):
            assert ("--mark" in rule) is from_client
            if from_client:
                assert rule[rule.index("--mark") + 1] == "0x0/0x1000000"
            assert rule[rule.index("--bytecode") + 1] == bytecode(skip_program(family, from_client))
            assert rule[-2:] == ("-j", "RETURN")
        # ... every other payload segment is queued.
        for rule in queues:
            assert rule[rule.index("--bytecode") + 1] == rules.PAYLOAD_BPF[family]
            assert rule[-5:] == ("-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")
        every = [rule for chain in chains.values() for rule in chain]
        assert sum("NFQUEUE" in rule for rule in every) == 2  # each direction queued once
        assert not any(flag in rule for rule in every for flag in ("-d", "-s", "--helper ftp"))
        off = rules.iptables_rules(rules.RuleOptions(watch_mark=0), family)[rules.MANGLE_POST]
        assert off == queues  # watch_mark = 0: no skip rule


def test_nft_queue_placement() -> None:
    nft = rules.render_nft()
    chains = dict(
        re.findall(r"chain (\w+) \{\n\t\ttype filter hook ([a-z]+ priority [a-z]+);", nft)
    )
    assert chains == {
        "queue_postrouting": "postrouting priority mangle",
        "anchor_prerouting": "prerouting priority mangle",
        "anchor_output": "output priority mangle",
    }
    postrouting = nft.split("chain queue_postrouting")[1].split("chain anchor_prerouting")[0]
    assert 'tcp dport { 21, 2121 } ct state established ct helper "sane" queue' in postrouting
    assert 'tcp sport { 21, 2121 } ct state established ct helper "sane" queue' in postrouting
    assert nft.count(" queue num ") == 2


def test_why_text_explains_where_the_state_lives() -> None:
    why = " ".join(rules.WHY.split())
    assert "seqadj record" in why and "mangle POSTROUTING" in why
    assert "pure ACKs" in why and "ESTABLISHED" in why


def test_render_options() -> None:
    opts = rules.RuleOptions(ports=(2121,), queue_balance=(2, 5), families=(4,))
    script = rules.render_iptables_script(opts)
    assert "ip6tables -w" not in script
    assert "--dport 2121 -j CT --helper sane" in script
    bpf = f"-m conntrack --ctstate ESTABLISHED -m bpf --bytecode '{rules.PAYLOAD_BPF[4]}'"
    for way in ("dport", "sport"):
        assert (
            f"iptables -w -t mangle -A FTP_ALG -p tcp --{way} 2121 {bpf} -j NFQUEUE"
            " --queue-balance 2:5 --queue-bypass" in script
        )
    assert "-t raw -A FTP_ALG -p tcp --sport" not in script
    nft = rules.render_nft(opts)
    for way in ("dport", "sport"):
        anchored = 'ct state established ct helper "sane"'
        assert f"meta nfproto ipv4 tcp {way} 2121 {anchored} queue num 2-5 bypass" in nft


@pytest.mark.parametrize(
    "bad",
    [
        {"ports": ()},
        {"ports": (0,)},
        {"ports": tuple(range(1, 17))},
        {"queue_num": 70000},
        {"queue_balance": (3, 3)},
        {"families": (5,)},
        {"passive_mark": 0x02000000},
        {"passive_mark": 0x0E000000},
        {"passive_mark": 0x300000000},
        {"passive_mark": 0x03000000},
        {"watch_mark": 0x04000000},
    ],
)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rules.RuleOptions(**bad)  # type: ignore[arg-type]


def test_parsers() -> None:
    assert parse_ports("21, 2121,21") == (21, 2121)
    assert parse_balance("0:3") == (0, 3)
    for bad in ("x", "21;22"):
        with pytest.raises(ValueError):
            parse_ports(bad)
    with pytest.raises(ValueError):
        parse_balance("3")


def test_port_overlap() -> None:
    ours = (21, 2121)
    assert rules_exec._overlaps("21", ours)
    assert rules_exec._overlaps("990,2121", ours)
    assert rules_exec._overlaps("1:100", ours)
    assert rules_exec._overlaps("2000:", ours)
    assert not rules_exec._overlaps("990", ours)
    assert not rules_exec._overlaps("22:2000", ours)


# --- against the kernel ------------------------------------------------------------------------


# An admin's rules that have nothing to do with FTP: (table, chain, rule).
_UNRELATED = (
    ("raw", "PREROUTING", "-p udp --dport 5353 -j ACCEPT"),
    ("raw", "OUTPUT", "-p tcp --dport 8080 -j ACCEPT"),
    ("mangle", "POSTROUTING", "-p tcp --dport 25 -j ACCEPT"),
    ("mangle", "PREROUTING", "-p tcp --dport 21 -j ACCEPT"),
    ("filter", "FORWARD", "-p tcp --dport 23 -j DROP"),
    ("nat", "PREROUTING", "-p tcp --dport 8022 -j REDIRECT"),
)


def _unrelated_rules(lab: Lab, action: str) -> None:
    """Append (-A) or delete (-D) exactly those rules, so the lab's own rules stay as they are."""
    for table, chain, rule in _UNRELATED:
        for tool in ("iptables", "ip6tables"):
            lab.run(lab.router, tool, "-w", "-t", table, action, chain, *rule.split())


@pytest.mark.netns
def test_apply_twice_then_remove_restores_every_table(lab: Lab) -> None:
    _unrelated_rules(lab, "-A")
    try:
        before = {tool: lab.save(tool) for tool in ("iptables", "ip6tables")}

        for _ in range(2):
            done = lab.ftp_alg("rules", "apply")
            assert done.returncode == 0, done.stderr
            assert "applied (iptables" in done.stdout

        for tool in ("iptables", "ip6tables"):
            raw = lab.run(lab.router, tool, "-w", "-t", "raw", "-S").stdout.splitlines()
            mangle = lab.run(lab.router, tool, "-w", "-t", "mangle", "-S").stdout.splitlines()
            # ours first in each hook, the admin's rules (the lab's router.sh's too) after them
            assert [line for line in raw if line.startswith("-A PREROUTING")] == [
                "-A PREROUTING -j FTP_ALG",
                "-A PREROUTING -j LAB-HELPER",
                "-A PREROUTING -p udp -m udp --dport 5353 -j ACCEPT",
            ]
            assert [line for line in raw if line.startswith("-A OUTPUT")] == [
                "-A OUTPUT -j FTP_ALG_OUT",
                "-A OUTPUT -p tcp -m tcp --dport 8080 -j ACCEPT",
            ]
            assert [line for line in mangle if line.startswith("-A POSTROUTING")] == [
                "-A POSTROUTING -j FTP_ALG",
                "-A POSTROUTING -p tcp -m tcp --dport 25 -j ACCEPT",
            ]
            assert [line for line in mangle if line.startswith("-A PREROUTING")] == [
                "-A PREROUTING -p tcp -m tcp --dport 21 -j ACCEPT",
            ]
            ports = "-p tcp -m multiport"
            family = 6 if tool == "ip6tables" else 4
            queue = (
                "-m conntrack --ctstate ESTABLISHED -m bpf --bytecode"
                f' "{rules.PAYLOAD_BPF[family]}" -j NFQUEUE --queue-num 0 --queue-bypass'
            )
            assert [line for line in raw if line.startswith("-A FTP_ALG ")] == [
                f"-A FTP_ALG {ports} --dports 21,2121 -j CT --helper sane",
            ]
            assert [line for line in raw if line.startswith("-A FTP_ALG_OUT ")] == [
                f"-A FTP_ALG_OUT {ports} --dports 21,2121 -j CT --helper sane",
            ]
            listed = [line for line in mangle if line.startswith("-A FTP_ALG ")]
            assert listed[8:] == [
                f"-A FTP_ALG {ports} --dports 21,2121 {queue}",
                f"-A FTP_ALG {ports} --sports 21,2121 {queue}",
            ]
            # the passive rules read back token for token as rendered (`ftp-alg doctor`)
            rendered = rules.iptables_rules(rules.RuleOptions(), family)[rules.MANGLE_POST]
            assert [tuple(shlex.split(line)[2:]) for line in listed[:6]] == list(rendered[:6])
            established = "-m conntrack --ctstate ESTABLISHED"
            for line, side, from_client in zip(
                listed[6:8], ("--dports", "--sports"), (True, False), strict=True
            ):
                unwatched = " -m connmark --mark 0x0/0x1000000" if from_client else ""
                skip = established + unwatched
                program = bytecode(skip_program(family, from_client))
                head = f'-A FTP_ALG {ports} {side} 21,2121 {skip} -m bpf --bytecode "{program}"'
                assert line.startswith(head) and line.endswith(" -j RETURN")

        shown = lab.ftp_alg("rules", "show")
        assert shown.returncode == 0
        for tool in ("iptables", "ip6tables"):
            assert f"# {tool} -t raw\n" in shown.stdout
            assert f"# {tool} -t mangle\n" in shown.stdout
        # per family: the anchor in PREROUTING and OUTPUT, the match on both queue rules
        assert shown.stdout.count("-j CT --helper sane") == 4
        # and on both skip rules and the 6 passive rules
        assert shown.stdout.count("--ctstate ESTABLISHED") == 20
        assert shown.stdout.count("-j NFQUEUE") == 4  # one per direction, per family

        done = lab.ftp_alg("rules", "remove")
        assert done.returncode == 0, done.stderr
        assert {tool: lab.save(tool) for tool in ("iptables", "ip6tables")} == before
        assert "not installed" in lab.ftp_alg("rules", "show").stdout
    finally:
        _unrelated_rules(lab, "-D")


@pytest.mark.netns
def test_family_option_touches_one_family(lab: Lab) -> None:
    done = lab.ftp_alg("rules", "apply", "--family", "4", "--ports", "21", "--queue-num", "3")
    assert done.returncode == 0, done.stderr
    v4 = lab.run(lab.router, "iptables", "-w", "-t", "mangle", "-S", "FTP_ALG").stdout
    for way in ("dport", "sport"):
        assert re.search(f"--{way} 21 .*-j NFQUEUE --queue-num 3 --queue-bypass", v4)
    v4 = lab.run(lab.router, "iptables", "-w", "-t", "raw", "-S", "FTP_ALG").stdout
    assert "NFQUEUE" not in v4 and "--dport 21 -j CT --helper sane" in v4
    for table, chain in (("raw", "FTP_ALG"), ("raw", "FTP_ALG_OUT"), ("mangle", "FTP_ALG")):
        v6 = lab.run(lab.router, "ip6tables", "-w", "-t", table, "-S", chain, check=False)
        assert v6.returncode != 0  # no chain


@pytest.mark.netns
def test_refuses_when_kernel_ftp_helper_is_attached(lab: Lab) -> None:
    helper_rule = ("PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
    lab.run(lab.router, "iptables", "-w", "-t", "raw", "-A", *helper_rule)
    try:
        before = lab.save()
        done = lab.ftp_alg("rules", "apply")
        assert done.returncode == 1
        assert "refusing" in done.stderr and "--helper ftp" in done.stderr
        assert lab.save() == before  # nothing installed
        script = lab.run(
            lab.router, "sh", str(RULES_DIR / "ftp-alg.iptables.sh"), "apply", check=False
        )
        assert script.returncode == 1 and "--helper ftp" in script.stderr
    finally:
        lab.run(lab.router, "iptables", "-w", "-t", "raw", "-D", *helper_rule)


@pytest.mark.netns
def test_ftp_helper_on_other_ports_is_no_conflict(lab: Lab) -> None:
    rule = ("PREROUTING", "-p", "tcp", "--dport", "990", "-j", "CT", "--helper", "ftp")
    lab.run(lab.router, "iptables", "-w", "-t", "raw", "-A", *rule)
    try:
        assert lab.ftp_alg("rules", "apply").returncode == 0
    finally:
        lab.run(lab.router, "iptables", "-w", "-t", "raw", "-D", *rule)


@pytest.mark.netns
def test_shell_script_does_what_the_cli_does(lab: Lab) -> None:
    script = str(RULES_DIR / "ftp-alg.iptables.sh")
    before = {tool: lab.save(tool) for tool in ("iptables", "ip6tables")}
    assert lab.ftp_alg("rules", "apply").returncode == 0
    by_cli = {tool: lab.save(tool) for tool in ("iptables", "ip6tables")}
    assert lab.ftp_alg("rules", "remove").returncode == 0

    for _ in range(2):
        lab.run(lab.router, "sh", script, "apply")
    assert {tool: lab.save(tool) for tool in ("iptables", "ip6tables")} == by_cli
    lab.run(lab.router, "sh", script, "remove")
    assert {tool: lab.save(tool) for tool in ("iptables", "ip6tables")} == before


def _old_layout(lab: Lab) -> None:
    """The 0.1 rule set: both directions queued in raw, jumped to from PREROUTING and OUTPUT."""
    for tool in ("iptables", "ip6tables"):
        ipt = (tool, "-w", "-t", "raw")
        lab.run(lab.router, *ipt, "-N", "FTP_ALG")
        for rule in (
            "-p tcp -m multiport --dports 21,2121 -j CT --helper sane",
            "-p tcp -m multiport --dports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass",
            "-p tcp -m multiport --sports 21,2121 -j NFQUEUE --queue-num 0 --queue-bypass",
        ):
            lab.run(lab.router, *ipt, "-A", "FTP_ALG", *rule.split())
        for hook in ("PREROUTING", "OUTPUT"):
            lab.run(lab.router, *ipt, "-I", hook, "1", "-j", "FTP_ALG")


@pytest.mark.netns
def test_apply_and_remove_replace_the_old_raw_only_layout(lab: Lab) -> None:
    """Over 0.1's rules, apply leaves nothing queued in raw OUTPUT; remove takes them too."""
    tools = ("iptables", "ip6tables")
    before = {tool: lab.save(tool) for tool in tools}
    assert lab.ftp_alg("rules", "apply").returncode == 0
    fresh = {tool: lab.save(tool) for tool in tools}
    assert lab.ftp_alg("rules", "remove").returncode == 0

    _old_layout(lab)
    done = lab.ftp_alg("rules", "apply")
    assert done.returncode == 0, done.stderr
    assert {tool: lab.save(tool) for tool in tools} == fresh
    assert lab.ftp_alg("rules", "remove").returncode == 0
    assert {tool: lab.save(tool) for tool in tools} == before

    _old_layout(lab)
    assert lab.ftp_alg("rules", "remove").returncode == 0
    assert {tool: lab.save(tool) for tool in tools} == before


def _rule_packets(lab: Lab, tool: str, table: str, chain: str) -> list[tuple[str, int]]:
    """(target, packets) of each rule in `chain`, from `iptables -L -v -x -n`."""
    listed = lab.run(lab.router, tool, "-w", "-t", table, "-L", chain, "-v", "-x", "-n").stdout
    rows = [line.split() for line in listed.splitlines()[2:] if line.strip()]
    return [(row[2], int(row[0])) for row in rows]


_TAG = "ftp-alg-test"  # the test's own counting rules: `_TAG ours` and `_TAG strays`
_HOOKS = {"PREROUTING": "FTP_ALG", "OUTPUT": "FTP_ALG_OUT"}  # raw hook: the chain it jumps to


def _counting_rules(sport: int) -> dict[str, tuple[str, ...]]:
    """Rules without a target that count the segments to the control ports of the connection
    from `sport` (ours) and of every other one (strays)."""
    to_control = ("-m", "multiport", "--dports", "21,2121", "-m", "comment", "--comment")
    return {
        "ours": ("-p", "tcp", "--sport", str(sport), *to_control, f"{_TAG} ours"),
        "strays": ("-p", "tcp", "!", "--sport", str(sport), *to_control, f"{_TAG} strays"),
    }


def _raw_counts(lab: Lab, tool: str) -> dict[tuple[str, str], int]:
    """Packets counted in raw, in one snapshot (`iptables-save -c`): (hook, "ours"|"strays")
    by the test's rules, (hook, "anchor") by the anchor rule of the chain the hook jumps to."""
    saved = lab.run(lab.router, f"{tool}-save", "-c", "-t", "raw").stdout
    counts: dict[tuple[str, str], int] = {}
    for line in saved.splitlines():
        found = re.match(r"\[(\d+):\d+\] -A (\S+) (.*)", line)
        if found is None:
            continue
        packets, chain, rest = int(found.group(1)), found.group(2), found.group(3)
        for hook, ours in _HOOKS.items():
            if chain == ours and "-j CT" in rest:
                counts[(hook, "anchor")] = packets
            for kind in ("ours", "strays"):
                if chain == hook and f"{_TAG} {kind}" in rest:
                    counts[(hook, kind)] = packets
    assert len(counts) == 6, saved
    return counts


def _acct(lab: Lab, family: str, sport: int) -> tuple[int, int]:
    """Packets conntrack counted (original, reply) for the TCP connection from `sport`."""
    listed = lab.run(
        lab.router, "conntrack", "-L", "-f", family, "-p", "tcp", "--orig-port-src", str(sport)
    ).stdout
    counts = re.findall(r"packets=(\d+)", listed)
    assert len(counts) == 2, listed
    return int(counts[0]), int(counts[1])


# name: (client namespace, server namespace, listen on, connect to, family)
_PATHS = {
    "masquerade-v4": ("client", "outside", OUTSIDE4, OUTSIDE4, 4),
    "masquerade-v6": ("client", "outside", OUTSIDE6, OUTSIDE6, 6),
    "port-forward-v4": ("outside", "inside", INSIDE4, ROUTER_OUT4, 4),
    "router-client-v4": ("router", "outside", OUTSIDE4, OUTSIDE4, 4),
}


@pytest.mark.netns
@pytest.mark.parametrize("path", list(_PATHS))
def test_queue_placement_in_the_kernel(lab: Lab, path: str) -> None:
    """With the rules applied and no queue reader (no daemon), FTP control traffic passes
    (--queue-bypass), and exactly the segments that carry payload are queued, once each, in
    mangle POSTROUTING: the PORT line (the 200 reply passes the skip rule), never a SYN, pure
    ACK or FIN.
    The test's own rules count, beside the anchor, the segments to the control ports of its
    connection and of any other (a late retransmission or ACK of an earlier test's connection:
    CI saw one). conntrack's per-direction accounting is the independent count of the
    connection's packets: every one it counted passed the anchor (a retransmission that
    conntrack finds invalid passes it uncounted: CI saw one)."""
    client_ns, server_ns, listen_addr, connect_addr, family = _PATHS[path]
    tool = rules.TOOLS[family]
    acct = lab.run(lab.router, "sysctl", "-n", "net.netfilter.nf_conntrack_acct").stdout.strip()
    lab.run(lab.router, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    with netns.enter(getattr(lab, client_ns)):
        client = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET)
    lab.sockets.append(client)
    client.settimeout(5)
    client.bind(("", 0))
    sport = client.getsockname()[1]
    counting = _counting_rules(sport)
    try:
        assert lab.ftp_alg("rules", "apply").returncode == 0
        for hook in _HOOKS:
            for rule in counting.values():
                lab.run(lab.router, tool, "-w", "-t", "raw", "-I", hook, *rule)
        # the anchors and the counting rules count from the same moment (one transaction)
        lab.run(lab.router, tool, "-w", "-t", "raw", "-Z")
        listener = lab.listen(getattr(lab, server_ns), listen_addr, 21)
        client.connect((connect_addr, 21))
        server, _peer = listener.accept()
        lab.sockets.append(server)
        client.sendall(b"PORT 192,168,77,10,4,1\r\n")
        assert server.recv(100) == b"PORT 192,168,77,10,4,1\r\n"
        server.sendall(b"200 PORT command successful.\r\n")
        assert client.recv(100) == b"200 PORT command successful.\r\n"
        client.shutdown(socket.SHUT_WR)
        assert server.recv(100) == b""
        server.close()
        assert client.recv(100) == b""
        client.close()

        # The router's own client: its segments leave through OUTPUT, never PREROUTING.
        anchored, other = (
            ("OUTPUT", "PREROUTING") if client_ns == "router" else ("PREROUTING", "OUTPUT")
        )
        deadline = time.monotonic() + 2
        while True:
            original, reply = _acct(lab, f"ipv{family}", sport)
            raw = _raw_counts(lab, tool)  # after conntrack's count: it can only have grown
            # a last ACK may fall between the two reads
            settled = original >= 4 and reply >= 4 and raw[(anchored, "ours")] == original
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # SYN, ACK, data, FIN, ACK one way; SYN-ACK, ACKs, data, FIN the other, at least
        assert original >= 4 and reply >= 4
        # The router's own client: the replies come in through INPUT, never POSTROUTING (no NAT
        # stands between the ends, so there is nothing to rewrite in them). The 200 is a login
        # line to the skip rule: no daemon marked the connection watched, so it passes.
        replies = 0 if client_ns == "router" else 1
        passive = [("CONNMARK", 0), ("RETURN", 0), ("RETURN", 0)]
        passive += [("CONNMARK", 0), ("CONNMARK", 0), ("RETURN", 0)]
        skip = [("RETURN", 0), ("RETURN", replies), ("NFQUEUE", 1), ("NFQUEUE", 0)]
        assert _rule_packets(lab, tool, "mangle", "FTP_ALG") == passive + skip
        # every segment to the control ports through either hook was anchored, nothing else
        for hook in _HOOKS:
            assert raw[(hook, "anchor")] == raw[(hook, "ours")] + raw[(hook, "strays")], raw
        assert raw[(other, "ours")] == 0, raw
        assert raw[(anchored, "ours")] >= original, (raw, original)
    finally:
        for hook in _HOOKS:
            for rule in counting.values():
                lab.run(lab.router, tool, "-w", "-t", "raw", "-D", hook, *rule, check=False)
        lab.run(lab.router, "sysctl", "-qw", f"net.netfilter.nf_conntrack_acct={acct}")


@pytest.mark.netns
def test_rules_anchor_dnat_control_connections(lab: Lab) -> None:
    """The port-only anchor also reaches port-forwarded control connections."""
    assert lab.ftp_alg("rules", "apply").returncode == 0
    lab.listen(lab.inside, INSIDE4, 21)
    sock = lab.connect(lab.outside, ROUTER_OUT4, 21)
    with netns.enter(lab.router), Ctnetlink() as ct:
        entry = ct.get_conntrack(Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, sock.getsockname()[1], 21))
    assert entry is not None and entry.helper == "sane"
    assert entry.reply.src == INSIDE4


@pytest.mark.netns
def test_nft_backend_on_a_kernel_without_nft_queue(lab: Lab) -> None:
    """This kernel has no nft_queue: auto picks iptables, --backend nft refuses clearly."""
    with netns.enter(lab.router):
        has_queue = rules_exec.nft_has_queue()
    if has_queue:
        pytest.skip("this kernel has nft_queue")
    assert "ftp_alg_probe" not in lab.run(lab.router, "nft", "list", "tables").stdout
    done = lab.ftp_alg("rules", "apply", "--backend", "nft")
    assert done.returncode == 1 and "nft_queue" in done.stderr
    done = lab.ftp_alg("rules", "apply", "--backend", "auto")
    assert done.returncode == 0 and "(iptables," in done.stdout


@pytest.mark.netns
def test_nft_rule_set_loads_and_anchors(lab: Lab, tmp_path: Path) -> None:
    """The nft text is valid, and its ct helper anchor reaches DNATed connections.

    Without nft_queue the queue statements cannot load here, so they are swapped for
    `counter`: what remains is checked by the kernel and exercised with traffic.
    """
    text = re.sub(r"queue num \S+ bypass", "counter", rules.render_nft())
    nft_file = tmp_path / "ftp-alg.nft"
    nft_file.write_text(text)
    try:
        lab.run(lab.router, "nft", "-f", str(nft_file))
        lab.run(lab.router, "nft", "-f", str(nft_file))  # loading twice replaces the table
        assert lab.run(lab.router, "nft", "list", "tables").stdout.count("ftp_alg") == 1
        lab.listen(lab.inside, INSIDE4, 21)
        sock = lab.connect(lab.outside, ROUTER_OUT4, 21)
        with netns.enter(lab.router), Ctnetlink() as ct:
            seen = Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, sock.getsockname()[1], 21)
            entry = ct.get_conntrack(seen)
        assert entry is not None and entry.helper == "sane"
        assert "table inet ftp_alg" in lab.ftp_alg("rules", "show").stdout
        assert lab.ftp_alg("rules", "remove").returncode == 0
        assert "ftp_alg" not in lab.run(lab.router, "nft", "list", "tables").stdout
    finally:
        lab.run(lab.router, "nft", "delete", "table", "inet", "ftp_alg", check=False)


def test_cli_import_stays_light() -> None:
    """`ftp-alg` imports the rules command at start-up: no pyroute2, no sockets, no probes."""
    code = (
        "import sys, alg.kernel.rules_command, alg.kernel.cttypes;"
        "assert 'pyroute2' not in sys.modules, 'pyroute2 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.netns
def test_anchor_reaches_connections_picked_up_mid_stream(lab: Lab) -> None:
    """Why the CT rule matches every packet, not only SYNs (`--ctstate NEW` never matches
    in raw): after `conntrack -F`, the next data packet recreates the entry, anchored."""
    listener = lab.listen(lab.outside, OUTSIDE4, 21)
    client = lab.connect(lab.client, OUTSIDE4, 21)
    server, _peer = listener.accept()
    lab.sockets.append(server)
    seen = Tuple(4, 6, CLIENT4, OUTSIDE4, client.getsockname()[1], 21)
    assert lab.ftp_alg("rules", "apply").returncode == 0
    with netns.enter(lab.router), Ctnetlink() as ct:
        before = ct.get_conntrack(seen)
        assert before is not None and before.helper is None  # opened before the rules

        lab.run(lab.router, "conntrack", "-F")
        client.sendall(b"NOOP\r\n")
        assert server.recv(10) == b"NOOP\r\n"

        after = ct.get_conntrack(seen)
    assert after is not None and after.helper == "sane"
