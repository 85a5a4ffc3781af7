"""Issue 10 in the lab: floods and faults against the real kernel and the real daemon.

The attacks come from tests/lab/flood_probe.py, run in the client (LAN) or server (internet)
namespace: the 3-packet sequence that used to leak queued packets, junk floods from both
sides, a table-filling flood to port 21 and a bounce-PORT log flood. Each test reads what
really happened: /proc/net/netfilter/nfnetlink_queue in the router's namespace, the daemon's
status counters and RSS, its log file, and FTP transfers checked by their sha256.

The floods are a raw-socket loop over prebuilt packets (stdlib Python): measured here at
~53k pps against ~33k for `hping3 --flood`; two senders at once got less (2 CPUs, the
router's softirq work runs on the senders' CPUs). The kernel helper gets the same floods,
and both figures are printed side by side; only ftp-alg's are judged.
"""

from __future__ import annotations

import ftplib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alg.lab import netns, state
from tests.lab.conftest import LabHandle
from tests.lab.test_ftp_alg import daemon_pid, router, rules, status

# every test here runs for 5 to 50 s
pytestmark = [pytest.mark.netns, pytest.mark.slow]

FLOOD = Path(__file__).with_name("flood_probe.py")
OUTSIDE, PUBLIC, ONE_MIB = "198.51.100.20", "198.51.100.1", "1mib.bin"
# Where each side's attack and transfers come from: (namespace node, address it talks to,
# the node whose vsftpd answers).
SIDES = {"inside": ("client", OUTSIDE, "server"), "internet": ("server", PUBLIC, "inside")}
# The daemon may grow by this much under a flood. Its state is per control connection (a few
# KB each, ~20 here); the issue measured +75 MB (54 -> 129 MB) when junk created sessions. 8
# MiB leaves room for the allocator's arenas and the transfers' buffers (measured: +0.1 MiB).
RSS_SLACK_KB = 8 * 1024


@pytest.fixture(scope="module")
def alg(lab: LabHandle) -> Iterator[LabHandle]:
    """ftp-alg on the router; afterwards its rules are gone and no expectation is left.
    (Unlike test_ftp_alg's fixture, no INVALID check: junk floods are INVALID by design.)"""
    lab.use_gateway("none")
    before = rules(lab)
    lab.use_gateway("ftp-alg")
    yield lab
    lab.use_gateway("none")
    assert rules(lab) == before
    assert "0 expectations" in router(lab, "conntrack", "-L", "expect")


def attack(lab: LabHandle, node: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    done = subprocess.run(
        netns.in_ns(lab.ns(node), [sys.executable, str(FLOOD), *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def queue_stats(lab: LabHandle) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue in the router's namespace, per queue number."""
    names = ("queue", "portid", "total", "mode", "range", "dropped", "user_dropped", "id", "1")
    out = {}
    for line in router(lab, "cat", "/proc/net/netfilter/nfnetlink_queue").splitlines():
        row = dict(zip(names, map(int, line.split()), strict=True))
        out[row["queue"]] = row
    return out


def counters(lab: LabHandle) -> dict[str, int]:
    got = status(lab)["counters"]
    assert isinstance(got, dict)
    return got


def delta(after: dict[str, int], before: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(lab: LabHandle, side: str, timeout: float = 5) -> tuple[bool, float, str]:
    """One RETR of 1mib.bin: `inside` active from the LAN client behind the masquerade (its
    PORT is rewritten), `internet` passive from outside through the port forward (the 227 is
    rewritten and trusted). (ok, seconds, what went wrong)."""
    node, host, server = SIDES[side]
    want = (state.node_dir(lab.prefix, server) / "ftp" / f"{ONE_MIB}.sha256").read_text()
    digest = hashlib.sha256()
    start = time.monotonic()
    try:
        with netns.enter(lab.ns(node)):
            ftp = ftplib.FTP()
            ftp.trust_server_pasv_ipv4_address = True  # type: ignore[attr-defined]
            ftp.connect(host, 21, timeout=timeout)
            ftp.login()
            ftp.set_pasv(side == "internet")
            ftp.retrbinary(f"RETR {ONE_MIB}", digest.update)
            ftp.quit()
    except (OSError, EOFError, ftplib.Error) as exc:
        return False, time.monotonic() - start, f"{side}: {exc!r}"
    ok = digest.hexdigest() == want.split()[0]
    return ok, time.monotonic() - start, "" if ok else f"{side}: wrong bytes"


def tracked_ports(lab: LabHandle) -> set[int]:
    """Source ports of the connections the router's conntrack holds to OUTSIDE port 21."""
    table = router(lab, "conntrack", "-L", "-p", "tcp", "--orig-dst", OUTSIDE, "--dport", "21")
    # the first sport= of a line is the original direction's (the client's port)
    return {int(m.group(1)) for m in re.finditer(r"^.*? sport=(\d+)", table, re.M)}


def wait_sessions(lab: LabHandle, at_most: int, seconds: float) -> int:
    """Sessions, once at most `at_most` or after `seconds`. Each round lists conntrack:
    a dump reaps the entries that expired (and sends their DESTROY events) at once, where
    the kernel's garbage collector may take up to a minute on a quiet table."""
    deadline = time.monotonic() + seconds
    while True:
        now = status(lab)["sessions"]
        assert isinstance(now, int)
        if now <= at_most or time.monotonic() > deadline:
            return now
        router(lab, "conntrack", "-L")
        time.sleep(0.5)


def test_rst_partial_port_syn_leaves_no_packet_in_the_queue(alg: LabHandle) -> None:
    """100 times the RST / partial "PORT 1" / SYN sequence on a real control connection's
    tuple, from inside and from the internet through the port forward; plain (the kernel's
    RST; only "PORT 1" is queued, and held) and loaded (RST and SYN carry a byte, so all
    three reach the core and the SYN replaces a closing session that holds "PORT 1": the
    path that leaked). Afterwards nothing is left in the queue and FTP works."""
    pid, before = daemon_pid(alg), counters(alg)
    sessions = status(alg)["sessions"]
    assert isinstance(sessions, int)
    for node, host, _ in SIDES.values():
        for variant in ([], ["--loaded"]):
            result = attack(alg, node, "seq3", host, "--count", "100", *variant)
            assert result == {"sequences": 100, "banners": 100}
    time.sleep(1.5)  # the core's hold_timeout is 0.5 s
    queues = queue_stats(alg)
    after = counters(alg)
    print(f"\n3-packet sequences, 4 x 100: queue {queues[0]}; {after}")
    assert queues[0]["total"] == 0, queues
    assert queues[0]["dropped"] == 0 and queues[0]["user_dropped"] == 0, queues
    # The attack reached the daemon: each "PORT 1" was queued and held, and the loaded
    # RSTs and SYNs were queued too.
    assert delta(after, before, "held") >= 400, after
    assert delta(after, before, "packets") >= 4 * 200 + 2 * 200, after
    assert status(alg)["held"] == 0
    assert daemon_pid(alg) == pid and Path(f"/proc/{pid}").exists()
    # Sessions exist only while conntrack tracks the connection: the CLOSE entries (10 s)
    # go and take their sessions with them.
    assert wait_sessions(alg, sessions, 20) <= sessions, counters(alg)
    for side in SIDES:
        ok, _, why = transfer(alg, side)
        assert ok, why


def test_packets_to_port_21_without_syn_create_no_session(alg: LabHandle) -> None:
    """66k junk segments with payload to port 21, no handshake, each the first of its
    4-tuple but for the last 1.5k (source ports wrap): no session is created, a real
    control connection opened before keeps working and a new one is watched."""
    client = alg.ns("client")
    with netns.enter(client):
        real = ftplib.FTP()
        real.connect(OUTSIDE, 21, timeout=10)
    real.login()
    real.pwd()  # the first line the kernel's skip rule does not keep: the daemon watches it
    real.set_pasv(False)
    before, sessions = counters(alg), status(alg)["sessions"]
    assert isinstance(sessions, int) and sessions >= 1
    # Earlier tests' connections from the client to port 21 may still be in conntrack
    # (TIME_WAIT lasts 120 s), anchored: a junk packet on one of their tuples would be a
    # late segment of a real connection, not junk. The flood leaves their ports out.
    tracked = tracked_ports(alg)
    assert real.sock is not None and real.sock.getsockname()[1] in tracked
    argv = ["flood", OUTSIDE, "junk", "--limit", "66000", "--seconds", "30", "--variety", "64512"]
    sent = attack(alg, "client", *argv, "--exclude", ",".join(map(str, sorted(tracked))))
    time.sleep(1)
    after = counters(alg)
    print(f"\nno-SYN flood to :21: {sent['sent']} packets at {sent['pps']} pps; {after}")
    assert sent["sent"] >= 66000
    assert delta(after, before, "session-new") == 0, after
    assert status(alg)["sessions"] <= sessions  # type: ignore[operator]
    with netns.enter(client):
        assert ONE_MIB in real.nlst()  # the old session: PORT rewritten
        fresh = ftplib.FTP()
        fresh.connect(OUTSIDE, 21, timeout=10)
        fresh.login()
        fresh.set_pasv(False)
        assert ONE_MIB in fresh.nlst()  # a new session, watched
    fresh.quit()
    real.quit()
    done = counters(alg)
    assert delta(done, after, "session-new") == 1
    assert delta(done, after, "rewrite") == 2, done


def test_bounce_port_flood_gives_a_bounded_log(alg: LabHandle) -> None:
    """100,000 bounce PORTs on one control connection: vsftpd refuses each, the daemon counts
    each refusal, and the log grows by a few lines plus a "suppressed N" summary."""
    logfile = state.node_dir(alg.prefix, "router") / "logs" / "ftp-alg.log"
    seen = len(logfile.read_text().splitlines())
    before = counters(alg)
    result = attack(alg, "client", "bounce", OUTSIDE, "--count", "100000", timeout=120)
    assert result["replies"] == {"500": 100000}, result  # each line reached vsftpd unchanged
    # Each suppressed batch is told 10 s after its first suppression: wait for the last.
    deadline, told, written, grown = time.monotonic() + 25, 0, 0, []
    while time.monotonic() < deadline:
        grown = logfile.read_text().splitlines()[seen:]
        summaries = [x for x in grown if "suppressed" in x and "kind refusal" in x]
        told = sum(int(x.split("suppressed ")[1].split()[0]) for x in summaries)
        written = sum("names 10.0.0.9" in x for x in grown)
        if summaries and told + written >= 100000:
            break
        time.sleep(0.5)
    after = counters(alg)
    print(f"\nbounce flood: 100000 PORTs in {result['seconds']} s, log +{len(grown)} lines")
    assert delta(after, before, "refusal.bounce") == 100000, after
    # The limiter's design: a burst of 20 lines, then 10 a second for the session's key,
    # one summary per 10 s (2 s of slack for the reader's lag). 100,000 lines before.
    bound = 20 + 10 * (result["seconds"] + 2) + result["seconds"] / 10 + 1
    assert len(grown) <= bound, (bound, grown[-5:])
    assert told > 0 and told + written == 100000, (told, written, grown[-5:])


# name: (attacker's node, target, flood_probe kind, port). From the internet: source port
# 21 to the router's public address, random destination ports, ACK + payload and plain SYNs
# alternating. From the LAN: junk with payload to the outside server's port 21 from 4096
# source ports, no handshake.
FLOODS = {
    "internet-sport21": ("server", PUBLIC, "mix"),
    "lan-to-21": ("client", OUTSIDE, "junk"),
}
FLOOD_SECONDS = 20


def flood_with_transfers(lab: LabHandle, flood: str) -> dict[str, Any]:
    """Run the flood for FLOOD_SECONDS; meanwhile a transfer on each NAT side every 2 s."""
    node, host, kind = FLOODS[flood]
    argv = [sys.executable, str(FLOOD), "flood", host, kind, "--seconds", str(FLOOD_SECONDS)]
    proc = subprocess.Popen(netns.in_ns(lab.ns(node), argv), stdout=subprocess.PIPE, text=True)
    results: list[tuple[bool, float, str]] = []
    try:
        time.sleep(0.5)  # under way before the first transfer
        tick = time.monotonic()
        while proc.poll() is None and len(results) < FLOOD_SECONDS:
            results += [transfer(lab, side) for side in SIDES]
            tick += 2
            time.sleep(max(0.0, tick - time.monotonic()))
        out, _ = proc.communicate(timeout=FLOOD_SECONDS + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"flood": json.loads(out), "results": results}


def figures(run: dict[str, Any]) -> str:
    results = run["results"]
    ok = sum(r[0] for r in results)
    slowest = max((r[1] for r in results), default=0.0)
    return f"{run['flood']['pps']:>8} pps  {ok:>2}/{len(results):<2} ok  slowest {slowest:.2f} s"


@pytest.mark.slow
@pytest.mark.parametrize("flood", FLOODS)
def test_junk_flood_ftp_keeps_working_on_both_nat_sides(alg: LabHandle, flood: str) -> None:
    """A 20 s junk flood (issue 10: FTP through the port forward worked 1 time in 4): every
    transfer on both NAT sides succeeds, the queue drops nothing, the daemon does not grow
    and its counters show the flood never reached it; the kernel helper under the same flood
    is measured alongside."""
    pid = daemon_pid(alg)
    rss_before, before, cpu_before = rss_kb(pid), counters(alg), cpu_seconds(pid)
    run = flood_with_transfers(alg, flood)
    time.sleep(1)
    rss_after, after, queues = rss_kb(pid), counters(alg), queue_stats(alg)
    cpu = cpu_seconds(pid) - cpu_before
    sessions = status(alg)["sessions"]
    alg.use_gateway("kernel")
    try:
        kernel = flood_with_transfers(alg, flood)
    finally:
        alg.use_gateway("ftp-alg")
    queued = delta(after, before, "packets")
    print(
        f"\n{flood} flood, {FLOOD_SECONDS} s, a transfer per NAT side every 2 s:"
        f"\n  ftp-alg  {figures(run)}"
        f"\n  kernel   {figures(kernel)}"
        f"\n  ftp-alg daemon: CPU {cpu:.2f} s, RSS {rss_before} -> {rss_after} kB,"
        f" queued {queued} packets"
        f" of {run['flood']['sent']} sent, sessions {sessions}, queue {queues[0]},"
        f" counters {after}"
    )
    results = run["results"]
    assert len(results) >= FLOOD_SECONDS // 2, results  # transfers kept coming during it
    assert [r for r in results if not r[0]] == []
    assert run["flood"]["pps"] > 1000
    assert kernel["flood"]["pps"] > 0 and kernel["results"]  # measured, not judged
    assert daemon_pid(alg) != pid  # (restarted by the gateway switch: it was alive till then)
    assert queues[0]["dropped"] == 0 and queues[0]["user_dropped"] == 0, queues
    assert queues[0]["total"] == 0, queues
    assert rss_after - rss_before <= RSS_SLACK_KB, (rss_before, rss_after)
    # The flood costs the daemon nothing: its CPU is the transfers' (measured: ~0.1 s).
    # Before the DESTROY events were filtered in the kernel, one per flood packet reached
    # it: ~5 s of CPU per 12 s of flood, and transfers took up to 11 s.
    assert cpu < 0.1 * FLOOD_SECONDS, cpu
    # What it saw: one session per transfer and their control lines. The LAN flood reuses
    # each of its 4096 tuples ~70 times: when conntrack took the server's RST as a reply,
    # a later junk segment in window is an ESTABLISHED payload segment of an anchored
    # connection, and gets a session like any (measured: 1 in 295k packets; it goes with
    # its conntrack entry). The flood from outside never matches a control connection.
    extra = delta(after, before, "session-new") - len(results)
    print(f"  sessions the flood made: {extra}")
    assert 0 <= extra <= (run["flood"]["sent"] // 20000 if flood == "lan-to-21" else 0), after
    # The transfers' control packets, plus the later junk segments that land in the window
    # of a connection the flood itself made ESTABLISHED (each such connection is a real,
    # anchored one to the queue; measured: 13 packets for 3 of them in a 20 s flood, up to
    # ~100 each in other runs). Once conntrack has it closed (the server's RST), each such
    # segment is passed without a session and counted as `closed-connection`.
    closed = delta(after, before, "closed-connection")
    print(f"  junk segments on connections conntrack had closed: {closed}")
    assert queued <= 40 * len(results) + 10 * extra + closed, after
    assert delta(after, before, "errors") == 0, after
