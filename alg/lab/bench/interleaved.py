"""The interleaved phase of `ftp-alg lab bench`, after the rounds: the figures that compare
gateways by a ratio (`session_rate_ratio`, `throughput_ratio`), measured in short batches whose
ratios are taken batch by batch.

On the project's 2-core VM, with other work on it, the load of the rest of the machine drifts
over seconds: the same configuration gave 387 and 640 passive sessions a second in two runs a
minute apart, and single transfers scatter by about 30 % both ways. A ratio of two medians
taken minutes apart (the rounds' slots) then measures the drift as much as the gateways.
Hence:

- Batches, each visiting every gateway in serpentine order with ftp-alg in the middle (none,
  ftp-alg, kernel, kernel, ftp-alg, none, ...): ftp-alg's visit is a neighbour of both visits
  it is compared with, and a drift that is linear over a batch falls on both sides alike.
- Paired: each figure is the median over the batches of that batch's ratio (ftp-alg's sessions
  a second over the kernel helper's, 8 at once; ftp-alg's median transfer over plain NAT's),
  so a slow minute lowers both sides of one ratio instead of one side of the whole figure.
- A visit runs its session storms first and its transfers after them, once the server's
  session processes of the storms have exited (`Bench.settle`).
- Like with like: data connections never enter ftp-alg's queue, so `throughput_ratio` is
  ftp-alg's passive transfer over plain NAT's passive one, the same stream over the same NAT
  path; the active mode, which plain NAT cannot carry, is compared with the kernel helper's
  (`throughput_ratio_vs_kernel`).
- The transfers run on one CPU: the client pinned to it, the server's vsftpd (whose session
  processes inherit it) too. The router's forwarding of a segment runs in the softirq of the
  CPU that sent it, so the whole path, the gateway's rules included, is on that CPU, and a
  transfer measures that path's cost per byte instead of where the scheduler happened to put
  the two ends. Measured (plain NAT, 12 transfers of 256 MiB): unpinned 1 580-1 790 MB/s
  median with a coefficient of variation of 0.10-0.24 per transfer; both ends on one CPU
  1 245-1 295 MB/s with 0.05-0.10; the client alone pinned 0.16-0.24.
- 256 MiB a transfer, 4 a visit and mode (0.1-0.5 s each): smaller transfers scattered more,
  not less (64 MiB x 8: the ratio's standard deviation 0.09 over 3 runs against 0.04 over 7),
  and carry more of the control exchanges' latency.

Measured on the 2-core VM, 2026-12-03: in the slots of three rounds, the kernel helper's active
sessions with 8 at once ran at 349, 366 and 348 a second and ftp-alg's at 295, 274 and 273 in
the same bench, whose 10 batches ran both between 190 and 397: the rounds' ratio of medians
0.785, the batches' median ratio 0.865. Single 256 MiB transfers ran at 559-3604 MB/s.
"""

from __future__ import annotations

from alg.lab import backend
from alg.lab.bench.figures import MODES, applies
from alg.lab.bench.lab import Bench, Say

ORDER = ("none", "ftp-alg", "kernel")  # ftp-alg in the middle: next to both it is compared with
PARALLEL = 8  # sessions at once for the paired session rate (the target's)


def measure(bench: Bench, path: str, say: Say) -> None:
    """Every batch, every gateway in serpentine order from the end the router is nearer."""
    order = ORDER if bench.gateway != ORDER[-1] else tuple(reversed(ORDER))
    plan = bench.plan
    for batch in range(plan.batches):
        shown, waited = [], []
        for gateway in order if batch % 2 == 0 else tuple(reversed(order)):
            if bench.gateway != gateway:
                bench.switch(gateway)
            modes = [m for m in MODES if applies(gateway, m)]
            with bench.metered("interleaved"):
                for mode in modes:
                    rate = _sessions(bench, mode)
                    bench.samples.paired_rate.setdefault((mode, gateway), []).append(rate)
                    shown.append(f"{gateway} {mode[0]}{PARALLEL}={rate:.0f}/s")
                waited.append(bench.settle())
                for mode in modes:
                    with bench.one_core() as cpu:
                        speeds = _retr(bench, path, mode, cpu)
                    bench.samples.throughput.setdefault((mode, gateway), []).append(speeds)
                    mb_s = "/".join(str(round(s)) for s in speeds)
                    shown.append(f"{gateway} {mode[0]} {mb_s} MB/s")
        settled = f"storms settled in {max(waited):.1f} s at most"
        say(f"  batch {batch + 1}/{plan.batches}: {', '.join(shown)}; {settled}")


def _sessions(bench: Bench, mode: str) -> float:
    plan = bench.plan
    flags = ["--parallel", str(PARALLEL), "--seconds", str(plan.pair_seconds)]
    if mode == "passive":
        flags.append("--passive")
    got = bench.probe("sessions", *flags, timeout=plan.pair_seconds + 120)
    gateway = bench.gateway or "none"
    bench.samples.errors[gateway] = bench.samples.errors.get(gateway, 0) + got["errors"]
    return float(got["rate"])


def _retr(bench: Bench, path: str, mode: str, cpu: int) -> list[float]:
    plan = bench.plan
    flags = ["--path", path, "--count", str(plan.transfers)]
    if mode == "passive":
        flags.append("--passive")
    runs = bench.probe("retr", *flags, timeout=120 * plan.transfers, cpu=cpu)["runs"]
    for run in runs:
        if run["bytes"] != plan.size_mib << 20:
            raise backend.LabError(f"RETR {path} ({mode}) gave {run['bytes']} bytes")
    return [float(run["mb_s"]) for run in runs]
