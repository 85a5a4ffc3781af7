"""The throughput phase of `ftp-alg lab bench`, after the rounds: RETRs of one file, timed at
the client from the PORT or PASV to the 226.

On the project's 2-core VM, with other work on it, single transfers scatter by about 30 %
both ways and the load of the rest of the machine drifts over seconds. Hence:

- Interleaved finely: `batches` short batches (`transfers` RETRs per mode each), the gateways
  visited in serpentine order (ftp-alg, none, kernel, kernel, none, ftp-alg, ...): a drift
  that is linear over two batches falls on each gateway alike, and plain NAT's and ftp-alg's
  batches, the pair `throughput_ratio` compares, are always neighbours. The order also keeps
  the switches few: the gateway at either end of a batch stays on into the next one, so each
  batch costs one switch to or from ftp-alg (2-3 s: the daemon's start or stop) and one
  between plain NAT and the kernel helper (0.1-1 s).
- Like with like: data connections never enter ftp-alg's queue, so `throughput_ratio` is
  ftp-alg's passive transfer over plain NAT's passive one, the same stream over the same NAT
  path; the active mode, which plain NAT cannot carry, is compared with the kernel helper's
  (`throughput_ratio_vs_kernel`).
- Medians of every transfer of a gateway and mode over all batches (256 MiB, 2 per batch, 6
  batches: 12 a gateway and mode). Smaller transfers scattered more, not less (64 MiB x 8:
  the ratio's standard deviation 0.09 over 3 runs against 0.04 over 7), and carry more of the
  control exchanges' latency.

Measured on the 2-core VM under other helpers' load (load average 1-13), 2026-12-02:
`throughput_ratio` of three full benches 0.61, 0.93, 0.99 before (ftp-alg's worse mode
against plain NAT's passive, measured inside each round's slot, after the session storms of
the slot before) and 1.00, 1.04, 1.04 after. The throughput part alone, 7 runs each: passive
over passive 0.97-1.08 (sd 0.04) in batches against 1.02-1.19 (sd 0.06) slot by slot; the
old worse-mode ratio scatters alike either way (sd 0.05: the active transfers'
own noise). Switches took 0.9-1.5 s (median) and up to 4 s.
"""

from __future__ import annotations

from alg.lab import backend
from alg.lab.bench.figures import MODES, applies
from alg.lab.bench.lab import Bench, Say

ORDER = ("ftp-alg", "none", "kernel")  # ftp-alg at an end: one daemon start or stop a batch


def measure(bench: Bench, path: str, say: Say) -> None:
    """Every batch, every gateway in serpentine order from the one the router runs now."""
    order = ORDER if bench.gateway != ORDER[-1] else tuple(reversed(ORDER))
    plan = bench.plan
    for batch in range(plan.batches):
        shown = []
        for gateway in order if batch % 2 == 0 else tuple(reversed(order)):
            if bench.gateway != gateway:
                bench.switch(gateway)
            with bench.metered("throughput"):
                for mode in (m for m in MODES if applies(gateway, m)):
                    speeds = _retr(bench, path, mode)
                    bench.samples.throughput.setdefault((mode, gateway), []).extend(speeds)
                    shown.append(f"{gateway} {mode[0]} {'/'.join(str(round(s)) for s in speeds)}")
        say(f"  throughput batch {batch + 1}/{plan.batches} (MB/s): {', '.join(shown)}")


def _retr(bench: Bench, path: str, mode: str) -> list[float]:
    plan = bench.plan
    flags = ["--path", path, "--count", str(plan.transfers)]
    if mode == "passive":
        flags.append("--passive")
    runs = bench.probe("retr", *flags, timeout=120 * plan.transfers)["runs"]
    for run in runs:
        if run["bytes"] != plan.size_mib << 20:
            raise backend.LabError(f"RETR {path} ({mode}) gave {run['bytes']} bytes")
    return [float(run["mb_s"]) for run in runs]
