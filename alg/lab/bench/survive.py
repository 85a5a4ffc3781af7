"""Sessions in progress across the loss of what carried them: the `restart_` and `failover_`
figures of `ftp-alg lab bench`.

Every session held (the probe's `survive` workload) has made an active LIST whose PORT was
rewritten one byte shorter (192,168,77,10 -> 198,51,100,1), so its control connection now
needs the seqadj offsets in conntrack: a session survives if its next active LIST and a NOOP
complete. After the loss the probe tries every session at once, each with its own timeout, so
that sessions which stall cost one timeout in all, not one each.

restart   the single-router lab: SIGKILL of the daemon, then a new one (the kernel kept the
          offsets: all survive)
failover  the failover lab (topology-ha.json, as `ftp-alg lab up --ha`), built under its own
          prefix, once with ftp-alg and once with the kernel helper: the sessions run through
          the active router, `lab failover` crashes it and the standby takes over with
          conntrackd's copy of the table. ftp-alg's offsets travel with it (a ctnetlink update
          raises the event conntrackd replicates); the kernel helper's never leave the dead
          router (nf_ct_seqadj_set raises no event), so those sessions stall
          (tests/lab/test_ha.py shows both on one session).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from alg.lab import backend
from alg.lab.bench.figures import Plan
from alg.lab.bench.lab import Bench, Daemon, Say, go_on, quiet, report
from alg.lab.topology import HA_PATH, load

# A stalled session never recovers (its bytes are numbered wrongly for good): after the
# failover, this long without an answer counts it as lost.
FAILOVER_TIMEOUT_S = 5.0


def _held(bench: Bench, count: int, lose: Callable[[], None], timeout: float) -> dict[str, Any]:
    """Open `count` sessions, run `lose`, try them all again: the probe's report (sessions,
    survived, first_error)."""
    proc = bench.held("survive", "--count", str(count), "--after-timeout", str(timeout))
    try:
        report(proc, "survive")
        lose()
        go_on(proc)
        out, err = proc.communicate(timeout=timeout + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out.strip():
        raise backend.LabError(f"bench probe survive failed: {err.strip()}")
    got: dict[str, Any] = json.loads(out.splitlines()[-1])
    return got


def restart(bench: Bench, say: Say) -> None:
    """The fraction whose next active transfer completes after SIGKILL + start of the daemon."""
    bench.switch("ftp-alg")

    def kill_and_start() -> None:
        assert bench.daemon is not None
        os.kill(bench.daemon.pid, 9)
        backend.daemon(bench.prefix, "start", log=quiet)
        bench.daemon = Daemon(bench.prefix, bench.topo.router)

    got = _held(bench, bench.plan.survive, kill_and_start, 10.0)
    sessions, survived = got["sessions"], got["survived"]
    bench.samples.idle["restart_sessions"] = sessions
    bench.samples.idle["restart_sessions_survived"] = survived / max(1, sessions)
    say(f"  restart: {survived}/{sessions} sessions went on after SIGKILL + start{_why(got)}")


def check_free(prefix: str) -> None:
    """The failover lab's prefix must be free: the bench builds and removes that lab."""
    if backend.is_up(prefix, load(HA_PATH)):
        raise backend.LabError(
            f"lab '{prefix}' is up: the bench builds its failover lab under that prefix "
            f"(`ftp-alg lab down --prefix {prefix}` first)"
        )


def failover(prefix: str, plan: Plan, say: Say) -> dict[str, float]:
    """The failover figures (none without conntrackd, which the failover lab needs)."""
    if shutil.which("conntrackd") is None:
        say("bench: no conntrackd, so no failover lab: the failover figures are not measured")
        return {}
    topo = load(HA_PATH)
    check_free(prefix)
    out: dict[str, float] = {}
    for gateway in ("ftp-alg", "kernel"):
        say(f"bench: failover lab '{prefix}' with {gateway}")
        got, takeover = _across_failover(Bench(prefix, topo, plan), gateway)
        sessions, survived = got["sessions"], got["survived"]
        suffix = "" if gateway == "ftp-alg" else f".{gateway}"
        out[f"failover_sessions{suffix}"] = sessions
        out[f"failover_sessions_survived{suffix}"] = survived / max(1, sessions)
        out[f"failover_takeover_s{suffix}"] = takeover
        say(
            f"  failover ({gateway}): {survived}/{sessions} sessions went on through the "
            f"standby (takeover {takeover:.2f} s){_why(got)}"
        )
    return out


def _across_failover(bench: Bench, gateway: str) -> tuple[dict[str, Any], float]:
    """Build the failover lab with `gateway`, hold sessions across a failover, take it down:
    the probe's report and the takeover's seconds."""
    took: list[float] = []

    def crash() -> None:
        time.sleep(0.5)  # conntrackd replicates on the events: let the last one arrive
        took.append(backend.failover(bench.prefix, log=quiet).total_s)

    backend.up(bench.prefix, gateway, with_ha=True, log=quiet)
    try:
        bench.gateway = gateway
        got = _held(bench, bench.plan.survive, crash, FAILOVER_TIMEOUT_S)
    finally:
        backend.down(bench.prefix, log=quiet)
    return got, took[0]


def _why(got: dict[str, Any]) -> str:
    return f"; first failure: {got['first_error']}" if got.get("first_error") else ""
