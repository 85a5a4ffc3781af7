"""FTP protocol rules: what a control line means and what the gateway does about it.

Commands (ORIGINAL direction) and replies (REPLY) are matched as RFC 959 pairs them: each
reply answers the oldest command still waiting, 1yz replies are preliminary (RFC 959 4.2),
and a 227/228/229 is acted on only as the answer to a PASV/LPSV/EPSV this client sent.
Every address-bearing message passes the policy (anti-bounce, port floor, family) before a
rewrite is decided; a refusal leaves the line untouched and says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alg.core.events import Action, Dir, Event, Expect, Expectation, Unexpect
from alg.core.grammar import HostPort, Malformed, format_span, parse_command, parse_reply
from alg.core.seqadj import seq_diff
from alg.core.text import show_addr, show_line
from alg.core.tls import TlsWalker

if TYPE_CHECKING:
    from alg.core.session import Half, Session

_ADDR_VERBS = (b"PORT", b"EPRT", b"LPRT")
# RFC 959 4.1.2 (PASV -> 227), RFC 1639 (LPSV -> 228), RFC 2428 3 (EPSV -> 229).
_PASSIVE = {b"227": b"PASV", b"228": b"LPSV", b"229": b"EPSV"}
_PASSIVE_VERBS = frozenset(_PASSIVE.values())
# RFC 2228 protected commands: their content is encoded, so no address can be read there.
_PROTECTED = frozenset((b"ENC", b"MIC", b"CONF"))


def _verb(line: bytes) -> bytes:
    head = line[:8]
    for i, byte in enumerate(head):
        if byte in b" \t\r\n":
            return head[:i].upper()
    return head.upper()


def on_line(
    s: Session,
    half: Half,
    line: bytes,
    start: int,
    overflow: bool,
    now: float,
    out: list[Action],
) -> None:
    if half.dir is Dir.ORIGINAL:
        _command(s, half, line, start, overflow, now, out)
    else:
        _reply(s, half, line, start, overflow, now, out)


def may_carry_address(s: Session, half: Half, partial: bytes) -> bool:
    """Could this incomplete line still become one whose address needs rewriting?"""
    if half.dir is Dir.ORIGINAL:
        head = partial[:4].upper()
        return any(v.startswith(head) for v in _ADDR_VERBS)
    if s.multiline is not None:
        return s.multiline in _PASSIVE and not s.reply_found
    if not s.pending or _PASSIVE_VERBS.isdisjoint(s.pending):
        return False
    head = partial[:3]
    return any(code.startswith(head) for code in _PASSIVE)


def _refuse(s: Session, out: list[Action], reason: str, message: str, line: bytes) -> None:
    s.ctx.event(out, Event("refusal", s.id, message, reason, before=show_line(line)))


# ---- commands ----------------------------------------------------------------------------


def _command(
    s: Session,
    half: Half,
    line: bytes,
    start: int,
    overflow: bool,
    now: float,
    out: list[Action],
) -> None:
    verb = _verb(line)
    pending = s.pending
    if pending is None:
        pending = s.pending = []
    if len(pending) >= s.ctx.config.max_pending:
        del pending[0]
    pending.append(verb)
    if verb in _ADDR_VERBS:
        if overflow:
            _refuse(
                s,
                out,
                "line-too-long",
                f"{verb.decode()} line over {s.ctx.config.max_line} bytes: not parsed",
                line,
            )
            return
        if b"\0" in line:
            _refuse(s, out, "nul", f"{verb.decode()} line holds a NUL byte: not parsed", line)
            return
        try:
            hp = parse_command(line)
        except Malformed as exc:
            _refuse(s, out, "malformed", f"{verb.decode()} malformed: {exc}", line)
            return
        if hp is not None:
            _address(s, half, hp, line, start, now, out)
    elif overflow:
        s.ctx.event(
            out,
            Event(
                "long-line",
                s.id,
                f"{show_line(verb)} line over {s.ctx.config.max_line} bytes: not parsed",
            ),
        )
    elif verb in _PROTECTED and not s.tls_reported:
        s.tls_reported = True
        s.ctx.event(
            out,
            Event(
                "protected",
                s.id,
                f"{verb.decode()} (RFC 2228): commands are "
                "encoded from here; addresses inside them cannot be rewritten",
            ),
        )


# ---- replies -----------------------------------------------------------------------------


def _reply(
    s: Session,
    half: Half,
    line: bytes,
    start: int,
    overflow: bool,
    now: float,
    out: list[Action],
) -> None:
    code = line[:3]
    if s.multiline is not None:  # RFC 959 4.2: continue until "<code><SP>"
        final = code == s.multiline and line[3:4] == b" "
        if s.multiline in _PASSIVE and not s.reply_found:
            _passive_line(s, half, s.multiline, line, start, overflow, final, now, out)
        if final:
            s.multiline = None
        return
    if len(code) < 3 or not code.isdigit():
        s.ctx.count("reply-not-a-reply")
        return
    final = line[3:4] != b"-"
    if not final:
        s.multiline = code
    answered = _answer(s, code)
    s.reply_found = True
    if code in _PASSIVE:
        if answered != _PASSIVE[code]:
            _refuse(
                s,
                out,
                "unsolicited",
                f"{code.decode()} answers no {_PASSIVE[code].decode()} of this client",
                line,
            )
            return
        s.reply_found = False
        _passive_line(s, half, code, line, start, overflow, final, now, out)
    elif code == b"234" and answered == b"AUTH":
        _go_blind(s, out)


def _answer(s: Session, code: bytes) -> bytes | None:
    """The command this reply answers (popped), None for preliminary or unmatched ones."""
    if code[:1] == b"1":
        return None
    if not s.greeted:
        s.greeted = True
        return None
    pending = s.pending
    if not pending:
        return None
    want = _PASSIVE.get(code)
    if want is None:
        return pending.pop(0)
    if want not in pending:
        return None
    del pending[: pending.index(want) + 1]  # replies to the commands before it were lost
    return want


def _passive_line(
    s: Session,
    half: Half,
    code: bytes,
    line: bytes,
    start: int,
    overflow: bool,
    final: bool,
    now: float,
    out: list[Action],
) -> None:
    if overflow or b"\0" in line:
        if final:
            _refuse(
                s,
                out,
                "line-too-long" if overflow else "nul",
                f"{code.decode()} line unreadable: not parsed",
                line,
            )
        return
    try:
        hp = parse_reply(code, line)
    except Malformed as exc:
        if final:
            _refuse(s, out, "malformed", f"{code.decode()} malformed: {exc}", line)
        return
    s.reply_found = True
    _address(s, half, hp, line, start, now, out)


def _go_blind(s: Session, out: list[Action]) -> None:
    for half in (s.orig, s.reply):
        half.tls = TlsWalker()
        half.lines.reset(0)
    s.multiline = None
    s.ctx.event(
        out,
        Event(
            "blind",
            s.id,
            "AUTH TLS accepted (234): the control connection is encrypted from "
            "here on; PORT/PASV cannot be seen or rewritten until the client sends CCC "
            "(active mode behind NAT will fail; passive works only if the server names its "
            "public address)",
        ),
    )


# ---- addresses ---------------------------------------------------------------------------


def _address(
    s: Session,
    half: Half,
    hp: HostPort,
    line: bytes,
    start: int,
    now: float,
    out: list[Action],
) -> None:
    """Policy, then the expectation and the rewrite of one address-bearing message."""
    what = hp.kind.value
    if s.reply_key is None and s.ctx.mapper is not None:
        found = s.ctx.mapper(s.key)
        if found is not None:  # the packets of the reply direction will index it
            s.key, s.reply_key = found
    if s.reply_key is None:
        _refuse(
            s,
            out,
            "nat-unknown",
            f"{what}: the connection's NAT mapping is unknown (no conntrack entry)",
            line,
        )
        return
    if hp.family and hp.family != s.family:
        _refuse(
            s,
            out,
            "family",
            f"{what} names an IPv{hp.family} address on an IPv{s.family} control connection",
            line,
        )
        return
    orig, reply = s.key, s.reply_key
    command = half.dir is Dir.ORIGINAL
    # The announcer must name itself (anti-bounce, RFC 2577 3); its peer will connect.
    if command:
        own, outside, peer = orig[0], reply[2], reply[0]
    else:
        own, outside, peer = reply[0], orig[2], orig[0]
    addr = hp.addr if hp.addr is not None else own
    if addr != own:
        if s.ctx.config.allow_fxp:
            s.ctx.event(
                out,
                Event(
                    "fxp",
                    s.id,
                    f"{what} names {show_addr(addr)}, not {show_addr(own)}: "
                    "FXP allowed, passed unchanged",
                    before=show_line(line),
                ),
            )
            return
        _refuse(
            s,
            out,
            "bounce",
            f"{what} names {show_addr(addr)}, not the "
            f"{'client' if command else 'server'} {show_addr(own)}",
            line,
        )
        return
    if hp.port < s.ctx.config.min_data_port:
        _refuse(
            s,
            out,
            "low-port",
            f"{what} names data port {hp.port} < {s.ctx.config.min_data_port}",
            line,
        )
        return
    if outside == own:
        s.ctx.event(
            out,
            Event(
                "unchanged",
                s.id,
                f"{what} {show_addr(own)}:{hp.port}: no NAT on this side, nothing to rewrite",
                before=show_line(line),
            ),
        )
        return
    if len(half.adj.active) >= s.ctx.config.max_corrections:
        _refuse(
            s,
            out,
            "too-many-rewrites",
            f"{what}: {len(half.adj.active)} rewrites not yet acknowledged by the peer",
            line,
        )
        return
    span = (start + hp.start) & 0xFFFFFFFF
    if seq_diff(span, half.sent_upto) < 0:
        _refuse(
            s,
            out,
            "split-released",
            f"{what}: part of the address already left the gateway unchanged (hold timed out)",
            line,
        )
        return
    proposal = Expectation(
        session=s.id,
        kind=hp.kind,
        family=s.family,
        master=orig,
        peer=peer,
        outside=outside,
        outside_port=hp.port,
        inside=own,
        inside_port=hp.port,
        nat_dir=Dir.REPLY if command else Dir.ORIGINAL,
        timeout=s.ctx.config.expect_timeout,
    )
    port = s.ctx.choose_port(proposal)
    if port is None:
        _refuse(s, out, "no-port", f"{what}: no outside port could be reserved", line)
        return
    exp = proposal if port == hp.port else proposal._replace(outside_port=port)
    old_exp = s.expect
    if old_exp is not None and (old_exp.outside, old_exp.outside_port) != (outside, port):
        out.append(Unexpect(old_exp))  # at most one outstanding per session: newest wins
    s.expect, s.expect_deadline = exp, now + exp.timeout
    out.append(Expect(exp))
    new = format_span(hp, s.ctx.config.announce.get(outside, outside), port)
    old = line[hp.start : hp.end]
    after = line[: hp.start] + new + line[hp.end :]
    if new != old:
        half.adj.add(span, len(old), new)
    if new == old:  # a 229 keeps its port: only the expectation was needed
        message = f"{what} port {port}: text unchanged, data connection sent on to {show_addr(own)}"
        s.ctx.event(out, Event("forward", s.id, message, before=show_line(line)))
        return
    s.ctx.event(
        out,
        Event(
            "rewrite",
            s.id,
            f"{what} {show_addr(own)}:{hp.port} -> {show_addr(outside)}:{port} "
            f"(delta {len(new) - len(old):+d})",
            before=show_line(line),
            after=show_line(after),
        ),
    )
