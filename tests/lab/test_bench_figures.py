"""How `ftp-alg lab bench` reduces its samples to the ratios the targets read (no lab needed):
the ratios are paired batch by batch, so a drift of the machine's load between batches does
not move them, while a real difference between the gateways does."""

from __future__ import annotations

import math

import pytest

from alg.lab.bench.figures import GATEWAYS, MODES, QUICK, Samples, applies, figures, paired


def _samples(rate: dict[str, list[float]], speed: dict[str, list[float]]) -> Samples:
    """Samples whose every (mode, gateway) has the given per-batch session rate and, per batch,
    two transfers at the given speed (plus and minus 1 %)."""
    s = Samples()
    for gw in GATEWAYS:
        s.rtt[gw] = [100.0, 200.0]
        for mode in MODES:
            if not applies(gw, mode):
                continue
            for n in QUICK.parallel:
                s.rate[(mode, n, gw)] = [rate[gw][0]]
            s.paired_rate[(mode, gw)] = list(rate[gw])
            s.throughput[(mode, gw)] = [[v * 0.99, v * 1.01] for v in speed[gw]]
    return s


def test_a_drift_between_batches_does_not_move_the_ratios() -> None:
    # The machine halves in speed from batch to batch; within a batch ftp-alg does 0.9 of the
    # kernel helper's sessions and 0.98 of plain NAT's throughput.
    slow = [1.0, 0.5, 0.25, 0.5, 1.0]
    rate = {"kernel": [400 * k for k in slow], "none": [500 * k for k in slow]}
    rate["ftp-alg"] = [0.9 * r for r in rate["kernel"]]
    speed = {"none": [2000 * k for k in slow], "kernel": [1900 * k for k in slow]}
    speed["ftp-alg"] = [0.98 * v for v in speed["none"]]
    f = figures(_samples(rate, speed), QUICK)
    assert f["session_rate_ratio"] == pytest.approx(0.9)
    assert f["session_rate_ratio.active"] == pytest.approx(0.9)
    assert f["throughput_ratio"] == pytest.approx(0.98)
    assert f["throughput_ratio_vs_kernel.passive"] == pytest.approx(0.98 * 2000 / 1900)
    assert f["session_rate_paired.active.kernel"] == 200
    assert f["throughput_mb_s.passive.none"] == pytest.approx(1000, rel=0.02)
    assert f["batches"] == 5


def test_one_side_slowed_in_one_batch_of_a_drifting_machine_is_outvoted() -> None:
    # A ratio of the two sides' medians would take ftp-alg's from a slow batch and the kernel
    # helper's from a fast one: 190 / 400, 0.475 (and 1000 / 2000 for the throughput).
    slow = [1.0, 0.5, 0.5, 1.0, 1.0]
    rate = {"kernel": [400 * k for k in slow], "none": [500 * k for k in slow]}
    rate["ftp-alg"] = [380 * k for k in slow[:4]] + [50.0]
    speed = {"none": [2000 * k for k in slow], "kernel": [2000 * k for k in slow]}
    speed["ftp-alg"] = [2000 * k for k in slow[:4]] + [300.0]
    f = figures(_samples(rate, speed), QUICK)
    assert f["session_rate_ratio"] == pytest.approx(0.95)
    assert f["throughput_ratio"] == pytest.approx(1.0)


def test_a_real_difference_shows_in_the_worse_mode() -> None:
    rate = {"kernel": [400.0] * 3, "none": [500.0] * 3, "ftp-alg": [200.0] * 3}
    speed = {gw: [2000.0] * 3 for gw in GATEWAYS}
    s = _samples(rate, speed)
    s.paired_rate[("passive", "ftp-alg")] = [400.0] * 3
    f = figures(s, QUICK)
    assert f["session_rate_ratio.passive"] == pytest.approx(1.0)
    assert f["session_rate_ratio"] == f["session_rate_ratio.active"] == pytest.approx(0.5)


def test_unpaired_batches_are_an_error() -> None:
    with pytest.raises(ValueError, match="unpaired"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="unpaired"):
        paired([], [])
    assert math.isnan(paired([1.0], [0.0]))
