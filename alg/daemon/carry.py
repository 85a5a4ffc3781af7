"""Carrying out the core's actions on queued packets, the kernel and the log.

Held packets are netfilterqueue Packet objects: a verdict may be given long after the
callback returned (linux-facts, "Holding packets"), so the core's handle is the object itself.
"""

from __future__ import annotations

import logging
from typing import Any

from alg.core import Action, Drop, Event, Expect, Release, Unexpect
from alg.core.text import show_addr
from alg.daemon.conntrack import Kernel, expected_tuple

log = logging.getLogger("ftp-alg")

# Events that concern one packet rather than a session, and are frequent: debug only.
_QUIET = frozenset(("not-inspected", "malformed-packet", "unchanged", "session-new"))
_WARN = frozenset(("refusal", "blind", "hold-timeout", "hold-limit", "gap"))


def log_event(event: Event) -> None:
    level = (
        logging.DEBUG
        if event.kind in _QUIET
        else logging.WARNING
        if event.kind in _WARN
        else logging.INFO
    )
    if not log.isEnabledFor(level):
        return
    reason = f" [{event.reason}]" if event.reason else ""
    detail = ""
    if event.before:
        detail += f" before={event.before!r}"
    if event.after:
        detail += f" after={event.after!r}"
    log.log(
        level, "session %d %s%s: %s%s", event.session, event.kind, reason, event.message, detail
    )


def carry(actions: tuple[Action, ...] | list[Action], kernel: Kernel) -> None:
    """Release or drop held packets, withdraw expectations, log events."""
    for action in actions:
        if isinstance(action, Release):
            pkt: Any = action.handle
            if action.data is not None:
                pkt.set_payload(action.data)
            pkt.accept()
        elif isinstance(action, Drop):
            action.handle.drop()  # type: ignore[attr-defined]
        elif isinstance(action, Event):
            log_event(action)
        elif isinstance(action, Unexpect):
            kernel.withdraw(action.expectation)
        elif isinstance(action, Expect):
            exp = action.expectation
            log.debug(
                "session %d expectation %s => %s:%d",
                exp.session,
                expected_tuple(exp, exp.outside_port),
                show_addr(exp.inside),
                exp.inside_port,
            )
