"""Log rate limiting: a flood of bad lines must not become a flood of log lines.

Measured before (issue 10): 100,000 bounce PORTs from one client in 7.2 s wrote 100,000
WARNING lines (15.8 MB). Two token buckets decide whether a record is written: one per key
(session id, event kind) and one overall. What a bucket refuses is counted per key and told
later in one line, "suppressed N similar messages (kind K, session S) in the last T s", once
the oldest untold one is `report_every` seconds old (with the next record of that key, or
from `tick()`, which the daemon calls about once a second), and at exit from `flush()`.
Like journald's RateLimitIntervalSec, a steady flood gives its allowed lines plus one
summary per interval, not one per refill. Counters are not touched: the core counts
every event before anything is logged.

`RateLimiter` is pure (the caller passes `now`); `RateLimitFilter` puts it on a logger.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Key = tuple[Hashable, Hashable]  # (session, kind)
_MARK = "ratelimit_summary"  # set on the records this module writes itself
CHECKED = "ratelimit_checked"  # set on records whose writer asked `allows` first


@dataclass(frozen=True, slots=True)
class Summary:
    """How many records of `key` (None: refused by the overall limit) were suppressed."""

    key: Key | None
    count: int
    seconds: float
    level: int

    def message(self) -> str:
        if self.key is None:
            what = "messages over the overall log limit"
        else:
            session, kind = self.key
            kind = getattr(kind, "value", kind)
            what = f"similar messages (kind {kind}, session {session})"
        return f"suppressed {self.count} {what} in the last {self.seconds:.1f} s"


class _Bucket:
    __slots__ = ("level", "since", "stamp", "suppressed", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now
        self.suppressed = 0  # records refused since the last summary
        self.since = now  # first refusal since the last summary
        self.level = 0  # highest level among them

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def refuse(self, now: float, level: int) -> None:
        if not self.suppressed:
            self.since = now
        self.suppressed += 1
        self.level = max(self.level, level)

    def summary(self, key: Key | None, now: float) -> Summary:
        s = Summary(key, self.suppressed, now - self.since, self.level)
        self.suppressed, self.level = 0, 0
        return s


class RateLimiter:
    """Token buckets per key and overall; refused records are counted for a summary.

    Keys are bounded (`max_keys`, least recently used evicted); an evicted key's pending
    count moves to the overall one, so nothing suppressed goes unreported.
    """

    def __init__(
        self,
        rate: float = 10.0,
        burst: float = 20.0,
        overall_rate: float = 100.0,
        overall_burst: float = 200.0,
        report_every: float = 10.0,
        max_keys: int = 4096,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.overall_rate, self.overall_burst = overall_rate, overall_burst
        self.report_every = report_every
        self.max_keys = max_keys
        self._keys: OrderedDict[Key, _Bucket] = OrderedDict()
        self._pending: dict[Key, None] = {}  # keys with an untold count, oldest first
        self._overall: _Bucket | None = None

    def admit(self, key: Key, now: float, level: int = logging.INFO) -> tuple[bool, list[Summary]]:
        """Whether a record of `key` is written now, and the summaries to write before it.

        A summary is due once its first suppressed record is `report_every` seconds old; it
        rides along with an admitted record, or costs an overall token when none is admitted
        (so summaries, too, stay within the overall rate).
        """
        overall = self._overall_bucket(now)
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = _Bucket(self.burst, now)
            self._evict(now)
        else:
            self._keys.move_to_end(key)
        if not bucket.take(self.rate, self.burst, now):
            ok = False
            bucket.refuse(now, level)
            self._pending[key] = None
        elif not overall.take(self.overall_rate, self.overall_burst, now):
            ok = False
            overall.refuse(now, level)
        else:
            ok = True
        out = []
        for pending, which in ((bucket, key), (overall, None)):
            if not pending.suppressed or now - pending.since < self.report_every:
                continue
            if ok or overall.take(self.overall_rate, self.overall_burst, now):
                out.append(self._summary(which, now))
        return ok, out

    def due(self, now: float) -> list[Summary]:
        """Summaries that are `report_every` old, as far as overall tokens allow (the rest
        waits): call it about once a second, so a flood that stopped is still told."""
        out: list[Summary] = []
        overall = self._overall_bucket(now)
        if overall.suppressed and now - overall.since >= self.report_every:
            out.append(self._summary(None, now))
        for key in list(self._pending):
            if now - self._keys[key].since < self.report_every:
                break  # oldest first: the others are younger
            if not overall.take(self.overall_rate, self.overall_burst, now):
                break
            out.append(self._summary(key, now))
        return out

    def flush(self, now: float) -> list[Summary]:
        """Summaries of everything suppressed and not yet told, whatever its age (at exit)."""
        out = [self._summary(key, now) for key in list(self._pending)]
        if self._overall is not None and self._overall.suppressed:
            out.append(self._summary(None, now))
        return out

    def _summary(self, key: Key | None, now: float) -> Summary:
        if key is None:
            return self._overall_bucket(now).summary(None, now)
        del self._pending[key]
        return self._keys[key].summary(key, now)

    def _overall_bucket(self, now: float) -> _Bucket:
        if self._overall is None:
            self._overall = _Bucket(self.overall_burst, now)
        return self._overall

    def _evict(self, now: float) -> None:
        while len(self._keys) > self.max_keys:
            gone, old = self._keys.popitem(last=False)
            self._pending.pop(gone, None)
            if old.suppressed:
                overall = self._overall_bucket(now)
                if not overall.suppressed:
                    overall.since = old.since
                overall.suppressed += old.suppressed
                overall.level = max(overall.level, old.level)


class RateLimitFilter(logging.Filter):
    """Put a `RateLimiter` on `logger`; records carry `session` and `kind` in `extra`.

    Records without them share one key (None, None). Summaries are written through the same
    logger, at the highest level among the records they stand for.
    """

    def __init__(
        self,
        logger: logging.Logger,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.logger = logger
        self.limiter = limiter or RateLimiter()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, False) or getattr(record, CHECKED, False):
            return True
        key = (getattr(record, "session", None), getattr(record, "kind", None))
        return self.allows(key, record.levelno)

    def allows(self, key: Key, level: int) -> bool:
        """Whether a record of `key` may be written now (summaries due are written first).
        A writer that asks before building its record pays nothing for a refused one (the
        daemon's per-session lines at hundreds of sessions a second); it then marks the
        record with `CHECKED` in `extra`, so that the filter does not count it twice."""
        ok, summaries = self.limiter.admit(key, self.clock(), level)
        for summary in summaries:
            self._write(summary)
        return ok

    def tick(self) -> None:
        """Write the summaries that are due (the daemon calls it about once a second)."""
        for summary in self.limiter.due(self.clock()):
            self._write(summary)

    def flush(self) -> None:
        """Write every pending summary (at exit)."""
        for summary in self.limiter.flush(self.clock()):
            self._write(summary)

    def _write(self, summary: Summary) -> None:
        session, kind = summary.key if summary.key is not None else (None, None)
        extra = {_MARK: True, "session": session, "kind": kind, "suppressed": summary.count}
        level = summary.level or logging.WARNING
        self.logger.log(level, "%s", summary.message(), extra=extra)
