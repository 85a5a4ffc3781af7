"""The rule sets: rendering (pure) and `ftp-alg rules` against the router namespace."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from alg.kernel import rules, rules_exec
from alg.kernel.ctnetlink import Ctnetlink, Tuple
from tests.kernel.lab import INSIDE4, OUTSIDE4, ROUTER_OUT4, Lab, netns

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


# --- rendering -----------------------------------------------------------------------------------


def test_rules_folder_matches_the_renderer() -> None:
    assert (RULES_DIR / "ftp-alg.iptables.sh").read_text() == rules.render_iptables_script()
    assert (RULES_DIR / "ftp-alg.nft").read_text() == rules.render_nft()


def test_anchor_comes_before_queue_and_matches_ports_only() -> None:
    chain = rules.iptables_rules(rules.RuleOptions())
    assert chain[0][-3:] == ("CT", "--helper", "sane")
    assert "NFQUEUE" in chain[1] and "--dports" in chain[1]
    assert "NFQUEUE" in chain[2] and "--sports" in chain[2]
    assert not any(flag in rule for rule in chain for flag in ("-d", "-s", "--helper ftp"))


def test_render_options() -> None:
    opts = rules.RuleOptions(ports=(2121,), queue_balance=(2, 5), families=(4,))
    script = rules.render_iptables_script(opts)
    assert "ip6tables -w" not in script
    assert "--dport 2121 -j CT --helper sane" in script
    assert "--queue-balance 2:5 --queue-bypass" in script
    nft = rules.render_nft(opts)
    assert "meta nfproto ipv4 tcp dport 2121 queue num 2-5 bypass" in nft


@pytest.mark.parametrize(
    "bad",
    [
        {"ports": ()},
        {"ports": (0,)},
        {"ports": tuple(range(1, 17))},
        {"queue_num": 70000},
        {"queue_balance": (3, 3)},
        {"families": (5,)},
    ],
)
def test_bad_options_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rules.RuleOptions(**bad)  # type: ignore[arg-type]


def test_parsers() -> None:
    assert rules.parse_ports("21, 2121,21") == (21, 2121)
    assert rules.parse_balance("0:3") == (0, 3)
    for bad in ("x", "21;22"):
        with pytest.raises(ValueError):
            rules.parse_ports(bad)
    with pytest.raises(ValueError):
        rules.parse_balance("3")


def test_port_overlap() -> None:
    ours = (21, 2121)
    assert rules_exec._overlaps("21", ours)
    assert rules_exec._overlaps("990,2121", ours)
    assert rules_exec._overlaps("1:100", ours)
    assert rules_exec._overlaps("2000:", ours)
    assert not rules_exec._overlaps("990", ours)
    assert not rules_exec._overlaps("22:2000", ours)


# --- against the kernel ------------------------------------------------------------------------


def _add_unrelated_rules(lab: Lab) -> None:
    for rule in (
        ("-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "5353", "-j", "ACCEPT"),
        ("-t", "raw", "-A", "OUTPUT", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT"),
        ("-t", "filter", "-A", "FORWARD", "-p", "tcp", "--dport", "23", "-j", "DROP"),
        ("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8022", "-j", "REDIRECT"),
    ):
        lab.run(lab.router, "iptables", "-w", *rule)
        lab.run(lab.router, "ip6tables", "-w", *rule)


def _remove_unrelated_rules(lab: Lab) -> None:
    for table, chain in (("raw", "PREROUTING"), ("raw", "OUTPUT"), ("filter", "FORWARD")):
        for tool in ("iptables", "ip6tables"):
            lab.run(lab.router, tool, "-w", "-t", table, "-F", chain)
    for tool, rule in (
        ("iptables", "-p tcp --dport 8022 -j REDIRECT"),
        ("ip6tables", "-p tcp --dport 8022 -j REDIRECT"),
    ):
        lab.run(lab.router, tool, "-w", "-t", "nat", "-D", "PREROUTING", *rule.split())


@pytest.mark.netns
def test_apply_twice_then_remove_restores_every_table(lab: Lab) -> None:
    _add_unrelated_rules(lab)
    try:
        before = {tool: lab.save(tool) for tool in ("iptables", "ip6tables")}

        for _ in range(2):
            done = lab.ftp_alg("rules", "apply")
            assert done.returncode == 0, done.stderr
            assert "applied (iptables" in done.stdout

        for tool in ("iptables", "ip6tables"):
            raw = lab.run(lab.router, tool, "-w", "-t", "raw", "-S").stdout
            assert raw.count("-A PREROUTING -j FTP_ALG") == 1
            assert raw.count("-A OUTPUT -j FTP_ALG") == 1
            assert raw.count("--helper sane") == 1
            assert raw.count("-j NFQUEUE --queue-num 0 --queue-bypass") == 2
            # ours first, the admin's rules after it, untouched
            prerouting = [line for line in raw.splitlines() if line.startswith("-A PREROUTING")]
            assert prerouting[0] == "-A PREROUTING -j FTP_ALG"
            assert "--dport 5353" in prerouting[1]

        shown = lab.ftp_alg("rules", "show")
        assert shown.returncode == 0
        assert shown.stdout.count("--helper sane") == 2  # one per family

        done = lab.ftp_alg("rules", "remove")
        assert done.returncode == 0, done.stderr
        assert {tool: lab.save(tool) for tool in ("iptables", "ip6tables")} == before
        assert "not installed" in lab.ftp_alg("rules", "show").stdout
    finally:
        _remove_unrelated_rules(lab)


@pytest.mark.netns
def test_family_option_touches_one_family(lab: Lab) -> None:
    done = lab.ftp_alg("rules", "apply", "--family", "4", "--ports", "21", "--queue-num", "3")
    assert done.returncode == 0, done.stderr
    v4 = lab.run(lab.router, "iptables", "-w", "-t", "raw", "-S", "FTP_ALG").stdout
    assert "--dport 21 -j NFQUEUE --queue-num 3 --queue-bypass" in v4
    v6 = lab.run(lab.router, "ip6tables", "-w", "-t", "raw", "-S", "FTP_ALG", check=False)
    assert v6.returncode != 0  # no chain


@pytest.mark.netns
def test_refuses_when_kernel_ftp_helper_is_attached(lab: Lab) -> None:
    helper_rule = ("-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21")
    lab.run(lab.router, "iptables", "-w", *helper_rule, "-j", "CT", "--helper", "ftp")
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
        lab.run(lab.router, "iptables", "-w", "-t", "raw", "-F", "PREROUTING")


@pytest.mark.netns
def test_ftp_helper_on_other_ports_is_no_conflict(lab: Lab) -> None:
    rule = ("-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "990")
    lab.run(lab.router, "iptables", "-w", *rule, "-j", "CT", "--helper", "ftp")
    try:
        assert lab.ftp_alg("rules", "apply").returncode == 0
    finally:
        lab.run(lab.router, "iptables", "-w", "-t", "raw", "-F", "PREROUTING")


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


@pytest.mark.netns
def test_rules_anchor_dnat_control_connections(lab: Lab) -> None:
    """The port-only anchor also reaches port-forwarded control connections."""
    assert lab.ftp_alg("rules", "apply").returncode == 0
    lab.listen(lab.inside, INSIDE4, 21)
    sock = lab.connect(lab.outside, ROUTER_OUT4, 21)
    with netns(lab.router), Ctnetlink() as ct:
        entry = ct.get_conntrack(Tuple(4, 6, OUTSIDE4, ROUTER_OUT4, sock.getsockname()[1], 21))
    assert entry is not None and entry.helper == "sane"
    assert entry.reply.src == INSIDE4


@pytest.mark.netns
def test_nft_backend_on_a_kernel_without_nft_queue(lab: Lab) -> None:
    """This kernel has no nft_queue: auto picks iptables, --backend nft refuses clearly."""
    with netns(lab.router):
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
        with netns(lab.router), Ctnetlink() as ct:
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
    client = lab.connect(lab.inside, OUTSIDE4, 21)
    server, _peer = listener.accept()
    lab.sockets.append(server)
    seen = Tuple(4, 6, INSIDE4, OUTSIDE4, client.getsockname()[1], 21)
    assert lab.ftp_alg("rules", "apply").returncode == 0
    with netns(lab.router), Ctnetlink() as ct:
        before = ct.get_conntrack(seen)
        assert before is not None and before.helper is None  # opened before the rules

        lab.run(lab.router, "conntrack", "-F")
        client.sendall(b"NOOP\r\n")
        assert server.recv(10) == b"NOOP\r\n"

        after = ct.get_conntrack(seen)
    assert after is not None and after.helper == "sane"
