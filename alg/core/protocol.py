"""The FTP control protocol as the gateway follows it: states, a transition table, and what
each line means. No bytes, sequence numbers or packets here: lines in, decisions out.

Theory of operation
-------------------
Commands travel in conntrack's ORIGINAL direction (client to server), replies in REPLY.
RFC 959 pairs them in order: every command waits in `pending` until a reply answers it. A
reply whose code starts with 1 is preliminary (RFC 959 4.2) and answers nothing; a final one
answers the oldest waiting command. A multi-line reply ("227-" ... "227 ") counts once, when
it ends, and its address may stand in any of its lines.

RFC 959 3.2's default data port: a transfer command (RETR, LIST, ...) with no PORT, EPRT,
LPRT, PASV, LPSV or EPSV since the previous transfer makes the server connect from port 20 to
the client's control connection port. Such a command means `DefaultPort` (only in a session
seen from its start: joined mid-stream, the gateway cannot know what is in effect).

An address-bearing line is acted on when:
- a client sends PORT, EPRT or LPRT (RFC 959 4.1.2, RFC 2428 2, RFC 1639 2): always;
- a server sends 227, 228 or 229 (RFC 959 4.1.2, RFC 1639, RFC 2428 3): only as the answer to
  a PASV, LPSV or EPSV this client is waiting on. Replies before it that were never seen
  (lost, or plain replies the kernel let pass unqueued) are skipped; an unsolicited one is
  refused. A 234 likewise answers the AUTH waiting, wherever it stands.
Acting on a line (policy, expectation, rewrite) is the session's job; this module only says
which lines qualify, and refuses the unreadable ones with a reason.

TLS. "AUTH TLS" answered by 234 (RFC 4217 4) makes the connection BLIND: both directions
carry TLS records and no address can be read or rewritten. RFC 4217 12.3's CCC ends TLS
inside the encrypted stream; the gateway notices only that clear text resumes where the next
record header should be (alg.core.tls), and goes back to COMMANDS with no pending commands.
RFC 2228's ENC/MIC/CONF commands wrap commands in encoding the gateway cannot read: noted once.

Closing. QUIT, which the server answers with 221 and its end of the connection (RFC 959
4.1.1, 5.4), or a final 421 (RFC 959 4.2: "closing control connection", also unasked) means
the connection ends: the session is CLOSING and `Closing` tells the gateway to forget it
after its linger time. Only payload reaches the gateway, not the FINs that follow, and
conntrack's end of the connection comes only after TIME_WAIT (120 s): without this, every
finished session would stay tracked two minutes. The QUIT decides, not the 221: commands
are all queued, while the kernel lets a 221 pass unqueued like any plain reply. Lines still
read as in COMMANDS meanwhile; should the connection go on after all (a QUIT refused), its
next line after the linger time finds it as a restarted daemon would.

States (one per session)

    GREETING  --final reply-->      COMMANDS   (the server's 220 answers no command)
    COMMANDS  --234 to AUTH-->      BLIND
    BLIND     --clear text-->       COMMANDS
    COMMANDS  --QUIT, 221 or 421--> CLOSING    (a 421 greeting: GREETING, COMMANDS, CLOSING)

A session joined mid-stream (after a restart or failover) starts in COMMANDS. So does one
whose login lines the kernel let pass unqueued (alg/kernel/rules_skip.py), but knowing that
no data port is in effect yet; unless the kernel's passive rules also let a PASV of a
connection without DNAT pass, which no transfer has used yet (the passive bit): then one is.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from alg.core.grammar import HostPort, Malformed, parse_command, parse_reply
from alg.core.reports import EventKind, Reason


class State(Enum):
    GREETING = "greeting"
    COMMANDS = "commands"
    BLIND = "blind"
    CLOSING = "closing"


class Signal(Enum):
    GREETED = "a final reply before any command"
    AUTH_ACCEPTED = "234 answering AUTH"
    CLEAR_TEXT = "clear text after TLS records"
    SERVER_CLOSING = "a final 221 or 421"
    QUIT = "the client's QUIT"


TRANSITIONS: dict[tuple[State, Signal], State] = {
    (State.GREETING, Signal.GREETED): State.COMMANDS,
    (State.COMMANDS, Signal.AUTH_ACCEPTED): State.BLIND,
    (State.BLIND, Signal.CLEAR_TEXT): State.COMMANDS,
    (State.COMMANDS, Signal.SERVER_CLOSING): State.CLOSING,
    (State.COMMANDS, Signal.QUIT): State.CLOSING,
}

ADDRESS_VERBS = (b"PORT", b"EPRT", b"LPRT")
# RFC 959 4.1.2 (PASV -> 227), RFC 1639 (LPSV -> 228), RFC 2428 3 (EPSV -> 229).
PASSIVE = {b"227": b"PASV", b"228": b"LPSV", b"229": b"EPSV"}
_PASSIVE_VERBS = frozenset(PASSIVE.values())
# RFC 2228 protected commands: their content is encoded, so no address can be read there.
_PROTECTED = frozenset((b"ENC", b"MIC", b"CONF"))
# Commands that open a data connection (RFC 959 4.1.3, RFC 3659 7).
TRANSFER_VERBS = frozenset((b"RETR", b"STOR", b"STOU", b"APPE", b"LIST", b"NLST", b"MLSD"))
_DATA_PORT_VERBS = frozenset(ADDRESS_VERBS) | _PASSIVE_VERBS
# RFC 959 4.2: 221 "Service closing control connection", 421 "Service not available,
# closing control connection".
_CLOSING_CODES = frozenset((b"221", b"421"))
# Replies that answer only their own command, wherever it waits: the replies before them may
# have passed unseen (lost, or let through unqueued by the kernel's skip rule), and counting
# them off in order would pair these with the wrong command.
SEARCHED = {**PASSIVE, b"234": b"AUTH"}


# ---- what a line means -----------------------------------------------------------------------


class Address(NamedTuple):
    """An address-bearing line the session must act on."""

    hp: HostPort
    line: bytes


class Refused(NamedTuple):
    """An address-bearing line that cannot be acted on, and why."""

    reason: Reason
    message: str
    line: bytes


class Notice(NamedTuple):
    """Something worth a log line that changes nothing."""

    kind: EventKind
    message: str


class Blind(NamedTuple):
    """AUTH TLS was accepted: from the next byte on, both directions are TLS records."""


class DefaultPort(NamedTuple):
    """A transfer command with no data port in effect: RFC 959's default data port."""

    line: bytes


class Closing(NamedTuple):
    """The control connection ends: the client's QUIT, or a final 221 or 421."""


Meaning = Address | Refused | Notice | Blind | DefaultPort | Closing | None


def verb_of(line: bytes) -> bytes:
    head = line[:8]
    for i, byte in enumerate(head):
        if byte in b" \t\r\n":
            return head[:i].upper()
    return head.upper()


class Protocol:
    """One control connection's protocol state: the state, the commands awaiting replies,
    and the multi-line reply in progress."""

    __slots__ = (
        "_data_port_set",
        "_handled",
        "_max_line",
        "_max_pending",
        "_multiline",
        "_noted_protected",
        "pending",
        "state",
    )

    def __init__(
        self, state: State, max_pending: int, max_line: int, from_login: bool = False
    ) -> None:
        self.state = state
        self.pending: list[bytes] = []  # verbs awaiting their replies, oldest first
        self._multiline: bytes | None = None  # code of the multi-line reply in progress
        self._handled = False  # the reply in progress had its address acted on (or refused)
        self._noted_protected = False
        self._max_pending, self._max_line = max_pending, max_line
        # A PORT/PASV is in effect for the next transfer. Unknown when joined mid-stream:
        # then assume one is, and never act on the default data port. `from_login`: what
        # went before were login lines only (the kernel's skip rule): none is in effect.
        self._data_port_set = state is not State.GREETING and not from_login

    def signal(self, signal: Signal) -> None:
        before = self.state
        self.state = TRANSITIONS.get((before, signal), before)
        # The first direction back in clear text ends BLIND; what was pending inside TLS is
        # unknowable. The second direction's return must not forget commands read since.
        if signal is Signal.CLEAR_TEXT and before is State.BLIND:
            self.pending.clear()
            self._multiline = None

    def replies_lost(self) -> None:
        """Bytes of the reply stream were never seen: a multi-line reply in progress may
        have ended among them, so the next line is read as a reply of its own; and so may
        the greeting (the server sends nothing else before it ends)."""
        self._multiline = None
        self.signal(Signal.GREETED)

    def commands_lost(self) -> None:
        """Bytes of the command stream were never seen (a gap): a PORT or PASV may have been
        among them, so the default data port is not assumed until the next transfer."""
        self._data_port_set = True

    # ---- commands (ORIGINAL) -----------------------------------------------------------------

    def command(self, line: bytes, overflow: bool) -> Meaning:
        max_pending, max_line = self._max_pending, self._max_line
        verb = verb_of(line)
        if len(self.pending) >= max_pending:
            del self.pending[0]
        self.pending.append(verb)
        if verb == b"QUIT" and self.state is State.COMMANDS:
            self.signal(Signal.QUIT)
            return Closing()
        if verb in _DATA_PORT_VERBS:
            self._data_port_set = True
            if verb in ADDRESS_VERBS and not _PASSIVE_VERBS.isdisjoint(self.pending):
                # The client went active: a passive command still waiting was refused
                # (its reply may have passed unseen) and will never be answered.
                self.pending[:-1] = [v for v in self.pending[:-1] if v not in _PASSIVE_VERBS]
        elif verb in TRANSFER_VERBS and self.state is State.COMMANDS:
            in_effect, self._data_port_set = self._data_port_set, False
            if not in_effect and not overflow:
                return DefaultPort(line)
        if verb in ADDRESS_VERBS:
            name = verb.decode()
            if overflow:
                return Refused(
                    Reason.LINE_TOO_LONG, f"{name} line over {max_line} bytes: not parsed", line
                )
            if b"\0" in line:
                return Refused(Reason.NUL, f"{name} line holds a NUL byte: not parsed", line)
            try:
                hp = parse_command(line)
            except Malformed as exc:
                return Refused(Reason.MALFORMED, f"{name} malformed: {exc}", line)
            return None if hp is None else Address(hp, line)
        if overflow:
            return Notice(EventKind.LONG_LINE, f"line over {max_line} bytes: not parsed")
        if verb in _PROTECTED and not self._noted_protected:
            self._noted_protected = True
            return Notice(
                EventKind.PROTECTED,
                f"{verb.decode()} (RFC 2228): commands are encoded from here; "
                "addresses inside them cannot be rewritten",
            )
        return None

    # ---- replies (REPLY) ---------------------------------------------------------------------

    def reply(self, line: bytes, overflow: bool) -> Meaning:
        code = line[:3]
        if self._multiline is not None:  # RFC 959 4.2: continue until "<code><SP>"
            open_code = self._multiline
            final = code == open_code and line[3:4] == b" "
            if final:
                self._multiline = None
                if open_code in _CLOSING_CODES:
                    return self._closing()
            if open_code in PASSIVE and not self._handled:
                return self._passive(open_code, line, overflow, final)
            return None
        if len(code) < 3 or not code.isdigit():
            return None
        final = line[3:4] != b"-"
        if not final:
            self._multiline = code
        answered = self._answer(code)
        self._handled = True
        if code in PASSIVE:
            if answered != PASSIVE[code]:
                return Refused(
                    Reason.UNSOLICITED,
                    f"{code.decode()} answers no {PASSIVE[code].decode()} of this client",
                    line,
                )
            self._handled = False
            return self._passive(code, line, overflow, final)
        if code == b"234" and answered == b"AUTH":
            self.signal(Signal.AUTH_ACCEPTED)
            self._multiline = None
            return Blind()
        if final and code in _CLOSING_CODES:
            return self._closing()
        return None

    def _closing(self) -> Closing:
        self.signal(Signal.SERVER_CLOSING)
        return Closing()

    def _answer(self, code: bytes) -> bytes | None:
        """The command this reply answers (popped), None for preliminary or unmatched ones."""
        if code[:1] == b"1":
            return None
        if self.state is State.GREETING:
            self.signal(Signal.GREETED)
            return None
        pending = self.pending
        if not pending:
            return None
        want = SEARCHED.get(code)
        if want is None:
            return pending.pop(0)
        if want not in pending:
            return None
        del pending[: pending.index(want) + 1]  # replies to the commands before it were lost
        return want

    def _passive(self, code: bytes, line: bytes, overflow: bool, final: bool) -> Meaning:
        name = code.decode()
        if overflow or b"\0" in line:
            if not final:
                return None  # the address may stand in a later line of the reply
            self._handled = True
            reason = Reason.LINE_TOO_LONG if overflow else Reason.NUL
            return Refused(reason, f"{name} line unreadable: not parsed", line)
        try:
            hp = parse_reply(code, line)
        except Malformed as exc:
            if not final:
                return None
            self._handled = True
            return Refused(Reason.MALFORMED, f"{name} malformed: {exc}", line)
        self._handled = True
        return Address(hp, line)

    def awaits_passive(self) -> bool:
        """A PASV, EPSV or LPSV waits for its reply (whose 227/228/229 we must rewrite)."""
        return not _PASSIVE_VERBS.isdisjoint(self.pending)

    # ---- split lines ---------------------------------------------------------------------

    def may_carry_address(self, from_client: bool, partial: bytes) -> bool:
        """Could this incomplete line still become one whose address needs rewriting?"""
        if self.state is State.BLIND:
            return False
        if from_client:
            head = partial[:4].upper()
            return any(v.startswith(head) for v in ADDRESS_VERBS)
        if self._multiline is not None:
            return self._multiline in PASSIVE and not self._handled
        if not self.awaits_passive():
            return False
        head = partial[:3]
        return any(code.startswith(head) for code in PASSIVE)
