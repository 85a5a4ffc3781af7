"""Prometheus metrics: `/metrics` over HTTP, served from the daemon's status snapshot.

The packet loop stays single-threaded and cheap: it hands over its status dict (the same one
`ftp-alg status` prints) at most once a second and times each packet into a histogram of its
own (a bisect and two additions; prometheus_client's Histogram, with its lock and its loop
over the buckets, cost about 4 us a packet, a twentieth of the daemon's CPU per session). The
HTTP server runs in prometheus_client's own thread and, at scrape time, turns the latest
snapshot into metrics. Every counter the core and the daemon keep is exported without a list
to maintain here: `refusal.bounce` becomes `ftp_alg_refusals_total{reason="bounce"}`,
`rewrite.port` `ftp_alg_rewrites_total{kind="port"}`, anything else is sanitised
(`held.out-of-order` -> `ftp_alg_held_out_of_order_total`). Queue drops are read from
/proc/net/netfilter/nfnetlink_queue, which the kernel keeps per network namespace, at scrape
time, so they are right even while the loop is stuck.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from alg.daemon.settings import parse_listen

PREFIX = "ftp_alg_"
NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")
# Counter families whose members become one metric with a label: (metric name, label).
# The bare family counter (`refusal`) is their sum and is left out, so that sum() over the
# labelled series is not doubled; a remainder (members not counted) gets the label "other",
# and a family counted without members is exported unlabelled.
FAMILIES = {
    "refusal": ("refusals", "reason"),
    "rewrite": ("rewrites", "kind"),
}
# Gauges read from the status dict: key -> (metric name, help).
GAUGES = {
    "sessions": ("sessions", "control connections watched now"),
    "held": ("held_packets", "segments held back now, waiting for the rest of a line"),
    "expectations": ("expectations", "conntrack expectations the kernel holds now"),
    "uptime": ("uptime_seconds", "seconds since the daemon started"),
}
# Buckets for the per-packet time: a rewrite with ctnetlink round trips takes ~0.3-0.7 ms.
BUCKETS = (2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)
_UNSAFE = re.compile(r"[^a-zA-Z0-9_]+")


def metric_name(counter: str) -> str:
    """`held.out-of-order` -> `held_out_of_order` (a valid Prometheus name, no prefix)."""
    name = _UNSAFE.sub("_", counter).strip("_").lower()
    return name if name and not name[0].isdigit() else f"n_{name}"


def counter_metrics(counters: Mapping[str, float]) -> list[Metric]:
    """Prometheus counters for the status dict's `counters`, families as labels."""
    labelled: dict[str, CounterMetricFamily] = {}
    plain: list[Metric] = []
    member_sums: dict[str, float] = {}
    for name, value in sorted(counters.items()):
        family, dot, member = name.partition(".")
        if family in FAMILIES and dot:
            metric, label = FAMILIES[family]
            if metric not in labelled:
                labelled[metric] = CounterMetricFamily(
                    PREFIX + metric, f"{family} counters by {label}", labels=[label]
                )
            labelled[metric].add_metric([member], value)
            member_sums[family] = member_sums.get(family, 0) + value
        elif family not in FAMILIES:
            plain.append(CounterMetricFamily(PREFIX + metric_name(name), f"counter {name}", value))
    for family, (metric, _label) in FAMILIES.items():
        total = counters.get(family)
        if total is None:
            continue
        if metric not in labelled:  # no member counted: the family total, unlabelled
            plain.append(CounterMetricFamily(PREFIX + metric, f"{family} counter", total))
        elif total > member_sums[family]:
            labelled[metric].add_metric(["other"], total - member_sums[family])
    return [*labelled.values(), *plain]


def queue_stats(text: str, queues: range) -> dict[int, tuple[int, int, int]]:
    """(queue_total, queue_dropped, user_dropped) per queue of `queues` listed in the text of
    /proc/net/netfilter/nfnetlink_queue (fields: number, peer portid, queue_total, copy mode,
    copy range, queue_dropped, user_dropped, id sequence, 1)."""
    found: dict[int, tuple[int, int, int]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or not all(f.isdigit() for f in fields[:7]):
            continue
        num = int(fields[0])
        if num in queues:
            found[num] = (int(fields[2]), int(fields[5]), int(fields[6]))
    return found


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it: "+Inf", "5e-05", "0.0005", "1.0"."""
    return "+Inf" if value == float("inf") else repr(float(value))


class PacketTimes:
    """The per-packet time histogram, kept by the loop's thread and read at scrape time.
    Counts only grow, so a scrape between two updates sees a consistent-enough state."""

    NAME = PREFIX + "packet_processing_seconds"
    HELP = "time from a packet's arrival in the callback to its verdict (or hold)"

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are "less than or equal": a value on a bound counts in it.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def metric(self) -> Metric:
        counts, running = list(self.counts), 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            buckets.append((_go_float(bound), float(running)))
        return HistogramMetricFamily(self.NAME, self.HELP, buckets=buckets, sum_value=self.total)


class StatusCollector(Collector):
    """Turns the latest status snapshot (and the kernel's queue counters) into metrics."""

    def __init__(self, nfqueue_proc: Path = NFQUEUE_PROC) -> None:
        self.snapshot: Mapping[str, Any] = {}
        self.nfqueue_proc = nfqueue_proc
        self.packet_times = PacketTimes()

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: the names follow the counters the daemon has seen so far."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot  # one reference read: update() replaces it whole
        counters = snap.get("counters")
        if isinstance(counters, Mapping):
            yield from counter_metrics(
                {k: v for k, v in counters.items() if isinstance(v, int | float)}
            )
        for key, (name, text) in GAUGES.items():
            value = snap.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield GaugeMetricFamily(PREFIX + name, text, value)
        yield self.packet_times.metric()
        yield from self._queues(snap)

    def _queues(self, snap: Mapping[str, Any]) -> Iterator[Metric]:
        first = snap.get("queue")
        if not isinstance(first, int):
            return
        count = snap.get("queues", 1)
        queues = range(first, first + (count if isinstance(count, int) else 1))
        try:
            stats = queue_stats(self.nfqueue_proc.read_text(), queues)
        except OSError:
            return
        gauges = [
            GaugeMetricFamily(
                PREFIX + "queue_length", "packets waiting in the queue", labels=["queue"]
            ),
            GaugeMetricFamily(
                PREFIX + "queue_dropped",
                "packets the kernel dropped because the queue was full",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                PREFIX + "queue_user_dropped",
                "packets the kernel dropped because the netlink socket was full",
                labels=["queue"],
            ),
        ]
        for num, values in sorted(stats.items()):
            for gauge, value in zip(gauges, values, strict=True):
                gauge.add_metric([str(num)], value)
        yield from gauges


class Metrics:
    """What the daemon loop needs: construct once, `observe_packet` per packet, `update` at
    most once a second, `close` at exit. With `listen` None or "" everything is a no-op, so
    the loop needs no conditionals."""

    def __init__(self, listen: str | None, nfqueue_proc: Path = NFQUEUE_PROC) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = StatusCollector(nfqueue_proc)
        self.registry.register(self.collector)
        self.packet_times = self.collector.packet_times
        self.enabled = bool(listen)
        self._server: Any = None
        self.address: tuple[str, int] | None = None
        if listen:
            host, port = parse_listen(listen)
            self._server, _thread = start_http_server(port, host, registry=self.registry)
            bound = self._server.server_address
            self.address = (str(bound[0]), int(bound[1]))

    def observe_packet(self, seconds: float) -> None:
        if self.enabled:
            self.packet_times.observe(seconds)

    def update(self, snapshot: Mapping[str, Any]) -> None:
        """Hand over the latest status dict; it must not be mutated afterwards (copy it)."""
        self.collector.snapshot = snapshot

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
