"""The chart of `ftp-alg lab bench` (matplotlib, Agg).

Four panels: the control round trip per gateway, the session rates, the throughput, and each
target as the share of its budget used (a bar left of the line at 1 meets its target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alg.lab.bench.figures import GATEWAYS, TARGETS

COLORS = {"none": "#9e9e9e", "kernel": "#1f77b4", "ftp-alg": "#ff7f0e"}


def _bars(ax: Any, groups: Sequence[str], values: dict[str, list[float]]) -> None:
    """Grouped bars: one group per label, one bar per gateway (NaN: not applicable)."""
    width = 0.8 / len(values)
    for i, (gw, vals) in enumerate(values.items()):
        xs = [g + (i - (len(values) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, vals, width, label=gw, color=COLORS.get(gw))
        for bar, v in zip(bars, vals, strict=True):
            if math.isfinite(v):
                ax.annotate(
                    f"{v:.0f}",
                    (bar.get_x() + bar.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.legend(fontsize=8)


def draw(fig: dict[str, float], parallel: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nan = math.nan
    figure, ((rtt, rate), (tput, targets)) = plt.subplots(2, 2, figsize=(13, 9))
    figure.suptitle(
        f"ftp-alg lab bench: ftp-alg vs kernel helper vs plain NAT ({int(fig['rounds'])} "
        f"interleaved rounds; daemon {fig['daemon_cpu_us_per_packet']:.1f} us CPU/packet)"
    )
    _bars(
        rtt,
        ["p50", "p99"],
        {gw: [fig[f"rtt_p50_us.{gw}"], fig[f"rtt_p99_us.{gw}"]] for gw in GATEWAYS},
    )
    rtt.set_title("control round trip NOOP/200 (us, lower is better)")
    groups = [(m, n) for m in ("active", "passive") for n in parallel]
    _bars(
        rate,
        [f"{m} x{n}" for m, n in groups],
        {gw: [fig.get(f"session_rate.{m}.{n}.{gw}", nan) for m, n in groups] for gw in GATEWAYS},
    )
    rate.set_title("complete sessions/s (LIST), N at once (higher is better)")
    _bars(
        tput,
        ["active", "passive"],
        {
            gw: [fig.get(f"throughput_mb_s.{m}.{gw}", nan) for m in ("active", "passive")]
            for gw in GATEWAYS
        },
    )
    tput.set_title("RETR throughput, MB/s (higher is better; plain NAT: no active mode)")
    measured = [t for t in TARGETS if t.figure in fig]  # the failover lab may be skipped
    used = [t.used(fig[t.figure]) for t in measured]
    shown = [min(u, 3.0) for u in used]
    colors = ["#2ca02c" if t.met(fig[t.figure]) else "#d62728" for t in measured]
    targets.barh(range(len(measured)), shown, color=colors)
    for i, t in enumerate(measured):
        op = "<=" if t.upper else ">="
        targets.annotate(
            f" {fig[t.figure]:.4g} ({op} {t.limit:g})", (shown[i], i), va="center", fontsize=8
        )
    targets.axvline(1.0, color="black", linewidth=1)
    targets.set_yticks(range(len(measured)), [t.label for t in measured])
    targets.invert_yaxis()
    targets.set_xlim(0, max(1.6, max(shown) * 1.45))
    targets.set_title("targets: share of the budget used (left of 1 = met)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
