"""Log rate limiting: bounded lines per key and overall, and every suppressed record told."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.daemon.ratelimit import RateLimiter, RateLimitFilter, Summary

A, B = (1, "refusal"), (2, "refusal")
SUMMARY = re.compile(
    r"suppressed (\d+) (similar messages \(kind (\S+), session (\S+)\)|"
    r"messages over the overall log limit) in the last ([\d.]+) s"
)


def test_burst_then_rate_then_one_summary_on_resume() -> None:
    rl = RateLimiter(rate=10, burst=20, report_every=1)
    results = [rl.admit(A, 100.0) for _ in range(100)]
    assert sum(ok for ok, _ in results) == 20
    assert all(not s for _, s in results)
    ok, summaries = rl.admit(A, 101.0)  # 10 tokens back after 1 s
    assert ok and summaries == [Summary(A, 80, 1.0, logging.INFO)]
    assert summaries[0].message() == (
        "suppressed 80 similar messages (kind refusal, session 1) in the last 1.0 s"
    )
    assert rl.admit(A, 101.0) == (True, [])  # told once


def test_keys_are_limited_separately() -> None:
    rl = RateLimiter(rate=1, burst=2)
    assert [rl.admit(A, 0.0)[0] for _ in range(5)] == [True, True, False, False, False]
    assert rl.admit(B, 0.0)[0] and rl.admit((1, "rewrite"), 0.0)[0]


def test_overall_limit_across_many_sessions() -> None:
    rl = RateLimiter(rate=10, burst=20, overall_rate=100, overall_burst=200, report_every=1)
    admitted = sum(rl.admit((s, "refusal"), 5.0)[0] for s in range(300))
    assert admitted == 200
    ok, summaries = rl.admit((999, "refusal"), 6.0)
    assert ok and summaries == [Summary(None, 100, 1.0, logging.INFO)]
    assert "over the overall log limit" in summaries[0].message()


def test_a_steady_flood_is_summarised_every_report_every_seconds() -> None:
    rl = RateLimiter(rate=10, burst=20, report_every=10)
    written = suppressed_told = summaries_written = 0
    for i in range(30_000):  # 1000/s for 30 s
        ok, summaries = rl.admit(A, i / 1000)
        written += ok
        suppressed_told += sum(s.count for s in summaries)
        summaries_written += len(summaries)
    assert summaries_written == 2  # at 10 s and 20 s, not one per refill
    assert written <= 20 + 10 * 30 + 1
    assert written + suppressed_told + sum(s.count for s in rl.flush(30.0)) == 30_000


def test_summaries_during_a_flood_carry_their_window_and_level() -> None:
    rl = RateLimiter(rate=1, burst=1, report_every=10)
    rl.admit(A, 0.0)
    out: list[Summary] = []
    for i in range(1, 2500):
        out += rl.admit(A, i / 100, logging.WARNING if i == 7 else logging.INFO)[1]
    assert out and all(9.9 <= s.seconds <= 10.0 for s in out)
    assert out[0].level == logging.WARNING and out[1].level == logging.INFO


def test_flush_tells_what_is_pending_once() -> None:
    rl = RateLimiter(rate=1, burst=1)
    for _ in range(5):
        rl.admit(A, 0.0)
    assert rl.flush(3.0) == [Summary(A, 4, 3.0, logging.INFO)]
    assert rl.flush(4.0) == []


def test_evicted_keys_hand_their_count_to_the_overall_summary() -> None:
    rl = RateLimiter(rate=1, burst=1, max_keys=2, report_every=5)
    for key in [A, A, A, B, (3, "x")]:
        rl.admit(key, 0.0)
    assert rl.flush(1.0) == [Summary(None, 2, 1.0, logging.INFO)]


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"]), st.floats(0, 0.5)),
        max_size=400,
    )
)
def test_nothing_is_lost_and_output_is_bounded(events: list[tuple[int, str, float]]) -> None:
    rl = RateLimiter(rate=5, burst=3, overall_rate=8, overall_burst=6, report_every=2, max_keys=4)
    now = written = told = 0.0
    for session, kind, dt in events:
        now += dt
        ok, summaries = rl.admit((session, kind), now)
        written += ok
        told += sum(s.count for s in summaries)
    told += sum(s.count for s in rl.flush(now))
    assert written + told == len(events)
    assert written <= 6 + 8 * now + 1e-9


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"hd-ratelimit-{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    log.filters.clear()
    log.handlers.clear()


def _told(lines: list[str]) -> tuple[int, int]:
    """(ordinary lines, total count in summary lines)."""
    counts = [int(m.group(1)) for line in lines if (m := SUMMARY.fullmatch(line))]
    return len(lines) - len(counts), sum(counts)


def test_a_logger_with_a_fake_clock_writes_the_issues_flood_in_a_few_lines(
    logger: logging.Logger,
) -> None:
    """Issue 10: 100,000 bounce PORTs from one client in 7.2 s."""
    clock = [0.0]
    filt = RateLimitFilter(logger, clock=lambda: clock[0])
    logger.addFilter(filt)
    out = io.StringIO()
    logger.addHandler(logging.StreamHandler(out))
    for i in range(100_000):
        clock[0] = i * 72e-6
        logger.warning("session 7 refusal [bounce]: %s", "PORT", extra={"session": 7, "kind": "b"})
    filt.flush()
    lines = out.getvalue().splitlines()
    written, suppressed = _told(lines)
    assert written <= 20 + 10 * 7.2 + 1 and len(lines) <= written + 3
    assert written + suppressed == 100_000
    assert lines[-1].startswith("suppressed ") and "(kind b, session 7)" in lines[-1]


def test_a_logger_on_the_real_clock(logger: logging.Logger) -> None:
    handler = _Lines()
    logger.addHandler(handler)
    filt = RateLimitFilter(logger)
    logger.addFilter(filt)
    start = time.monotonic()
    for _ in range(100_000):
        logger.warning("refused", extra={"session": 1, "kind": "refusal"})
    elapsed = time.monotonic() - start
    filt.flush()
    written, suppressed = _told(handler.lines)
    assert written <= 20 + 10 * elapsed + 1
    assert written + suppressed == 100_000
    assert SUMMARY.fullmatch(handler.lines[-1])


def test_records_without_session_share_one_key_and_summaries_pass(
    logger: logging.Logger,
) -> None:
    handler = _Lines()
    logger.addHandler(handler)
    clock = [0.0]
    limiter = RateLimiter(rate=1, burst=2, report_every=1)
    filt = RateLimitFilter(logger, limiter, clock=lambda: clock[0])
    logger.addFilter(filt)
    for _ in range(5):
        logger.error("queue overrun")
    clock[0] = 1.5
    logger.error("queue overrun")
    assert handler.lines == [
        "queue overrun",
        "queue overrun",
        "suppressed 3 similar messages (kind None, session None) in the last 1.5 s",
        "queue overrun",
    ]


def test_a_flood_that_stopped_is_told_by_the_periodic_tick() -> None:
    rl = RateLimiter(rate=1, burst=1, report_every=10)
    for _ in range(50):
        rl.admit(A, 0.0)
    for _ in range(7):
        rl.admit(B, 4.0)
    assert rl.due(9.9) == []
    assert rl.due(10.0) == [Summary(A, 49, 10.0, logging.INFO)]
    assert rl.due(13.0) == []
    assert rl.due(14.0) == [Summary(B, 6, 10.0, logging.INFO)]
    assert rl.due(100.0) == [] and rl.flush(100.0) == []


def test_tick_summaries_stay_within_the_overall_rate() -> None:
    rl = RateLimiter(rate=1, burst=1, overall_rate=1, overall_burst=3, report_every=1)
    for session in range(10):
        rl.admit((session, "k"), 0.0)
        rl.admit((session, "k"), 0.0)
    # 3 records passed (overall burst); 7 were refused overall, 10 by their key's bucket.
    first = rl.due(1.0)
    assert [s.key for s in first] == [None, (0, "k")]  # one token back: one key's summary
    told = first + [s for t in range(2, 40) for s in rl.due(float(t))]
    assert sorted(s.key for s in told if s.key) == [(n, "k") for n in range(10)]
    assert sum(s.count for s in told) == 10 + 7 and rl.flush(40.0) == []


def test_the_filters_tick_writes_a_due_summary_through_the_logger(logger: logging.Logger) -> None:
    handler = _Lines()
    logger.addHandler(handler)
    clock = [0.0]
    filt = RateLimitFilter(logger, RateLimiter(rate=1, burst=1), clock=lambda: clock[0])
    logger.addFilter(filt)
    for _ in range(30):
        logger.warning("bounce", extra={"session": 4, "kind": "refusal.bounce"})
    clock[0] = 5.0
    filt.tick()
    assert handler.lines == ["bounce"]
    clock[0] = 10.0
    filt.tick()
    assert handler.lines == [
        "bounce",
        "suppressed 29 similar messages (kind refusal.bounce, session 4) in the last 10.0 s",
    ]


def test_the_daemons_report_lines_ask_first_and_build_no_record_when_refused() -> None:
    """The daemon logs the core's reports through `log_report` with the filter's `allows`
    as its gate: a refused line costs no LogRecord, an admitted one is not counted twice."""
    from unittest import mock

    from alg.core.reports import EventKind, Report
    from alg.daemon.executor import log, log_report

    handler = _Lines()
    clock = [0.0]
    filt = RateLimitFilter(log, RateLimiter(rate=1, burst=3), clock=lambda: clock[0])
    log.addHandler(handler)
    log.addFilter(filt)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        with mock.patch.object(log, "makeRecord", wraps=log.makeRecord) as made:
            for _ in range(50):
                log_report(Report(EventKind.REWRITE, 9, "PORT rewritten"), filt.allows)
            clock[0] = 20.0
            log_report(Report(EventKind.REWRITE, 9, "PORT rewritten"), filt.allows)
    finally:
        log.removeFilter(filt)
        log.removeHandler(handler)
        log.setLevel(level)
    assert handler.lines[:3] == ["session 9 rewrite: PORT rewritten"] * 3
    assert handler.lines[3] == (
        "suppressed 47 similar messages (kind rewrite, session 9) in the last 20.0 s"
    )
    assert handler.lines[4:] == ["session 9 rewrite: PORT rewritten"]
    assert made.call_count == len(handler.lines) == 5
