"""`ftp-alg lab bench`: ftp-alg against the kernel's FTP helper and plain NAT, in one run.

The bench builds its own lab (or reuses a running one of the same prefix), then measures in
rounds, each round visiting every gateway in turn (none, kernel, ftp-alg, none, ...) so that
noise from the rest of the machine falls on all three alike. The client is the lab's client
behind the masquerading router, the server vsftpd on the outside server's port 21; the
client side runs inside the client namespace (alg/lab/probes/bench_probe.py).

Per gateway and round:
  control round trip  NOOP/200 exchanges over 4 logged-in sessions in turn (raw socket,
                      TCP_NODELAY), each exchange timed
  session rate        complete sessions a second: connect, login, PORT or PASV, LIST, QUIT;
                      1, 8 and 64 at once
Then, in a phase of its own, what the ratios compare: in short batches that alternate the
gateways, the session rate with 8 at once and a large RETR, both modes; each ratio is the median
of the batches' own ratios (the method and why: alg/lab/bench/interleaved.py).
With ftp-alg, the daemon's CPU time (utime + stime from /proc/PID/stat) is read around each
workload and divided by the packets it was queued (its `packets` counter). At the end, on a
fresh daemon, logged-in sessions are held open idle: the growth of its RSS (VmRSS) per session.
Last, sessions in progress across a daemon restart and, on the failover lab (built under the
prefix + "h"; `--no-failover` skips it), across a router failover (alg/lab/bench/survive.py).

Plain NAT cannot carry an active-mode session (vsftpd refuses the private PORT address), so
`none` has passive figures only. Figures are printed one per line as `name value`; the names:

  rtt_p50_us.GW, rtt_p99_us.GW        round trip of NOOP/200, pooled over the rounds
  added_rtt_p50_us, added_rtt_p99_us  ftp-alg minus the kernel helper
  session_rate.MODE.N.GW              sessions/s with N at once (median over the rounds)
  session_errors.GW                   failed sessions (all modes and N)
  session_rate_ratio                  ftp-alg / kernel helper with 8 at once, worse mode;
                                      median of the interleaved batches' ratios
  session_rate_ratio.MODE             the same for this mode
  session_rate_ratio.MODE.N           the rounds' medians' ratio per mode and N (compares
                                      slots minutes apart: the machine's drift shows in it)
  session_rate_paired.MODE.GW         sessions/s with 8 at once, median of the batches
  throughput_mb_s.MODE.GW             MB/s (10^6 bytes) of the RETR, median of all transfers
  throughput_best_mb_s.MODE.GW        the fastest of them
  throughput_ratio                    ftp-alg / plain NAT, passive both (the same stream
                                      through the same NAT; plain NAT has no active mode);
                                      median of the batches' ratios of their medians
  throughput_ratio.worst_mode         ftp-alg's worse mode / plain NAT's passive (what
                                      throughput_ratio was before 2026-12: scatters more)
  throughput_ratio_vs_kernel[.MODE]   ftp-alg / kernel helper, worse mode [this mode]
  batches                             interleaved batches
  daemon_packets                      packets the daemon was queued during the workloads
  queued_packets_per_session          of them, per complete session of the session workload
  control_packets_per_session         every packet of those sessions' control connections
                                      (counted beside the queue rules): what a daemon that
                                      queued every packet, as ftp-alg did before 2026-12, read
  queued_share                        queued / control packets of the session workload
  daemon_cpu_us_per_session           the daemon's CPU time per complete session
  daemon_cpu_us_per_packet            its CPU time per queued packet; .user and .system
                                      split it, .rtt, .sessions and .interleaved per
                                      workload. System time includes forwarding the packet
                                      on: the kernel does that inside the verdict call
  idle_sessions[_tracked]             idle sessions held (and tracked by the daemon)
  idle_session_bytes                  daemon RSS growth per idle logged-in session
  idle_rss_before_bytes, ..._after_   its RSS around them
  restart_sessions[_survived]         sessions in progress (a PORT rewritten in each) [the
                                      fraction whose next LIST works after SIGKILL + start
                                      of the daemon]
  failover_sessions[_survived]        the same across a failover of the router pair, ftp-alg
                                      on both routers (absent without conntrackd)
  failover_sessions[_survived].kernel the same with the kernel helper: its offsets never
                                      reach the standby, so sessions whose length changed die
  failover_takeover_s[.kernel]        crash to the standby's commit, as `lab failover`
  rounds, elapsed_s

vsftpd (not pyftpdlib) is the server: it is what real sites run, forks a process per session
like them, and keeps the Python server's CPU out of the session rate. Its fixed listen
backlog (32) needs SYN cookies off on the server node for 64 sessions at once (see
`_no_syncookies`); its per-address and total session caps are off in the lab's vsftpd.conf.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from alg.lab import backend, netns, state
from alg.lab.bench import interleaved, survive
from alg.lab.bench.figures import (
    FULL,
    GATEWAYS,
    MODES,
    QUICK,
    TARGETS,
    Plan,
    applies,
    figures,
    show,
)
from alg.lab.bench.lab import Bench, Say, go_on, quiet, report
from alg.lab.topology import load

DEFAULT_PREFIX = "bench"
DEFAULT_OUTPUT = "lab-bench.png"


def slot(bench: Bench, gateway: str, say: Say) -> None:
    """The round trip and session workloads once, with `gateway` on the router; the session
    storm comes last, so that its aftermath (exiting server processes, closing connections)
    falls on the next gateway's switch rather than on this one's measurements."""
    bench.switch(gateway)
    s, plan = bench.samples, bench.plan
    with bench.metered("rtt"):
        got = bench.probe("rtt", "--count", str(plan.noops), timeout=plan.noops * 0.05 + 30)
    s.rtt.setdefault(gateway, []).extend(got["samples_us"])
    rates = []
    counted = bench.control_counted() if gateway == "ftp-alg" else contextlib.nullcontext()
    with bench.metered("sessions"), counted:
        for mode in (m for m in MODES if applies(gateway, m)):
            for n in plan.parallel:
                flags = ["--parallel", str(n), "--seconds", str(plan.seconds)]
                if mode == "passive":
                    flags.append("--passive")
                got = bench.probe("sessions", *flags, timeout=plan.seconds + 120)
                s.rate.setdefault((mode, n, gateway), []).append(got["rate"])
                s.sessions_done[gateway] = s.sessions_done.get(gateway, 0) + got["sessions"]
                s.errors[gateway] = s.errors.get(gateway, 0) + got["errors"]
                rates.append(f"{mode[0]}{n}={got['rate']:.0f}")
                if got["errors"]:
                    rates.append(f"({got['errors']} failed: {got['first_error']})")
    rtt = sorted(s.rtt[gateway][-plan.noops :])
    say(f"  {gateway}: rtt p50 {rtt[len(rtt) // 2]:.0f} us; sessions/s {' '.join(rates)}")


def idle(bench: Bench, say: Say) -> None:
    """RSS growth of a fresh daemon per idle logged-in session."""
    bench.switch("ftp-alg")
    assert bench.daemon is not None
    plan, daemon = bench.plan, bench.daemon
    count = str(plan.idle_warm + plan.idle)
    proc = bench.held("idle", "--count", count, "--step", str(plan.idle_warm))
    try:
        readings = []
        for _ in range(2):
            line = report(proc, "idle")
            time.sleep(0.5)  # let the daemon's last verdicts and any sweep pass
            readings.append(
                (json.loads(line)["open"], daemon.rss_bytes(), daemon.status()["sessions"])
            )
            go_on(proc)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (n0, rss0, tracked0), (n1, rss1, tracked1) = readings
    bench.samples.idle = {
        "idle_sessions": n1 - n0,
        "idle_sessions_tracked": tracked1 - tracked0,
        "idle_rss_before_bytes": rss0,
        "idle_rss_after_bytes": rss1,
        "idle_session_bytes": (rss1 - rss0) / max(1, n1 - n0),
    }
    say(f"  idle: {n1 - n0} sessions, RSS {rss0 >> 10} -> {rss1 >> 10} KiB")


@contextlib.contextmanager
def _no_syncookies(prefix: str, node: str) -> Iterator[None]:
    """vsftpd listens with a fixed backlog of 32: 64 sessions at once overflow it. With SYN
    cookies (the default) the client's handshake then completes while the server drops the
    connection, and the client waits for a greeting that never comes. Without them the server
    drops the SYN and TCP retries it, which only costs time, the same for every gateway."""
    ns = backend.namespace(prefix, node)
    key = "net.ipv4.tcp_syncookies"
    before = netns.run(netns.in_ns(ns, ["sysctl", "-n", key])).stdout.strip()
    netns.run(netns.in_ns(ns, ["sysctl", "-qw", f"{key}=0"]))
    try:
        yield
    finally:
        if netns.exists(ns):
            netns.run(netns.in_ns(ns, ["sysctl", "-qw", f"{key}={before}"]), check=False)


def _make_file(path: Path, size_mib: int) -> None:
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for _ in range(size_mib):
            f.write(block)
    path.chmod(0o644)


def run(
    prefix: str = DEFAULT_PREFIX,
    plan: Plan = FULL,
    output: Path = Path(DEFAULT_OUTPUT),
    keep: bool = False,
    say: Say = quiet,
    daemon_config: Path | None = None,
    with_failover: bool = True,
) -> dict[str, float]:
    """Measure, print nothing; `say` gets progress lines. Returns the figures."""
    if with_failover:
        survive.check_free(prefix + "h")  # before minutes of measuring, not after
    topo = load()
    started = not backend.is_up(prefix, topo)
    if started:
        say(f"bench: building lab '{prefix}'")
        backend.up(prefix, "none", log=quiet)
    previous = state.gateway_mode(prefix, topo.router) or "none"
    # The router's ftp-alg daemon reads this file at each start (provision/router.sh).
    config_copy = state.node_dir(prefix, topo.router) / "ftp-alg.toml"
    if daemon_config is not None:
        config_copy.write_bytes(daemon_config.read_bytes())
    bench = Bench(prefix, topo, plan)
    name = f"bench-{plan.size_mib}mib.bin"
    served = state.node_dir(prefix, topo.outside_server) / "ftp" / name
    try:
        _make_file(served, plan.size_mib)
        with _no_syncookies(prefix, topo.outside_server):
            for rnd in range(plan.rounds):
                say(f"bench: round {rnd + 1}/{plan.rounds}")
                for gateway in GATEWAYS:
                    slot(bench, gateway, say)
            say(f"bench: interleaved, {plan.batches} batches")
            interleaved.measure(bench, name, say)
            idle(bench, say)
            survive.restart(bench, say)
    finally:
        served.unlink(missing_ok=True)
        if daemon_config is not None:
            config_copy.unlink(missing_ok=True)
        if started and not keep:
            backend.down(prefix, log=quiet)
        elif backend.is_up(prefix, topo):
            backend.set_gateway(prefix, previous, log=quiet)
    took = sorted(bench.switch_s)
    median, most = took[len(took) // 2], took[-1]
    say(f"bench: {len(took)} gateway switches: median {median:.2f} s, max {most:.2f} s")
    result = figures(bench.samples, plan)
    if with_failover:
        result.update(survive.failover(prefix + "h", plan, say))
    from alg.lab.bench import chart as benchchart  # matplotlib only once there is something to draw

    benchchart.draw(result, plan.parallel, output)
    return result


def command(
    prefix: str,
    quick: bool,
    rounds: int | None,
    output: Path,
    keep: bool,
    daemon_config: Path | None = None,
    with_failover: bool = True,
) -> int:
    """The `lab bench` action: figures on stdout, progress and the targets on stderr."""

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    plan = QUICK if quick else FULL
    if rounds is not None:
        if rounds < 1:
            raise ValueError("--rounds must be at least 1")
        plan = replace(plan, rounds=rounds)
    start = time.monotonic()
    result = run(prefix, plan, output, keep, say, daemon_config, with_failover)
    result["elapsed_s"] = time.monotonic() - start
    for name, value in result.items():
        print(f"{name} {show(value)}", flush=True)
    for t in TARGETS:
        if t.figure not in result:
            say(f"target {t.figure}: not measured")
            continue
        value = result[t.figure]
        verdict = "met" if t.met(value) else "MISSED"
        say(f"target {t.figure} {'<=' if t.upper else '>='} {t.limit:g}: {verdict} ({show(value)})")
    say(f"chart: {output}")
    return 0
