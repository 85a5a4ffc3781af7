"""What the core reports, declared once: every event kind and refusal reason, with its log
level and what it means. The daemon, the replay, the report, the demo and the docs test all
read these enums; nobody retypes the strings, so a typo is a NameError, not a silent change
of log level. The string values are the counter names (`refusal`, `refusal.bounce`).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import NamedTuple


class Level(IntEnum):
    """Log levels with the numbers of Python's `logging` (the core does not import it)."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


class EventKind(StrEnum):
    """What happened to a session or a packet."""

    SESSION_NEW = "session-new"
    SESSION_END = "session-end"
    REWRITE = "rewrite"
    FORWARD = "forward"
    UNCHANGED = "unchanged"
    FXP = "fxp"
    REFUSAL = "refusal"
    BLIND = "blind"
    CLEAR = "clear"
    PROTECTED = "protected"
    LONG_LINE = "long-line"
    GAP = "gap"
    HOLD_TIMEOUT = "hold-timeout"
    HOLD_LIMIT = "hold-limit"
    NOT_INSPECTED = "not-inspected"
    MALFORMED_PACKET = "malformed-packet"
    UNTRACKED = "untracked"
    SEQADJ_RESUMED = "seqadj-resumed"

    @property
    def level(self) -> Level:
        return _LEVELS.get(self, Level.INFO)

    @property
    def doc(self) -> str:
        return _KIND_DOCS[self]


_LEVELS = {
    EventKind.SESSION_NEW: Level.DEBUG,
    EventKind.UNCHANGED: Level.DEBUG,
    EventKind.NOT_INSPECTED: Level.DEBUG,
    EventKind.MALFORMED_PACKET: Level.DEBUG,
    EventKind.UNTRACKED: Level.DEBUG,
    EventKind.REFUSAL: Level.WARNING,
    EventKind.BLIND: Level.WARNING,
    EventKind.HOLD_TIMEOUT: Level.WARNING,
    EventKind.HOLD_LIMIT: Level.WARNING,
    EventKind.GAP: Level.WARNING,
}

_KIND_DOCS = {
    EventKind.SESSION_NEW: "a control connection is watched from its first queued segment",
    EventKind.SESSION_END: "a session is forgotten (closed, destroyed by conntrack, idle)",
    EventKind.REWRITE: "an address-bearing line was rewritten and its expectation created",
    EventKind.FORWARD: "an expectation was created and the text left unchanged (229, or the "
    "announcer already names the outside address)",
    EventKind.UNCHANGED: "an address-bearing line crossed no NAT: nothing to do",
    EventKind.FXP: "PORT/227 names a third host and FXP is allowed: passed unchanged",
    EventKind.REFUSAL: "an address-bearing line was left unchanged for a reason (see Reason)",
    EventKind.BLIND: "AUTH TLS accepted: the control connection is encrypted from here on",
    EventKind.CLEAR: "the control connection is back in clear text after TLS",
    EventKind.PROTECTED: "RFC 2228 protected commands: addresses inside cannot be read",
    EventKind.LONG_LINE: "a line longer than max_line was skipped",
    EventKind.GAP: "bytes of a stream were never seen; reading resumed after them",
    EventKind.HOLD_TIMEOUT: "a held segment waited hold_timeout and was let go",
    EventKind.HOLD_LIMIT: "max_held segments were held for one line: released",
    EventKind.NOT_INSPECTED: "a packet the core does not read (not TCP, a fragment)",
    EventKind.MALFORMED_PACKET: "bytes that are not a readable IP packet: passed unchanged",
    EventKind.UNTRACKED: "a segment of a connection conntrack does not know: passed",
    EventKind.SEQADJ_RESUMED: "a session met mid-stream took over the kernel's seqadj record",
}


class Reason(StrEnum):
    """Why an address-bearing line was refused (left unchanged, no expectation)."""

    BOUNCE = "bounce"
    LOW_PORT = "low-port"
    FAMILY = "family"
    UNSOLICITED = "unsolicited"
    MALFORMED = "malformed"
    NUL = "nul"
    LINE_TOO_LONG = "line-too-long"
    NAT_UNKNOWN = "nat-unknown"
    NO_PORT = "no-port"
    TOO_MANY_REWRITES = "too-many-rewrites"
    SPLIT_RELEASED = "split-released"
    SESSION_CAP = "session-cap"

    @property
    def doc(self) -> str:
        return _REASON_DOCS[self]


_REASON_DOCS = {
    Reason.BOUNCE: "names a host other than its sender (RFC 2577 bounce attack)",
    Reason.LOW_PORT: "names a data port below min_data_port",
    Reason.FAMILY: "names an address of the other IP family than the control connection",
    Reason.UNSOLICITED: "a 227/228/229 answering no PASV/LPSV/EPSV of this client",
    Reason.MALFORMED: "the argument breaks the grammar",
    Reason.NUL: "the line holds a NUL byte",
    Reason.LINE_TOO_LONG: "the line is longer than max_line",
    Reason.NAT_UNKNOWN: "conntrack did not know the connection's NAT mapping",
    Reason.NO_PORT: "no outside port could be reserved for the expectation",
    Reason.TOO_MANY_REWRITES: "max_corrections rewrites not yet acknowledged",
    Reason.SPLIT_RELEASED: "part of the address left unchanged after a hold timed out",
    Reason.SESSION_CAP: "max_sessions sessions are tracked: this one passes unwatched",
}


class Report(NamedTuple):
    """A line for the log and a tick of the counters `kind` and `kind.reason`."""

    kind: EventKind
    session: int
    message: str
    reason: Reason | None = None
    before: str = ""
    after: str = ""
