"""FTPS ranges without a kernel: the settings, the rendered rules, the daemon hook's bookkeeping.

The hook's set changes are recorded by a fake here (and the netlink adapter is run once against
a real ipset); tests/lab/test_ftps*.py run the whole thing (vsftpd with TLS behind the lab's
router).
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from alg.core.commands import FlowKey
from alg.core.reports import EventKind, Report
from alg.daemon.ftps import REFRESH, FtpsRanges
from alg.daemon.settings import SettingsError, load
from alg.kernel import rules
from alg.kernel.rules_ftps import MEMBER_TIMEOUT, FtpsRange, ranges_from

SERVER, PUBLIC, CLIENT = "192.168.78.21", "198.51.100.1", "198.51.100.20"
INSIDE_CLIENT, OUTSIDE_SERVER = "192.168.77.10", "203.0.113.5"
ROOT = Path(__file__).resolve().parents[2]
PASSIVE = FtpsRange("passive", SERVER, 31000, 31009)
ACTIVE = FtpsRange("active", INSIDE_CLIENT, 40000, 40009)


def a(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# conntrack's (original, reply) for a port-forwarded and for a masqueraded control connection
FORWARDED = ((a(CLIENT), 50000, a(PUBLIC), 21), (a(SERVER), 21, a(CLIENT), 50000))
MASQUERADED = ((a(INSIDE_CLIENT), 40100, a(OUTSIDE_SERVER), 21),
               (a(OUTSIDE_SERVER), 21, a(PUBLIC), 61000))  # fmt: skip
PLAIN = ((a(CLIENT), 50001, a(SERVER), 21), (a(SERVER), 21, a(CLIENT), 50001))  # no NAT


# --- settings --------------------------------------------------------------------------------


def test_settings_read_both_tables(tmp_path: Path) -> None:
    path = tmp_path / "ftp-alg.toml"
    path.write_text(
        '[daemon.ftps_passive_ports]\n"192.168.78.21" = "31000-31009"\n'
        '"fd00:0::21" = ["31000-31009", "32000-32000"]\n'
        '[ftps_active_ports]\n"192.168.77.10" = "40000-40009"\n'
    )
    settings = load(str(path), {})
    assert settings.ftps_passive_ports == {
        SERVER: ((31000, 31009),),
        "fd00::21": ((31000, 31009), (32000, 32000)),  # addresses normalised
    }
    assert settings.ftps_active_ports == {INSIDE_CLIENT: ((40000, 40009),)}
    assert load(None, {}).ftps_passive_ports == {}


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ('"server" = "1-2"', "'server' is not an IP address"),
        ('"10.0.0.1" = "31000"', 'a range is written "low-high"'),
        ('"10.0.0.1" = "3-2"', "need 1 <= low <= high <= 65535"),
        ('"10.0.0.1" = "1-70000"', "need 1 <= low <= high <= 65535"),
        ('"10.0.0.1" = []', "has no range"),
        ('"10.0.0.1" = [31000]', 'a range is written "low-high"'),
    ],
)
def test_bad_ranges_are_refused_at_start(tmp_path: Path, table: str, why: str) -> None:
    path = tmp_path / "ftp-alg.toml"
    path.write_text(f"[daemon.ftps_passive_ports]\n{table}\n")
    with pytest.raises(SettingsError, match="setting ftps_passive_ports") as err:
        load(str(path), {})
    assert why in str(err.value)
    with pytest.raises(SettingsError, match="must be a table"):
        load(None, {"ftps_active_ports": "10.0.0.1=1-2"})


# --- rules -----------------------------------------------------------------------------------


def test_no_ranges_render_no_ftps_rule() -> None:
    script = rules.render_iptables_script()
    assert "ipset -exist create" not in script
    assert "-A FTP_ALG_FTPS" not in script
    assert "-j DNAT" not in script
    # but apply and remove take away what an earlier config left
    assert "iptables -w -t nat -F FTP_ALG_FTPS" in script
    assert "ipset destroy" in script


def test_ranges_render_one_set_and_one_dnat_rule_per_range() -> None:
    ranges = ranges_from({SERVER: [(31000, 31009)], "fd00::21": [(1, 2), (3, 4)]}, {})
    script = rules.render_iptables_script(rules.RuleOptions(ftps=ranges))
    name = PASSIVE.set_name
    assert script.count(f"ipset -exist create {name} hash:ip family inet timeout") == 1
    v6 = ranges[1].set_name
    assert script.count(f"ipset -exist create {v6} hash:ip family inet6") == 1  # one per host
    assert (
        f"iptables -w -t nat -A FTP_ALG_FTPS -p tcp --dport 31000:31009 -m set --match-set "
        f"{name} src -m addrtype --dst-type LOCAL -m comment --comment "
        f"'ftp-alg passive FTPS range of {SERVER}' -j DNAT --to-destination {SERVER}" in script
    )
    assert script.count("ip6tables -w -t nat -A FTP_ALG_FTPS") == 2
    assert script.index(f"create {name}") < script.index("-A FTP_ALG_FTPS")  # set first
    only4 = rules.render_iptables_script(rules.RuleOptions(ftps=ranges, families=(4,)))
    assert v6 not in only4
    with pytest.raises(ValueError, match="iptables backend"):
        rules.render_nft(rules.RuleOptions(ftps=ranges))


def test_set_names_fit_ipset_and_differ_per_host_and_kind() -> None:
    names = {
        FtpsRange(kind, host, 1, 2).set_name
        for kind in ("passive", "active")
        for host in (SERVER, "fd00:192:168:78:ffff:ffff:ffff:ffff")
    }
    assert len(names) == 4 and all(len(n) <= 31 for n in names)


# --- the daemon hook -------------------------------------------------------------------------


class FakeSets:
    """Records the set changes; `fail` makes them fail like a missing set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | int, ...]] = []
        self.fail = False

    def add(self, name: str, peer: str, timeout: int) -> str | None:
        self.calls.append(("add", name, peer, timeout))
        return "NoSuchObject (2, 'No such file or directory')" if self.fail else None

    def delete(self, name: str, peer: str) -> str | None:
        self.calls.append(("del", name, peer))
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hook(sessions: dict[int, tuple[FlowKey, FlowKey]]) -> tuple[FtpsRanges, FakeSets, Clock]:
    sets, clock = FakeSets(), Clock()
    ranges = FtpsRanges([PASSIVE, ACTIVE], sessions.get, Counter(), sets, clock)
    return ranges, sets, clock


def blind(session: int) -> Report:
    return Report(EventKind.BLIND, session, "AUTH TLS accepted")


def end(session: int) -> Report:
    return Report(EventKind.SESSION_END, session, "closed")


def test_forwarded_session_opens_the_servers_range_to_its_client_until_it_ends() -> None:
    ranges, sets, clock = hook({1: FORWARDED})
    ranges.on_report(blind(1))
    add = ("add", PASSIVE.set_name, CLIENT, MEMBER_TIMEOUT)
    assert sets.calls == [add]
    ranges.on_report(blind(1))  # blind again after CCC + AUTH: nothing new
    assert sets.calls == [add]
    clock.now += 12.5
    ranges.on_report(end(1))
    assert sets.calls[1:] == [("del", PASSIVE.set_name, CLIENT)]
    assert ranges.counters == {"ftps-range-opened": 1, "ftps-range-closed": 1}


def test_masqueraded_inside_client_opens_its_active_range_to_its_server() -> None:
    ranges, sets, _ = hook({2: MASQUERADED})
    ranges.on_report(blind(2))
    assert sets.calls == [("add", ACTIVE.set_name, OUTSIDE_SERVER, MEMBER_TIMEOUT)]


def test_sessions_without_nat_or_declared_host_open_nothing() -> None:
    other = ((a(CLIENT), 50002, a(PUBLIC), 21), (a("192.168.78.99"), 21, a(CLIENT), 50002))
    ranges, sets, _ = hook({3: PLAIN, 4: other})
    for session in (3, 4, 5):  # 5: already gone
        ranges.on_report(blind(session))
        ranges.on_report(end(session))
    ranges.on_report(Report(EventKind.REWRITE, 3, "PORT"))
    assert sets.calls == [] and ranges.counters == {}


def test_the_range_stays_open_while_another_session_of_the_peer_lives() -> None:
    second = ((a(CLIENT), 50009, a(PUBLIC), 21), (a(SERVER), 21, a(CLIENT), 50009))
    ranges, sets, _ = hook({1: FORWARDED, 2: second})
    ranges.on_report(blind(1))
    ranges.on_report(blind(2))
    ranges.on_report(end(1))
    assert not any(call[0] == "del" for call in sets.calls)
    ranges.on_report(end(2))
    assert [call[0] for call in sets.calls] == ["add", "add", "del"]


def test_a_failed_add_is_counted_and_nothing_is_left_to_close() -> None:
    ranges, sets, _ = hook({1: FORWARDED})
    sets.fail = True
    ranges.on_report(blind(1))
    ranges.on_report(end(1))
    assert ranges.counters == {"ftps-range-failed": 1}
    assert len(sets.calls) == 1


def test_members_are_refreshed_at_most_every_refresh_interval_and_closed_at_stop() -> None:
    ranges, sets, clock = hook({1: FORWARDED, 2: MASQUERADED})
    ranges.tick(clock.now)  # nothing open: no call
    assert sets.calls == []
    ranges.on_report(blind(1))
    ranges.on_report(blind(2))
    opened = list(sets.calls)
    ranges.tick(clock.now)
    ranges.tick(clock.now + REFRESH / 2)
    ranges.tick(clock.now + REFRESH)
    assert sets.calls[2:] == opened + opened  # two refreshes of both members
    ranges.close()
    assert [call[0] for call in sets.calls[-2:]] == ["del", "del"]
    assert ranges.counters["ftps-range-closed"] == 2 and not ranges.open


@pytest.mark.netns
def test_kernel_sets_add_refresh_and_delete_members(tmp_path: Path) -> None:
    """The pyroute2 adapter against a real ipset, in a namespace of this test's own."""
    ns = f"fs-ftps-sets-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        code = (
            "from alg.daemon.ftps import KernelSets\n"
            "s = KernelSets()\n"
            "print(s.add('ftp-alg-t', '192.0.2.7', 300), s.add('ftp-alg-t', '192.0.2.7', 200))\n"
            "print(s.add('ftp-alg-missing', '192.0.2.7', 300) is not None)\n"
            "print(s.delete('ftp-alg-t', '192.0.2.8'), s.delete('ftp-alg-t', '192.0.2.7'))\n"
        )
        run = ["ip", "netns", "exec", ns]
        subprocess.run([*run, "ipset", "create", "ftp-alg-t", "hash:ip", "timeout", "300"],
                       check=True)  # fmt: skip
        mid = [*run, sys.executable, "-c", code.split("print(s.delete")[0]]
        subprocess.run(mid, check=True, capture_output=True, text=True, cwd=ROOT)
        listed = subprocess.run([*run, "ipset", "list", "ftp-alg-t"], capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
        assert re.search(r"^192\.0\.2\.7 timeout (19\d|200)$", listed, re.MULTILINE), listed
        done = subprocess.run([*run, sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, cwd=ROOT)  # fmt: skip
        assert done.stdout.split() == ["None", "None", "True", "None", "None"]
        listed = subprocess.run([*run, "ipset", "list", "ftp-alg-t"], capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
        assert "192.0.2.7" not in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
