"""The bench's hold on one lab: which gateway the router runs, the ftp-alg daemon's CPU, RSS and
counters, and the probe run in the client namespace (alg/lab/probes/bench_probe.py). The
workloads (run.py, throughput.py, survive.py) go through it, so that the single-router lab and
the failover lab are driven alike."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alg.lab import backend, netns, state
from alg.lab.bench.figures import Plan, Samples
from alg.lab.topology import Topology

PROBE = Path(__file__).parents[1] / "probes" / "bench_probe.py"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
Say = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def running_pid(prefix: str, node: str, name: str, missing: str) -> int:
    """The PID of the lab's process `name` on `node`, recorded and alive; else LabError(missing)."""
    ns = netns.NETNS_DIR / backend.namespace(prefix, node)
    for p in state.processes(prefix, node, ns):
        if p.name == name and p.running:
            return p.pid
    raise backend.LabError(missing)


class Daemon:
    """The lab's running ftp-alg daemon: its PID and status socket."""

    def __init__(self, prefix: str, router: str) -> None:
        missing = "the ftp-alg gateway is on but its daemon is not running"
        self.pid = running_pid(prefix, router, "ftp-alg", missing)
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
class Bench:
    prefix: str
    topo: Topology
    plan: Plan
    samples: Samples = field(default_factory=Samples)
    daemon: Daemon | None = None
    gateway: str | None = None  # what the bench last switched the router to
    switch_s: list[float] = field(default_factory=list)  # how long each switch took

    @property
    def server(self) -> str:
        return self.topo.address(self.topo.outside_server).ipv4

    @property
    def port(self) -> int:
        return int(self.topo.ftp["vsftpd_port"])

    def argv(self, workload: str, *flags: str, cpu: int | None = None) -> list[str]:
        """The probe's command line, run inside the client namespace (on `cpu` alone if set)."""
        ns = backend.namespace(self.prefix, self.topo.client)
        probe = [sys.executable, str(PROBE), workload, self.server, "--port", str(self.port)]
        pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return netns.in_ns(ns, [*pinned, *probe, *flags])

    def probe(
        self, workload: str, *flags: str, timeout: float, cpu: int | None = None
    ) -> dict[str, Any]:
        try:
            done = netns.run(self.argv(workload, *flags, cpu=cpu), timeout=timeout)
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

    @contextlib.contextmanager
    def control_counted(self) -> Iterator[None]:
        """Count every packet of the FTP control connections (port 21) crossing mangle
        POSTROUTING during the block, where the queue rules sit: a rule with no target
        counts and lets the packet on to them. Added to `samples.control_packets`."""
        ns = backend.namespace(self.prefix, self.topo.router)
        ipt, chain, tag = ["iptables", "-w", "-t", "mangle"], "POSTROUTING", "ftp-alg-bench-count"
        match = ["-p", "tcp", "-m", "multiport", "--ports", str(self.port)]
        match += ["-m", "comment", "--comment", tag]
        netns.run(netns.in_ns(ns, [*ipt, "-I", chain, "1", *match]))
        try:
            yield
            listed = netns.run(netns.in_ns(ns, [*ipt, "-L", chain, "1", "-v", "-x", "-n"]))
            fields = listed.stdout.split()
            if tag not in listed.stdout or not fields[0].isdigit():
                raise backend.LabError(f"the bench's counting rule moved: {listed.stdout!r}")
            self.samples.control_packets += int(fields[0])
        finally:
            netns.run(netns.in_ns(ns, [*ipt, "-D", chain, *match]), check=False)

    def vsftpd(self) -> int:
        """The PID of the outside server's vsftpd (the listener that forks a process a session)."""
        missing = "the outside server's vsftpd is not running"
        return running_pid(self.prefix, self.topo.outside_server, "vsftpd", missing)

    def settle(self, most: float = 10.0) -> float:
        """Wait (at most `most` s) until the server's session processes of a storm have exited,
        so that their exits do not fall on what is measured next; returns the time waited."""
        pid, start = self.vsftpd(), time.monotonic()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        while children.read_text().strip() and time.monotonic() - start < most:
            time.sleep(0.05)
        return time.monotonic() - start

    @contextlib.contextmanager
    def one_core(self) -> Iterator[int]:
        """The server's vsftpd (and the session processes it forks) on one CPU during the block,
        which yields that CPU for the client: see interleaved.py for why."""
        pid, cpu = self.vsftpd(), min(os.sched_getaffinity(0))
        before = os.sched_getaffinity(pid)
        os.sched_setaffinity(pid, {cpu})
        try:
            yield cpu
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, before)

    def switch(self, gateway: str) -> None:
        start = time.monotonic()
        backend.set_gateway(self.prefix, gateway, log=quiet)
        self.switch_s.append(time.monotonic() - start)
        self.gateway = gateway
        self.daemon = Daemon(self.prefix, self.topo.router) if gateway == "ftp-alg" else None

    def held(self, workload: str, *flags: str) -> subprocess.Popen[str]:
        """A probe that reports on stdout and waits for a line on stdin between steps."""
        return subprocess.Popen(
            self.argv(workload, *flags),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def report(proc: subprocess.Popen[str], workload: str) -> str:
    """A held probe's next report; silent for 300 s or exited: its stderr says why."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        err = proc.communicate()[1]
        raise backend.LabError(f"bench probe {workload} failed: {err.strip()}")
    return line


def go_on(proc: subprocess.Popen[str]) -> None:
    """Tell a held probe to take its next step."""
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
