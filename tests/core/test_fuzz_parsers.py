"""Property tests for the grammar and the packet code, on generated and on mangled input.

The invariants live in parser_invariants.py (shared with the coverage-guided atheris target
fuzz_atheris.py): only the core's own exceptions escape; a parsed address span rewritten to
any address and port parses back to exactly those; a parsed packet rebuilds with valid
checksums and the new seq/ack/payload.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg.core.grammar import Kind
from alg.core.packet import build
from tests.core.parser_invariants import check_command, check_packet, check_reply

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
octets = st.integers(0, 255)
ports = st.integers(1, 65535)
addr4 = st.binary(min_size=4, max_size=4)
addr16 = st.binary(min_size=16, max_size=16)
space = st.sampled_from(["", " ", "\t", "  "])
eol = st.sampled_from([b"", b"\n", b"\r\n"])
delims = st.sampled_from(list("|!#$%&'*+-./;=?@^_`~x,"))


def _six(addr: bytes, port: int, sep: str) -> str:
    return sep.join(str(v) for v in (*addr, port >> 8, port & 0xFF))


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    """Address-bearing commands in the forms the grammar accepts, with varied spelling."""
    verb = draw(st.sampled_from(["PORT", "EPRT", "LPRT"]))
    verb = "".join(c.lower() if draw(st.booleans()) else c for c in verb)
    port = draw(ports)
    if verb.upper() == "PORT":
        arg = _six(draw(addr4), port, draw(space) + "," + draw(space))
    elif verb.upper() == "EPRT":
        d = draw(delims)
        v6 = draw(st.booleans())
        ip = ipaddress.ip_address(draw(addr16) if v6 else draw(addr4))
        arg = f"{d}{2 if v6 else 1}{d}{ip}{d}{port}{d}"
    else:
        raw = draw(st.one_of(addr4, addr16))
        af = 4 if len(raw) == 4 else 6
        arg = f"{af},{len(raw)}," + ",".join(map(str, raw)) + f",2,{port >> 8},{port & 0xFF}"
    return f"{verb}{draw(st.sampled_from([' ', chr(9)]))}{arg}{draw(space)}".encode() + draw(eol)


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([Kind.PASV_227, Kind.LPSV_228, Kind.EPSV_229]))
    text = draw(st.sampled_from(["Entering Passive Mode ", "ok ", "=", ""]))
    port = draw(ports)
    if kind is Kind.PASV_227:
        six = _six(draw(addr4), port, ",")
        body = f"({six})" if draw(st.booleans()) else six
    elif kind is Kind.EPSV_229:
        d = draw(delims)
        body = f"({d}{d}{d}{port}{d})"
    else:
        raw = draw(st.one_of(addr4, addr16))
        af = 4 if len(raw) == 4 else 6
        body = f"({af},{len(raw)}," + ",".join(map(str, raw)) + f",2,{port >> 8},{port & 0xFF})"
    return f"{kind.value} {text}{body}".encode() + draw(eol)


def _mangle(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Overwrite bytes at (position, value) pairs: near-valid input reaches deep branches."""
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


edits = st.lists(st.tuples(st.integers(0, 10_000), octets), max_size=4)
new_addr = st.binary(min_size=16, max_size=16)


@SETTINGS
@given(commands(), new_addr, ports)
def test_every_well_formed_command_parses_and_rewrites_exactly(
    line: bytes, addr: bytes, port: int
) -> None:
    assert check_command(line, addr, port) is not None, line


@SETTINGS
@given(replies(), new_addr, ports)
def test_every_well_formed_reply_parses_and_rewrites_exactly(
    line: bytes, addr: bytes, port: int
) -> None:
    assert check_reply(line, addr, port) is not None, line


@SETTINGS
@given(st.one_of(commands(), replies()), edits, new_addr, ports)
def test_mangled_lines_raise_only_malformed(
    line: bytes, changes: list[tuple[int, int]], addr: bytes, port: int
) -> None:
    mangled = _mangle(line, changes)
    check_command(mangled, addr, port)
    check_reply(mangled, addr, port)


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_malformed(line: bytes) -> None:
    check_command(line)
    check_reply(line)
    check_command(b"PORT " + line)
    check_command(b"EPRT " + line)
    check_command(b"LPRT " + line)
    check_reply(b"227 " + line)
    check_reply(b"228 " + line)
    check_reply(b"229 " + line)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    src, dst = (draw(addr16), draw(addr16)) if v6 else (draw(addr4), draw(addr4))
    options = draw(st.binary(max_size=40))
    options = options[: len(options) // 4 * 4]
    u32 = st.integers(0, 0xFFFFFFFF)
    return build(
        src,
        dst,
        draw(ports),
        draw(ports),
        draw(u32),
        draw(u32),
        draw(st.integers(0, 0x1FF)) & 0xFF,
        draw(st.binary(max_size=64)),
        options,
    )


@SETTINGS
@given(packets(), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.binary(max_size=80))
def test_built_packets_parse_and_rebuild_with_valid_checksums(
    data: bytes, seq: int, ack: int, payload: bytes
) -> None:
    assert check_packet(data, seq, ack, payload) is not None


@SETTINGS
@given(packets(), edits, st.integers(0, 80), st.binary(max_size=40))
def test_mangled_or_truncated_packets_raise_only_packet_errors(
    data: bytes, changes: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    mangled = _mangle(data, changes)
    check_packet(mangled)
    check_packet(mangled[: max(0, len(mangled) - cut)])
    check_packet(mangled + tail)


@SETTINGS
@given(st.binary(max_size=120))
def test_arbitrary_bytes_are_never_taken_for_more_than_they_are(data: bytes) -> None:
    check_packet(data)
    check_packet(b"\x45" + data)
    check_packet(b"\x60" + data)


numbers = st.one_of(st.integers(0, 300), st.integers(0, 10**6), st.just(10**30))


@SETTINGS
@given(st.lists(numbers, min_size=6, max_size=6), st.sampled_from(["PORT ", "227 ="]))
def test_six_numbers_are_accepted_exactly_when_they_are_octets_and_a_port(
    values: list[int], prefix: str
) -> None:
    line = (prefix + ",".join(map(str, values)) + "\r\n").encode()
    hp = check_reply(line) if prefix.startswith("227") else check_command(line)
    valid = max(values) <= 255 and values[4] * 256 + values[5] > 0
    assert (hp is not None) == valid, line
    if hp is not None:
        assert hp.addr == bytes(values[:4]) and hp.port == values[4] * 256 + values[5]


@SETTINGS
@given(numbers, st.sampled_from(["EPRT |1|10.0.0.1|{}|", "229 (|||{}|)"]))
def test_decimal_ports_are_accepted_exactly_in_1_to_65535(port: int, form: str) -> None:
    line = form.format(port).encode()
    hp = check_reply(line) if form.startswith("229") else check_command(line)
    assert (hp is not None) == (1 <= port <= 65535), line
    assert hp is None or hp.port == port
