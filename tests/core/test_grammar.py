"""The address grammar: every sample whole and with trailing data; values strict, form lenient."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.core.grammar import HostPort, Kind, Malformed, format_span, parse_command, parse_reply

V4 = ipaddress.IPv4Address


def cmd(line: bytes) -> HostPort:
    hp = parse_command(line)
    assert hp is not None
    return hp


@pytest.mark.parametrize(
    ("line", "addr", "port", "span"),
    [
        (b"PORT 192,168,0,1,4,1\r\n", "192.168.0.1", 1025, b"192,168,0,1,4,1"),
        (b"port 192,168,0,1,4,1\n", "192.168.0.1", 1025, b"192,168,0,1,4,1"),
        (b"PORT  10, 0,0,1 ,255,255 \r\n", "10.0.0.1", 65535, b"10, 0,0,1 ,255,255"),
        (b"PORT 0,0,0,0,0,1\r\n", "0.0.0.0", 1, b"0,0,0,0,0,1"),
        (b"PORT 010,001,2,3,4,5\r\n", "10.1.2.3", 1029, b"010,001,2,3,4,5"),
        (b"PORT 1,2,3,4,5,6", "1.2.3.4", 1286, b"1,2,3,4,5,6"),  # no line end yet
    ],
)
def test_port(line: bytes, addr: str, port: int, span: bytes) -> None:
    hp = cmd(line)
    assert (hp.kind, hp.family, hp.addr, hp.port) == (Kind.PORT, 4, V4(addr).packed, port)
    assert line[hp.start : hp.end] == span


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"PORT 114,115\r\n", "not h1,h2"),
        (b"PORT 1234\r\n", "not h1,h2"),
        (b"PORT " + b"1234" * 16 + b"\r\n", "not h1,h2"),
        (b"PORT 1,2,3,256,0,1\r\n", "256"),
        (b"PORT 1,2,3,4,0,0\r\n", "port 0"),
        (b"PORT 1,2,3,4,1,1000\r\n", "1000"),
        (b"PORT 1,2,3,4,5,6,7\r\n", "not h1,h2"),
        (b"PORT -1,2,3,4,5,6\r\n", "not h1,h2"),
        (b"PORT\r\n", "not h1,h2"),
        (b"PORT 1,2,3,4,5,6 junk\r\n", "not h1,h2"),
        (b"EPRT |3|1.2.3.4|80|\r\n", "neither 1 nor 2"),
        (b"EPRT |1|1.2.3|80|\r\n", "not dotted"),
        (b"EPRT |1|1.2.3.4|0|\r\n", "not 1..65535"),
        (b"EPRT |1|1.2.3.4|65536|\r\n", "not 1..65535"),
        (b"EPRT |2|fe80::1%eth0|80|\r\n", "zone"),
        (b"EPRT |2|1.2.3.4|80|\r\n", "not IPv6"),
        (b"EPRT |1|1.2.3.4|80\r\n", "not <d>"),
        (b"LPRT 4,4,1,2,3,4,2,4\r\n", "wrong number"),
        (b"LPRT 5,4,1,2,3,4,2,4,1\r\n", "family 5"),
        (b"LPRT 4,4,1,2,3,4,3,0,4,1\r\n", "wrong number"),
        (b"LPRT 4,4,1,2,3,4,2,4,1,9\r\n", "wrong number"),
    ],
)
def test_malformed_commands_say_why(line: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        parse_command(line)


@pytest.mark.parametrize("line", [b"PASV\r\n", b"PORTS 1\r\n", b"LIST\r\n", b"EPRTX\r\n", b""])
def test_other_commands_are_not_address_commands(line: bytes) -> None:
    assert parse_command(line) is None


def test_eprt_any_delimiter_and_both_families() -> None:
    hp = cmd(b"EPRT |1|132.235.1.2|6275|\r\n")
    assert (hp.family, hp.addr, hp.port, hp.delimiter) == (4, V4("132.235.1.2").packed, 6275, "|")
    hp = cmd(b"eprt !2!1080::8:800:200C:417A!5282!\r\n")
    assert hp.family == 6 and hp.port == 5282 and hp.delimiter == "!"
    assert hp.addr == ipaddress.IPv6Address("1080::8:800:200C:417A").packed
    assert format_span(hp, ipaddress.IPv6Address("2001:db8::1").packed, 7000) == (
        b"!2!2001:db8::1!7000!"
    )


def test_lprt_both_families() -> None:
    hp = cmd(b"LPRT 4,4,132,235,1,2,2,24,131\r\n")
    assert (hp.kind, hp.addr, hp.port) == (Kind.LPRT, V4("132.235.1.2").packed, 6275)
    v6 = "6,16," + ",".join(["253"] + ["0"] * 14 + ["1"]) + ",2,4,1"
    hp = cmd(f"LPRT {v6}\r\n".encode())
    assert hp.family == 6 and hp.port == 1025
    assert format_span(hp, hp.addr or b"", 1025).decode() == v6


@pytest.mark.parametrize(
    ("line", "addr", "port"),
    [
        (b"227 Entering Passive Mode (10,0,0,5,195,149)\r\n", "10.0.0.5", 50069),
        (b"227 Entering Passive Mode (10,0,0,5,195,149).\r\n", "10.0.0.5", 50069),
        (b"227 entering passive mode 10,0,0,5,195,149\r\n", "10.0.0.5", 50069),
        (b"227 =10,0,0,5,195,149\n", "10.0.0.5", 50069),
        (b"227-Entering Passive Mode (10,0,0,5,1,1)\r\n", "10.0.0.5", 257),
    ],
)
def test_227_rfc1123_scan_for_first_digit(line: bytes, addr: str, port: int) -> None:
    hp = parse_reply(b"227", line)
    assert (hp.addr, hp.port) == (V4(addr).packed, port)
    assert line[hp.start : hp.end].startswith(b"10,0,0,5")


@pytest.mark.parametrize(
    ("code", "line", "why"),
    [
        (b"227", b"227 Response to PASV command\r\n", "no h1"),
        (b"227", b"227 Entering Passive Mode v2 (10,0,0,5,1,1)\r\n", "no h1"),
        (b"227", b"227 Entering Passive Mode (10,0,0,500,1,1)\r\n", "500"),
        (b"229", b"229 Entering Extended Passive Mode (|||0|)\r\n", "not 1..65535"),
        (b"229", b"229 Entering Extended Passive Mode (||6446|)\r\n", "no \\("),
        (b"228", b"228 Entering Long Passive Mode\r\n", "no \\("),
        (b"200", b"200 OK\r\n", "no address"),
    ],
)
def test_malformed_replies_say_why(code: bytes, line: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        parse_reply(code, line)


def test_229_and_228() -> None:
    hp = parse_reply(b"229", b"229 Entering Extended Passive Mode (|||6446|)\r\n")
    assert (hp.kind, hp.addr, hp.port) == (Kind.EPSV_229, None, 6446)
    hp = parse_reply(b"229", b"229 Extended Passive mode OK (!!!80!)\r\n")
    assert hp.port == 80 and hp.delimiter == "!"
    hp = parse_reply(b"228", b"228 Entering Long Passive Mode (4,4,10,0,0,5,2,195,149)\r\n")
    assert (hp.kind, hp.addr, hp.port) == (Kind.LPSV_228, V4("10.0.0.5").packed, 50069)


def test_rewrite_replaces_only_the_span() -> None:
    line = b"227 Entering Passive Mode (10,0,0,5,195,149). Welcome\r\n"
    hp = parse_reply(b"227", line)
    new = format_span(hp, V4("203.0.113.9").packed, 2000)
    assert line[: hp.start] + new + line[hp.end :] == (
        b"227 Entering Passive Mode (203,0,113,9,7,208). Welcome\r\n"
    )


octet = st.integers(0, 255)
ports = st.integers(1, 65535)


@given(st.binary(min_size=4, max_size=4), ports, st.sampled_from([b"\r\n", b"\n", b""]))
def test_port_roundtrip(addr: bytes, port: int, end: bytes) -> None:
    probe = HostPort(Kind.PORT, 4, addr, port, 0, 0)
    line = b"PORT " + format_span(probe, addr, port) + end
    hp = cmd(line)
    assert (hp.addr, hp.port) == (addr, port)


@given(st.binary(min_size=16, max_size=16), ports, st.sampled_from(["|", "!", "#", "x"]))
def test_eprt_v6_roundtrip(addr: bytes, port: int, d: str) -> None:
    probe = HostPort(Kind.EPRT, 6, addr, port, 0, 0, d)
    line = b"EPRT " + format_span(probe, addr, port) + b"\r\n"
    hp = cmd(line)
    assert (hp.addr, hp.port, hp.family) == (addr, port, 6)


@given(st.binary(max_size=80))
def test_arbitrary_lines_raise_only_malformed(tail: bytes) -> None:
    """Any line either parses into a valid address and port whose span lies in the line, or
    is refused as Malformed; nothing else escapes."""
    found: list[tuple[bytes, HostPort | None]] = []
    for head in (b"PORT ", b"EPRT ", b"LPRT ", b"EPRT", b""):
        with contextlib.suppress(Malformed):
            found.append((head + tail, parse_command(head + tail)))
    for code in (b"227", b"228", b"229"):
        with contextlib.suppress(Malformed):
            line = code + b" " + tail
            found.append((line, parse_reply(code, line)))
    for line, hp in found:
        if hp is None:
            continue
        assert 0 <= hp.start <= hp.end <= len(line)
        assert 1 <= hp.port <= 65535
        assert hp.addr is None or len(hp.addr) in (4, 16)
