"""`ftp-alg run`: read the NFQUEUE, let the core decide, carry out its decisions.

One thread, one select loop: the queue, conntrack destroy events, the status socket and a
signal wake-up pipe, with a timeout that never outlasts the core's next hold deadline.
The daemon never dies on a packet: an unexpected error is logged and counted and the packet
passes unchanged (fail-open) or is dropped (fail-closed).
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from alg.core import Found, Gateway
from alg.daemon.conntrack import ConntrackAdapter, to_key
from alg.daemon.executor import Executor
from alg.daemon.ftps import FtpsRanges
from alg.daemon.metrics import Metrics
from alg.daemon.queueflags import set_fail_open
from alg.daemon.ratelimit import RateLimitFilter
from alg.daemon.recheck import Recheck
from alg.daemon.settings import Settings
from alg.daemon.status import StatusServer
from alg.kernel.ctevents import DestroyListener
from alg.kernel.ctnetlink import Ctnetlink
from alg.kernel.cttypes import Conntrack, CtnetlinkError

log = logging.getLogger("ftp-alg")
SERVICE_EVERY = 64  # queued packets between services of the events and deadlines (`_service`)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ct = Ctnetlink()
        low, high = settings.port_range
        # One tally for the whole daemon: the core's events, the verdicts, the kernel's
        # answers and the loop's own counts; `ftp-alg status` and the metrics show it.
        self.counters: Counter[str] = Counter()
        self.conntrack = ConntrackAdapter(
            self.ct,
            settings.port_tries,
            (low, high),
            counters=self.counters,
            watch_mark=settings.watch_mark,
            passive_mark=settings.passive_mark if settings.watch_mark else 0,
        )
        # With the skip rule, plain replies pass unqueued: holes in reply streams are normal.
        core = replace(settings.core, replies_unqueued=bool(settings.watch_mark))
        self.gw = Gateway(core, self.counters)
        self.executor = Executor(self.gw, self.conntrack, time.monotonic)
        self.executor.ftps = FtpsRanges.from_settings(settings, self.gw, self.counters)
        # A taken port raises OSError here, which `ftp-alg run` reports as "cannot start".
        self.metrics = Metrics(settings.metrics_listen or None)
        self._metrics_due = 0.0
        self.recheck = Recheck()
        self._events: DestroyListener | None = None  # while run() reads them
        self._unserviced = 0  # packets since the last `_service`
        self.started = time.time()
        self.stop = False

    def on_packet(self, pkt: Any) -> None:
        """The queue callback: every packet gets a verdict, now or (held) later."""
        start = time.perf_counter()
        try:
            self._packet(pkt)
        finally:
            self.metrics.observe_packet(time.perf_counter() - start)
        self._unserviced += 1
        if self._unserviced >= SERVICE_EVERY and self._events is not None:
            self._service(self._events)

    def _service(self, events: DestroyListener) -> None:
        """Destroy events, hold deadlines and the re-check, also while the queue never runs
        dry: netfilterqueue's run() returns only then, and a port reused at once must find
        its old session forgotten, a held segment its deadline kept."""
        self._unserviced = 0
        self._read_events(events)
        if self.recheck.pending:
            self._recheck_some()
        now = time.monotonic()
        if now >= self.gw.next_tick():
            self.executor.run(self.gw.tick(now))

    def _packet(self, pkt: Any) -> None:
        self.counters["packets"] += 1
        try:
            commands = self.gw.packet(pkt, pkt.get_payload(), time.monotonic())
        except Exception:  # a bug of ours must not take the traffic down
            self.counters["errors"] += 1
            log.exception(
                "internal error on a packet: %s it",
                "dropping" if self.settings.fail_closed else "passing",
            )
            if self.settings.fail_closed:
                pkt.drop()
            else:
                pkt.accept()
            return
        self.executor.run(commands)

    def status(self, ask_kernel: bool = True) -> dict[str, Any]:
        """The daemon's state. `ask_kernel`: count the kernel's expectations (a ctnetlink
        dump); without it, the ones this daemon created and still owns."""
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 1),
            "sessions": self.gw.session_count,
            "held": self.gw.held_count,
            "expectations": (
                self._kernel_expectations() if ask_kernel else len(self.conntrack.owned)
            ),
            "queue": self.settings.queue_num,
            "queues": self.settings.queue_count,
            "control_ports": sorted(self.settings.core.control_ports),
            "counters": dict(sorted(self.counters.items())),
        }

    def _kernel_expectations(self) -> int | None:
        """Expectations the kernel holds now (used ones are gone): the truth, not a tally."""
        try:
            return len(self.ct.list_expectations())
        except CtnetlinkError:
            return None

    def run(self) -> int:
        from netfilterqueue import NetfilterQueue

        rd, wr = os.pipe()
        os.set_blocking(wr, False)
        signal.set_wakeup_fd(wr)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        first = self.settings.queue_num
        queues = []  # one handle per queue of the range the rules balance over
        for num in range(first, first + self.settings.queue_count):
            nfq = NetfilterQueue()
            nfq.bind(num, self.on_packet, max_len=4096)
            # A full queue passes packets (fail-open) unless the admin chose fail_closed:
            # netfilterqueue never sets the flag itself (docs/kernel-facts.md, "Queue and rules").
            set_fail_open(nfq.get_fd(), num, enabled=not self.settings.fail_closed)
            queues.append(nfq)
        events = DestroyListener(ports=self.settings.core.control_ports)
        self._events = events
        status = StatusServer(self.settings.status_socket)
        log.info(
            "ftp-alg running: queue %d, control ports %s, fail-%s",
            self.settings.queue_num,
            ",".join(map(str, sorted(self.settings.core.control_ports))),
            "closed" if self.settings.fail_closed else "open",
        )
        limiter = RateLimitFilter(log)
        log.addFilter(limiter)
        self.executor.log_gate = limiter.allows
        by_fd = {nfq.get_fd(): nfq for nfq in queues}
        fds = [*by_fd, events.fileno(), status.fileno(), rd]
        # What start-up allocated (modules, parsers, pyroute2's tables) lives as long as the
        # process: out of the collector's sight, a full collection among many sessions
        # scans only them, which keeps its pause (a queued packet's worst wait) short.
        gc.collect()
        gc.freeze()
        try:
            while not self.stop:
                now = time.monotonic()
                timeout = min(1.0, max(0.0, self.gw.next_tick() - now))
                if self.recheck.pending:
                    timeout = 0.0
                ready, _, _ = select.select(fds, [], [], timeout)
                if rd in ready:
                    os.read(rd, 512)
                try:
                    busy = [by_fd[fd] for fd in ready if fd in by_fd]
                    self._turn(ready, busy, events, status)
                    if busy and self.settings.busy_poll_us:
                        self._busy_poll(queues)
                    if now >= self._metrics_due:
                        limiter.tick()
                        if self.metrics.enabled:
                            self.metrics.update(self.status(ask_kernel=False))
                        self._metrics_due = now + 1.0
                except Exception:  # never die: log, count, and keep reading the queue
                    self.counters["errors"] += 1
                    log.exception("internal error in the main loop")
                    time.sleep(0.01)  # bounded: a persistent fault cannot spin the CPU
        finally:
            log.info("ftp-alg stopping: releasing held packets, withdrawing expectations")
            self.executor.run(self.gw.close(time.monotonic()))
            self.executor.ftps.close()
            self.conntrack.withdraw_all()
            for nfq in queues:
                nfq.unbind()
            self._events = None
            events.close()
            status.close()
            self.metrics.close()
            limiter.flush()
            log.removeFilter(limiter)
            self.executor.log_gate = None
            self.ct.close()
            signal.set_wakeup_fd(-1)
        return 0

    def _turn(
        self, ready: list[int], busy: list[Any], events: DestroyListener, status: StatusServer
    ) -> None:
        # Destroy events first: a connection that replaced one on the same tuple sends its
        # first payload only after its handshake, so the old session is usually gone by then
        # (when not, the core looks the connection up: alg/core/flows.py, `stranger`).
        if events.fileno() in ready:
            self._read_events(events)
        if self.recheck.pending:
            self._recheck_some()
        for nfq in busy:
            nfq.run(block=False)
        if status.fileno() in ready:
            status.serve(self.status())
        now = time.monotonic()
        if now >= self.gw.next_tick():
            self.executor.run(self.gw.tick(now))

    def _read_events(self, events: DestroyListener) -> None:
        lost, skipped = events.lost, events.skipped
        entries = events.read_events()
        # The kernel dropped events (the socket's buffer overflowed): every session's
        # connection is looked up again (alg/daemon/recheck.py). Skipped: not of a control
        # port.
        self.counters["destroy-events-lost"] += events.lost - lost
        self.counters["destroy-events-skipped"] += events.skipped - skipped
        for entry in entries:
            self._destroyed(entry)
        if events.lost != lost:  # some sessions' ends were among the lost events
            self.recheck.start(self.gw.connections())

    def _recheck_some(self) -> None:
        """One batch of the re-check after lost destroy events: forget the sessions whose
        connection conntrack no longer holds."""
        now = time.monotonic()
        for key, conn_id in self.recheck.step(self.ct):
            self.counters["destroy-recheck-forgotten"] += 1
            reason = "conntrack no longer has the connection (its destroy event was lost)"
            self.executor.run(self.gw.forget(key, reason, now, conn_id))

    def _busy_poll(self, queues: list[Any]) -> None:
        """Poll the queue without sleeping for `busy_poll_us` after the last packet."""
        window = self.settings.busy_poll_us / 1e6
        clock = time.monotonic
        seen = self.counters.get("packets", 0)
        end = clock() + window
        while clock() < end and not self.stop:
            for nfq in queues:
                nfq.run(block=False)
            now = self.counters.get("packets", 0)
            if now != seen:
                seen, end = now, clock() + window

    def _destroyed(self, entry: Conntrack) -> None:
        """Conntrack destroyed a connection: forget its session, unless the tuple already
        belongs to a newer connection. The core compares conntrack ids: a client reusing its
        port within TIME_WAIT (120 s) makes the kernel kill the old entry when the new SYN
        arrives, and the event must not end the new session. But the new entry can take the
        freed one's id (the id hashes the entry's address), so when the ids agree and the
        session has not seen its connection close, one look-up asks conntrack whether the
        tuple's connection still lives."""
        now = time.monotonic()
        key = to_key(entry.original)
        if self.gw.conn_id_of(key) == entry.id and not self.gw.is_closing(key):
            found = self.conntrack.lookup(key)
            if isinstance(found, Found) and not found.closed:
                self.counters["destroy-event-live-connection"] += 1
                return
        self.executor.run(self.gw.forget(key, now=now, conn_id=entry.id))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop = True
