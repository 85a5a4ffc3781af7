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
  throughput          a large RETR (3 times) in active and passive mode, timed at the client
With ftp-alg, the daemon's CPU time (utime + stime from /proc/PID/stat) is read around each
workload and divided by the packets it was queued (its `packets` counter). At the end, on a
fresh daemon, logged-in sessions are held open idle: the growth of its RSS (VmRSS) per session.

Plain NAT cannot carry an active-mode session (vsftpd refuses the private PORT address), so
`none` has passive figures only. Figures are printed one per line as `name value`; the names:

  rtt_p50_us.GW, rtt_p99_us.GW        round trip of NOOP/200, pooled over the rounds
  added_rtt_p50_us, added_rtt_p99_us  ftp-alg minus the kernel helper
  session_rate.MODE.N.GW              sessions/s with N at once (median over the rounds)
  session_errors.GW                   failed sessions (all modes and N)
  session_rate_ratio                  ftp-alg / kernel helper with 8 at once, worse mode
  session_rate_ratio.MODE.N           the same per mode and N
  throughput_mb_s.MODE.GW             MB/s (10^6 bytes) of the RETR, median of all transfers
  throughput_best_mb_s.MODE.GW        the fastest of them
  throughput_ratio                    ftp-alg / plain NAT, worse mode; the reference is plain
                                      NAT's passive transfer (the same server-to-client stream
                                      through the same NAT; plain NAT has no active mode)
  throughput_ratio_vs_kernel          ftp-alg / kernel helper, worse mode
  daemon_packets                      packets the daemon was queued during the workloads
  queued_packets_per_session          of them, per complete session of the session workload
  daemon_cpu_us_per_session           the daemon's CPU time per complete session
  daemon_cpu_us_per_packet            its CPU time per queued packet; .user and .system
                                      split it, .rtt and .sessions per workload. System time
                                      includes forwarding the packet on: the kernel does that
                                      inside the verdict call
  idle_sessions[_tracked]             idle sessions held (and tracked by the daemon)
  idle_session_bytes                  daemon RSS growth per idle logged-in session
  idle_rss_before_bytes, ..._after_   its RSS around them
  restart_sessions_survived           sessions in progress (a PORT rewritten in each) whose
                                      next LIST works after SIGKILL + start of the daemon
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
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from alg.lab import backend, netns, state
from alg.lab.bench.figures import (
    FULL,
    GATEWAYS,
    MODES,
    QUICK,
    TARGETS,
    Plan,
    Samples,
    applies,
    figures,
    show,
)
from alg.lab.topology import Topology, load

PROBE = Path(__file__).parents[1] / "probes" / "bench_probe.py"
DEFAULT_PREFIX = "bench"
DEFAULT_OUTPUT = "lab-bench.png"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class _Daemon:
    """The lab's running ftp-alg daemon: its PID and status socket."""

    def __init__(self, prefix: str, router: str) -> None:
        found = [
            p
            for p in state.processes(
                prefix, router, netns.NETNS_DIR / backend.namespace(prefix, router)
            )
            if p.name == "ftp-alg" and p.running
        ]
        if not found:
            raise backend.LabError("the ftp-alg gateway is on but its daemon is not running")
        self.pid = found[0].pid
        self.socket = str(state.node_dir(prefix, router) / "ftp-alg-status.sock")

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU time so far (utime, stime of /proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise backend.LabError(f"no VmRSS for pid {self.pid}")

    def status(self) -> dict[str, Any]:
        from alg.daemon.status import query

        return query(self.socket)

    def packets(self) -> int:
        return int(self.status()["counters"].get("packets", 0))


@dataclass
class _Bench:
    prefix: str
    topo: Topology
    plan: Plan
    samples: Samples = field(default_factory=Samples)
    daemon: _Daemon | None = None

    @property
    def server(self) -> str:
        return self.topo.address(self.topo.outside_server).ipv4

    @property
    def port(self) -> int:
        return int(self.topo.ftp["vsftpd_port"])

    def argv(self, workload: str, *flags: str) -> list[str]:
        """The probe's command line, run inside the client namespace."""
        ns = backend.namespace(self.prefix, self.topo.client)
        probe = [sys.executable, str(PROBE), workload, self.server, "--port", str(self.port)]
        return netns.in_ns(ns, [*probe, *flags])

    def probe(self, workload: str, *flags: str, timeout: float) -> dict[str, Any]:
        try:
            done = netns.run(self.argv(workload, *flags), timeout=timeout)
        except netns.CommandError as exc:
            raise backend.LabError(f"bench probe {workload} failed: {exc}") from exc
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    @contextlib.contextmanager
    def metered(self, workload: str) -> Iterator[None]:
        """Charge the daemon's CPU time and queued packets during the block to `workload`."""
        if self.daemon is None:
            yield
            return
        (user, system), packets = self.daemon.cpu_seconds(), self.daemon.packets()
        yield
        user2, system2 = self.daemon.cpu_seconds()
        acc = self.samples.cpu.setdefault(workload, [0.0, 0.0, 0.0])
        acc[0] += user2 - user
        acc[1] += system2 - system
        acc[2] += self.daemon.packets() - packets

    def switch(self, gateway: str) -> None:
        backend.set_gateway(self.prefix, gateway, log=lambda _: None)
        self.daemon = _Daemon(self.prefix, self.topo.router) if gateway == "ftp-alg" else None

    def slot(self, gateway: str, path: str, say: Any) -> None:
        """Every workload once, with `gateway` on the router; the session storm comes last,
        so that its aftermath (exiting server processes, closing connections) falls on the
        next gateway's switch rather than on this one's transfers."""
        self.switch(gateway)
        s, plan = self.samples, self.plan
        with self.metered("rtt"):
            got = self.probe("rtt", "--count", str(plan.noops), timeout=plan.noops * 0.05 + 30)
        s.rtt.setdefault(gateway, []).extend(got["samples_us"])
        tput = []
        with self.metered("throughput"):
            for mode in (m for m in MODES if applies(gateway, m)):
                flags = ["--path", path, "--count", str(plan.transfers)]
                if mode == "passive":
                    flags.append("--passive")
                runs = self.probe("retr", *flags, timeout=120 * plan.transfers)["runs"]
                for run in runs:
                    if run["bytes"] != plan.size_mib << 20:
                        raise backend.LabError(f"RETR {path} ({mode}) gave {run['bytes']} bytes")
                    s.throughput.setdefault((mode, gateway), []).append(run["mb_s"])
                tput.append(f"{mode} {'/'.join(str(round(r['mb_s'])) for r in runs)} MB/s")
        rates = []
        with self.metered("sessions"):
            for mode in (m for m in MODES if applies(gateway, m)):
                for n in plan.parallel:
                    flags = ["--parallel", str(n), "--seconds", str(plan.seconds)]
                    if mode == "passive":
                        flags.append("--passive")
                    got = self.probe("sessions", *flags, timeout=plan.seconds + 120)
                    s.rate.setdefault((mode, n, gateway), []).append(got["rate"])
                    s.sessions_done[gateway] = s.sessions_done.get(gateway, 0) + got["sessions"]
                    s.errors[gateway] = s.errors.get(gateway, 0) + got["errors"]
                    rates.append(f"{mode[0]}{n}={got['rate']:.0f}")
                    if got["errors"]:
                        rates.append(f"({got['errors']} failed: {got['first_error']})")
        rtt = sorted(s.rtt[gateway][-plan.noops :])
        say(
            f"  {gateway}: rtt p50 {rtt[len(rtt) // 2]:.0f} us; sessions/s {' '.join(rates)}; "
            f"{', '.join(tput)}"
        )

    def held(self, workload: str, *flags: str) -> subprocess.Popen[str]:
        """A probe that reports on stdout and waits for a line on stdin between steps."""
        return subprocess.Popen(
            self.argv(workload, *flags),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def idle(self, say: Any) -> None:
        """RSS growth of a fresh daemon per idle logged-in session."""
        self.switch("ftp-alg")
        assert self.daemon is not None
        plan, daemon = self.plan, self.daemon
        count = str(plan.idle_warm + plan.idle)
        proc = self.held("idle", "--count", count, "--step", str(plan.idle_warm))
        assert proc.stdin is not None
        try:
            readings = []
            for _ in range(2):
                line = _line(proc, "idle")
                time.sleep(0.5)  # let the daemon's last verdicts and any sweep pass
                readings.append(
                    (json.loads(line)["open"], daemon.rss_bytes(), daemon.status()["sessions"])
                )
                proc.stdin.write("\n")
                proc.stdin.flush()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        (n0, rss0, tracked0), (n1, rss1, tracked1) = readings
        self.samples.idle = {
            "idle_sessions": n1 - n0,
            "idle_sessions_tracked": tracked1 - tracked0,
            "idle_rss_before_bytes": rss0,
            "idle_rss_after_bytes": rss1,
            "idle_session_bytes": (rss1 - rss0) / max(1, n1 - n0),
        }
        say(f"  idle: {n1 - n0} sessions, RSS {rss0 >> 10} -> {rss1 >> 10} KiB")


def _line(proc: subprocess.Popen[str], workload: str) -> str:
    """The probe's next report; silent for 300 s or exited: its stderr says why."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        err = proc.communicate()[1]
        raise backend.LabError(f"bench probe {workload} failed: {err.strip()}")
    return line


def _restart(bench: _Bench, say: Any) -> None:
    """Sessions in progress across a SIGKILL and start of the daemon: the fraction whose
    next active transfer completes (the kernel holds their offsets)."""
    bench.switch("ftp-alg")
    assert bench.daemon is not None
    proc = bench.held("survive", "--count", str(bench.plan.survive))
    assert proc.stdin is not None
    try:
        _line(proc, "survive")
        os.kill(bench.daemon.pid, 9)
        backend.daemon(bench.prefix, "start", log=lambda _: None)
        bench.daemon = _Daemon(bench.prefix, bench.topo.router)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = json.loads(out.splitlines()[-1])
    fraction = got["survived"] / max(1, got["sessions"])
    bench.samples.idle["restart_sessions"] = got["sessions"]
    bench.samples.idle["restart_sessions_survived"] = fraction
    say(f"  restart: {got['survived']}/{got['sessions']} sessions went on after SIGKILL + start")


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
    say: Any = None,
    daemon_config: Path | None = None,
) -> dict[str, float]:
    """Measure, print nothing; `say` gets progress lines. Returns the figures."""

    def quiet(_: str) -> None:
        pass

    say = say or quiet
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
    bench = _Bench(prefix, topo, plan)
    name = f"bench-{plan.size_mib}mib.bin"
    served = state.node_dir(prefix, topo.outside_server) / "ftp" / name
    try:
        _make_file(served, plan.size_mib)
        with _no_syncookies(prefix, topo.outside_server):
            for rnd in range(plan.rounds):
                say(f"bench: round {rnd + 1}/{plan.rounds}")
                for gateway in GATEWAYS:
                    bench.slot(gateway, name, say)
            bench.idle(say)
            _restart(bench, say)
    finally:
        served.unlink(missing_ok=True)
        if daemon_config is not None:
            config_copy.unlink(missing_ok=True)
        if started and not keep:
            backend.down(prefix, log=quiet)
        elif backend.is_up(prefix, topo):
            backend.set_gateway(prefix, previous, log=quiet)
    result = figures(bench.samples, plan)
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
    result = run(prefix, plan, output, keep, say, daemon_config)
    result["elapsed_s"] = time.monotonic() - start
    for name, value in result.items():
        print(f"{name} {show(value)}", flush=True)
    for t in TARGETS:
        value = result[t.figure]
        verdict = "met" if t.met(value) else "MISSED"
        say(f"target {t.figure} {'<=' if t.upper else '>='} {t.limit:g}: {verdict} ({show(value)})")
    say(f"chart: {output}")
    return 0
