"""The lines the kernel keeps to itself: rules before the queue rules let a segment pass
without queueing it when nothing in it can matter to ftp-alg.

Each queued segment costs the daemon a wake-up, a look at the packet and a verdict (the kernel
forwards the packet inside that call), and most lines of a session matter to nobody: the
login, and the server's plain replies (200, 150, 226, 250, 550, ...). Three kinds of rule:

- **Login lines** (both directions), until the daemon first meets a connection: the greeting,
  USER, PASS, SYST, TYPE and their plain replies, and a QUIT (no session to close). The
  client's rule requires that the connection lacks the watch bit in its connmark. The daemon
  sets the bit (ctnetlink, CTA_MARK with CTA_MARK_MASK) when it first looks the connection
  up, in the same round trip and before the verdict of its first segment, so from then on
  every command is queued and the command stream has no holes.
- **Plain replies** (server to client), always: a reply stream may have holes anywhere. The
  core reads a hole in it as lines that passed (`Config.replies_unqueued`): every skipped
  segment is whole lines, so the next queued one starts a line. The replies that matter
  (227/228/229, 234, 421) are never skipped, and the command stream, all queued, says
  which command a reply can answer. The client acknowledges the skipped bytes in its next
  command, which the daemon sees: that is how a hole it held a reply behind is explained
  (alg.core.session, `Session._unqueued`), and how the server's acks of a rewritten PORT,
  carried on skipped replies, are made up for (alg.core.stream, `Stream.answered`).

- **Passive exchanges** of a connection without DNAT that the daemon has not met: the passive
  command, its reply, and the one transfer that uses it (`passive_rules`, below).

A segment passes the login or plain-reply rule only when all of these hold:

- it ends in a line feed (a line split over segments is queued: its rest may follow);
- it starts with one of the verbs or reply codes below (-m bpf: a continuation of a split line
  starts mid-line, not with one of these, and is queued);
- nowhere in it (-m string, any case) stands a word that ftp-alg acts on: an address or passive
  command, a transfer command (RFC 959's default data port is decided by them), AUTH, or a
  227/228/229/234/421 reply. A client that pipelines "PASS x\\r\\nPASV\\r\\n" in one
  segment has it queued;
- for a command: the connection lacks the watch bit.

So what the daemon never sees of a command stream is a run of login lines at its start, and
on a connection without DNAT passive exchanges among them: its first segment finds a session
that is logged in, with no command waiting, and a data port set only if the passive bits say
so. A daemon that meets a connection whose watch bit is set (restarted, or the standby after
a failover) knows it joined mid-stream. `watch_mark = 0` in the config turns all the rules and
the bits off, `passive_mark = 0` the passive rules.
"""

from __future__ import annotations

# Client commands that start a skippable segment: 4 bytes each, compared in lower case
# (the program ORs 0x20 into every byte, which lowers letters and leaves a space a space).
CLIENT_PREFIXES = (
    b"user",
    b"pass",
    b"acct",
    b"syst",
    b"type",
    b"mode",
    b"stru",
    b"noop",
    b"opts",
    b"cdup",
    b"xpwd",
    b"cwd ",
    b"quit",  # a connection nobody watches has no session to close
)
# Server replies that start a skippable segment: a single-line reply with one of these codes.
# Login (RFC 959 5.4): 220, 230, 331, 332, 215, 200, 202, 250, 257. Transfers and files:
# 150, 125, 226, 225, 350, 213, 211, 212, 214; 221 (the session closes at the QUIT). Errors
# nothing of ftp-alg reads: 425, 426, 450, 451, 452, 500, 501, 502, 503, 504, 530, 550, 553.
SERVER_PREFIXES = tuple(
    b"%d " % code
    for code in (
        *(220, 230, 331, 332, 215, 200, 202, 250, 257),
        *(150, 125, 226, 225, 350, 213, 211, 212, 214, 221),
        *(425, 426, 450, 451, 452, 500, 501, 502, 503, 504, 530, 550, 553),
    )
)
# Words whose presence anywhere in a segment queues it (matched in any case).
CLIENT_WORDS = (
    "PORT",
    "EPRT",
    "LPRT",
    "PASV",
    "EPSV",
    "LPSV",
    "AUTH",
    "RETR",
    "STOR",
    "STOU",
    "APPE",
    "LIST",
    "NLST",
    "MLSD",
)
SERVER_WORDS = ("227", "228", "229", "234", "421")
DEFAULT_WATCH_MARK = 0x01000000

# The passive rules: connections with no DNAT only (a client behind masquerade, or no NAT), and
# only while no daemon watches them. A passive command there needs nothing of ftp-alg: its
# 227/228/229 names the server's own address, which no NAT hides, so the policy would leave
# it unchanged and create no expectation (the client's data connection is an ordinary
# outgoing one). The kernel remembers in the connmark (passive_mark, two bits) that a passive
# command passed; while it is in effect the passive reply passes too, and so does the one
# transfer command that uses it. RFC 959's default data port (a transfer with no PORT/PASV
# before it) is decided as in the core, so a transfer no passive command covers is queued.
# A daemon that meets the connection later reads the bits (Found.passive).
PASSIVE_PREFIXES = (b"pasv", b"epsv", b"lpsv")
PASSIVE_REPLIES = (b"227 ", b"228 ", b"229 ")
TRANSFER_PREFIXES = (b"retr", b"stor", b"stou", b"appe", b"list", b"nlst", b"mlsd")
# A passive command's segment holds no other word the gateway acts on; a transfer's holds no
# address, passive or AUTH word, nor a second transfer (a line feed before the verb).
PASSIVE_WORDS = tuple(w for w in CLIENT_WORDS if w.lower().encode() not in PASSIVE_PREFIXES)
TRANSFER_WORDS = tuple(w for w in CLIENT_WORDS if w.lower().encode() not in TRANSFER_PREFIXES)
PASSIVE_REPLY_WORDS = ("234", "421")
DEFAULT_PASSIVE_MARK = 0x06000000  # two bits: see passive_bits

# Classic BPF opcodes (linux/filter.h)
_LDX_MSH, _LDB_IND, _LDW_IND, _LDB_ABS, _LDH_ABS = 0xB1, 0x50, 0x40, 0x30, 0x28
_AND, _OR, _RSH, _ADD_X, _ADD, _SUB = 0x54, 0x44, 0x74, 0x0C, 0x04, 0x14
_TAX, _ST, _LDX_MEM = 0x07, 0x02, 0x61
_JEQ, _JGT_X, _RET = 0x15, 0x2D, 0x06

Insn = tuple[int, int, int, int]


def skip_program(
    family: int, from_client: bool, prefixes: tuple[bytes, ...] | None = None
) -> list[Insn]:
    """The -m bpf program: true for a segment that is whole lines (ends in LF) and starts with
    one of `prefixes` (default: the direction's login verbs or plain replies; a command's
    are compared in lower case). It sees the packet from its IP header; an IPv6 packet
    with extension headers, or a payload shorter than 4 bytes, is no match (queued)."""
    prog: list[tuple[int, int | str, int | str, int]] = []
    if family == 4:
        prog += [
            (_LDX_MSH, 0, 0, 0),  # X = IP header length
            (_LDB_IND, 0, 0, 12),  # TCP data offset byte
            (_AND, 0, 0, 0xF0),
            (_RSH, 0, 0, 2),
            (_ADD_X, 0, 0, 0),  # A = payload offset
            (_ST, 0, 0, 0),
            (_TAX, 0, 0, 0),
            (_LDH_ABS, 0, 0, 2),  # A = total length
        ]
    else:
        prog += [
            (_LDB_ABS, 0, 0, 6),  # next header: TCP right after the fixed header only
            (_JEQ, 0, "fail", 6),
            (_LDB_ABS, 0, 0, 40 + 12),
            (_AND, 0, 0, 0xF0),
            (_RSH, 0, 0, 2),
            (_ADD, 0, 0, 40),  # A = payload offset
            (_ST, 0, 0, 0),
            (_TAX, 0, 0, 0),
            (_LDH_ABS, 0, 0, 4),  # payload length after the fixed header
            (_ADD, 0, 0, 40),  # A = total length
        ]
    if prefixes is None:
        prefixes = CLIENT_PREFIXES if from_client else SERVER_PREFIXES
    prog += [
        (_JGT_X, 0, "fail", 0),  # some payload
        (_SUB, 0, 0, 1),
        (_TAX, 0, 0, 0),
        (_LDB_IND, 0, 0, 0),  # its last byte
        (_JEQ, 0, "fail", 0x0A),
        (_LDX_MEM, 0, 0, 0),
        (_LDW_IND, 0, 0, 0),  # its first 4 bytes
    ]
    if from_client:
        prog.append((_OR, 0, 0, 0x20202020))
    prog += [(_JEQ, "match", 0, int.from_bytes(p, "big")) for p in prefixes]
    prog += [(_RET, 0, 0, 0), (_RET, 0, 0, 1)]
    fail, match = len(prog) - 2, len(prog) - 1
    out: list[Insn] = []
    for i, (code, jt, jf, k) in enumerate(prog):
        targets = [fail if j == "fail" else match if j == "match" else None for j in (jt, jf)]
        jt_off, jf_off = (0 if t is None else t - i - 1 for t in targets)
        out.append((code, jt_off, jf_off, k))
    return out


def bytecode(program: list[Insn]) -> str:
    """The program as iptables' --bytecode takes it (nfbpf_compile's format)."""
    return ",".join([str(len(program)), *(" ".join(map(str, insn)) for insn in program)])


def _strings(words: tuple[str, ...]) -> tuple[str, ...]:
    out: tuple[str, ...] = ()
    for word in words:  # in the order iptables-save lists them (`ftp-alg doctor` compares)
        out += ("-m", "string", "!", "--string", word, "--algo", "bm", "--icase")
    return out


def _after_lf(verbs: tuple[bytes, ...]) -> tuple[str, ...]:
    """No line after the first starts with one of `verbs` (any case), as iptables-save
    shows a --hex-string."""
    out: tuple[str, ...] = ()
    for verb in verbs:
        hexed = f"|0a{verb.hex()}|"
        out += ("-m", "string", "!", "--hex-string", hexed, "--algo", "bm", "--icase")
    return out


def passive_mark_error(passive: int, watch: int) -> str | None:
    """Why `passive` cannot be the passive rules' mark beside the watch mark `watch`, or None
    (the daemon's config and the rule options refuse the same values)."""
    if passive and (passive.bit_count() != 2 or passive > 0xFFFFFFFF or passive & watch):
        return "passive_mark must be 0 or two connmark bits that watch_mark does not use"
    return None


def passive_bits(mark: int) -> tuple[int, int]:
    """passive_mark's two bits: (passive, used). The lower says a passive command passed,
    both that a transfer used it since."""
    low = mark & -mark
    return low, mark & ~low


def passive_rules(
    family: int,
    to_ports: tuple[str, ...],
    from_ports: tuple[str, ...],
    watch: int,
    mark: int,
) -> tuple[tuple[str, ...], ...]:
    """The rules that let the passive exchanges of an unwatched connection without DNAT pass
    (see PASSIVE_PREFIXES). A rule that changes the connmark is followed by one that lets
    the segment leave the chain, and must still match after the change: hence two bits.

    - a passive command: passive set, used clear; it passes;
    - its reply passes while passive is set and used clear;
    - a transfer: one that finds both bits set (its PASV was used already) clears passive
      and is queued; one that finds passive alone sets used and passes."""
    passive, used = passive_bits(mark)
    every = watch | mark
    no_dnat: tuple[str, ...] = ("-m", "conntrack", "--ctstate", "ESTABLISHED")
    no_dnat += ("-m", "conntrack", "!", "--ctstate", "DNAT")

    def state(value: int) -> tuple[str, ...]:
        return ("-m", "connmark", "--mark", f"{value:#x}/{every:#x}")

    def program(from_client: bool, prefixes: tuple[bytes, ...]) -> tuple[str, ...]:
        return ("-m", "bpf", "--bytecode", bytecode(skip_program(family, from_client, prefixes)))

    command = (*to_ports, *no_dnat, "-m", "connmark", "--mark", f"0x0/{watch:#x}")
    command += (*program(True, PASSIVE_PREFIXES), *_strings(PASSIVE_WORDS))
    reply = (*from_ports, *no_dnat, *state(passive), *program(False, PASSIVE_REPLIES))
    reply += _strings(PASSIVE_REPLY_WORDS)
    transfer = (*program(True, TRANSFER_PREFIXES), *_strings(TRANSFER_WORDS))
    transfer += _after_lf(TRANSFER_PREFIXES)
    spent = (*to_ports, *no_dnat, *state(mark), *transfer)
    fresh = (*to_ports, *no_dnat, *state(passive), *transfer)
    return (
        (*command, "-j", "CONNMARK", "--set-xmark", f"{passive:#x}/{mark:#x}"),
        (*command, "-j", "RETURN"),
        (*reply, "-j", "RETURN"),
        (*spent, "-j", "CONNMARK", "--set-xmark", f"0x0/{passive:#x}"),
        (*fresh, "-j", "CONNMARK", "--set-xmark", f"{used:#x}/{used:#x}"),
        (*spent, "-j", "RETURN"),
    )


def skip_rule(family: int, from_client: bool, ports: tuple[str, ...], mark: int) -> tuple[str, ...]:
    """The rule that lets a skippable segment leave the chain before the queue rule: a
    command only while the connection lacks the watch bit `mark`, a reply always."""
    strings = _strings(CLIENT_WORDS if from_client else SERVER_WORDS)
    unwatched = ("-m", "connmark", "--mark", f"0x0/{mark:#x}") if from_client else ()
    return (
        *ports,
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED",
        *unwatched,
        "-m",
        "bpf",
        "--bytecode",
        bytecode(skip_program(family, from_client)),
        *strings,
        "-j",
        "RETURN",
    )
