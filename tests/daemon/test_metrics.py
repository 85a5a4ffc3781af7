"""/metrics as a Prometheus server scrapes it: a real HTTP server, parsed by the client's parser."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from alg.daemon.metrics import Metrics, PacketTimes, counter_metrics, metric_name, queue_stats
from alg.daemon.settings import load, parse_listen

# Two queues: 0 is ours (bound, 3 and 1 drops), 7 belongs to someone else.
NFQUEUE = (
    "    0  12345     2 2  4096     3     1      981  1\n    7  999     0 2  4096  50  60  1 1\n"
)
SNAPSHOT = {
    "pid": 4242,
    "uptime": 12.5,
    "sessions": 3,
    "held": 1,
    "expectations": 2,
    "queue": 0,
    "queues": 1,
    "control_ports": [21, 2121],
    "counters": {
        "packets": 100,
        "refusal": 5,
        "refusal.bounce": 3,
        "refusal.low-port": 2,
        "rewrite": 7,
        "rewrite.port": 4,
        "rewrite.227": 2,
        "held.out-of-order": 6,
        "expectation-created": 9,
    },
}


def _scrape(metrics: Metrics) -> dict[str, list[Sample]]:
    assert metrics.address is not None
    host, port = metrics.address
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[Metrics]:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(NFQUEUE)
    served = Metrics("127.0.0.1:0", nfqueue_proc=proc)
    try:
        yield served
    finally:
        served.close()


def test_counters_gauges_queues_and_histogram_are_served(metrics: Metrics) -> None:
    metrics.update(SNAPSHOT)
    for seconds in (0.00003, 0.0004, 0.0004, 0.3):
        metrics.observe_packet(seconds)
    got = _scrape(metrics)
    refusals = got["ftp_alg_refusals"]
    assert _value(refusals, "ftp_alg_refusals_total", reason="bounce") == 3
    assert _value(refusals, "ftp_alg_refusals_total", reason="low-port") == 2
    assert len(refusals) == 2  # the bare `refusal` (their sum) is not a third series
    rewrites = got["ftp_alg_rewrites"]
    assert _value(rewrites, "ftp_alg_rewrites_total", kind="port") == 4
    assert _value(rewrites, "ftp_alg_rewrites_total", kind="other") == 1  # 7 - 4 - 2
    assert _value(got["ftp_alg_packets"], "ftp_alg_packets_total") == 100
    assert _value(got["ftp_alg_held_out_of_order"], "ftp_alg_held_out_of_order_total") == 6
    assert _value(got["ftp_alg_expectation_created"], "ftp_alg_expectation_created_total") == 9
    assert _value(got["ftp_alg_sessions"], "ftp_alg_sessions") == 3
    assert _value(got["ftp_alg_held_packets"], "ftp_alg_held_packets") == 1
    assert _value(got["ftp_alg_expectations"], "ftp_alg_expectations") == 2
    assert _value(got["ftp_alg_queue_dropped"], "ftp_alg_queue_dropped", queue="0") == 3
    assert _value(got["ftp_alg_queue_user_dropped"], "ftp_alg_queue_user_dropped", queue="0") == 1
    assert _value(got["ftp_alg_queue_length"], "ftp_alg_queue_length", queue="0") == 2
    assert len(got["ftp_alg_queue_dropped"]) == 1  # queue 7 is not ours
    hist = got["ftp_alg_packet_processing_seconds"]
    assert _value(hist, "ftp_alg_packet_processing_seconds_count") == 4
    assert _value(hist, "ftp_alg_packet_processing_seconds_bucket", le="0.0005") == 3
    assert _value(hist, "ftp_alg_packet_processing_seconds_bucket", le="5e-05") == 1
    assert _value(hist, "ftp_alg_packet_processing_seconds_sum") == pytest.approx(0.30083)


def test_each_scrape_reads_the_latest_snapshot(metrics: Metrics) -> None:
    metrics.update({"counters": {"packets": 1}})
    assert _value(_scrape(metrics)["ftp_alg_packets"], "ftp_alg_packets_total") == 1
    metrics.update({"counters": {"packets": 2}, "sessions": 0})
    got = _scrape(metrics)
    assert _value(got["ftp_alg_packets"], "ftp_alg_packets_total") == 2
    assert _value(got["ftp_alg_sessions"], "ftp_alg_sessions") == 0


def test_missing_keys_are_left_out_not_errors(metrics: Metrics) -> None:
    metrics.update({"expectations": None, "queue": 3})  # no counters; queue 3 not bound
    got = _scrape(metrics)
    assert "ftp_alg_expectations" not in got and "ftp_alg_sessions" not in got
    assert got["ftp_alg_queue_dropped"] == []
    assert (
        _value(got["ftp_alg_packet_processing_seconds"], "ftp_alg_packet_processing_seconds_count")
        == 0
    )


def test_serves_on_ipv6_loopback() -> None:
    probe = socket.socket(socket.AF_INET6)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    finally:
        probe.close()
    served = Metrics("[::1]:0")
    try:
        assert served.address is not None and served.address[0] == "::1"
        served.update({"counters": {"errors": 2}})
        assert _value(_scrape(served)["ftp_alg_errors"], "ftp_alg_errors_total") == 2
    finally:
        served.close()


def test_off_means_no_server_and_no_cost() -> None:
    off = Metrics("")
    off.observe_packet(0.1)
    assert off.address is None
    assert off.packet_times.total == 0 and sum(off.packet_times.counts) == 0  # not recorded


def test_a_family_counted_without_members_stays_unlabelled() -> None:
    (metric,) = counter_metrics({"rewrite": 3})
    assert metric.name == "ftp_alg_rewrites"
    assert [(s.labels, s.value) for s in metric.samples] == [({}, 3)]


def test_names_are_sanitised() -> None:
    assert metric_name("held.out-of-order") == "held_out_of_order"
    assert metric_name("packets-changed") == "packets_changed"
    assert metric_name("227.ok") == "n_227_ok"


def test_queue_stats_reads_the_kernel_layout() -> None:
    assert queue_stats(NFQUEUE, range(0, 8)) == {0: (2, 3, 1), 7: (0, 50, 60)}
    assert queue_stats("garbage\n", range(1)) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9477", ("::1", 9477)),
        ("[fd00::1]:0", ("fd00::1", 0)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text", ["9477", "localhost:9477", "::1:9477", "[127.0.0.1]:1", "1.2.3.4:70000", "1.2.3.4:"]
)
def test_bad_listen_addresses_are_refused_at_load(text: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        load(None, {"metrics_listen": text})


def test_metrics_listen_is_a_setting() -> None:
    assert load(None, {"metrics_listen": "[::1]:9477"}).metrics_listen == "[::1]:9477"
    assert load(None, {}).metrics_listen == ""


def test_packet_times_count_a_value_on_a_bound_in_that_bucket() -> None:
    """Prometheus buckets are `le` (less or equal), as prometheus_client's own Histogram."""
    times = PacketTimes(bounds=(0.001, 0.01))
    for seconds in (0.001, 0.0011, 0.01, 0.5):
        times.observe(seconds)
    metric = times.metric()
    buckets = {s.labels["le"]: s.value for s in metric.samples if s.name.endswith("_bucket")}
    assert buckets == {"0.001": 1, "0.01": 3, "+Inf": 4}
    count = [s.value for s in metric.samples if s.name.endswith("_count")]
    assert count == [4]
