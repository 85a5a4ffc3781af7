"""The FTP address grammar, in one place, with the RFC text each rule follows.

Strict on values, lenient on form: verbs are case-insensitive, white space around the
argument is tolerated, a 227 is scanned for its first digit; but every octet must be 0..255,
every port 1..65535, and anything else is `Malformed` with a reason. A parse returns the
byte span of the address/port text inside the line, so a rewrite replaces only that span.
"""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import NamedTuple

from alg.core.errors import CoreError


class Kind(Enum):
    PORT = "PORT"
    EPRT = "EPRT"
    LPRT = "LPRT"
    PASV_227 = "227"
    LPSV_228 = "228"
    EPSV_229 = "229"
    # No address line at all: a transfer with no PORT/PASV in effect uses RFC 959 3.2's
    # default data port (the server connects from port 20 to the client's control port).
    DEFAULT = "default port"


class HostPort(NamedTuple):
    """An address-bearing message: `addr` is None for a 229, which names only a port."""

    kind: Kind
    family: int  # 4 or 6
    addr: bytes | None
    port: int
    start: int  # span of the address/port text in the line
    end: int
    delimiter: str = "|"


class Malformed(CoreError):
    """The line is an address-bearing message whose argument breaks the grammar."""


# RFC 959 5.3.2: "<number> ::= any decimal integer 1 through 255"; 0 is used in practice
# (the issue and every real stack accept it), so octets are 0..255.
_SIX = rb"(\d+)" + rb"[ \t]*,[ \t]*(\d+)" * 5

# RFC 959 4.1.2: "PORT h1,h2,h3,h4,p1,p2 where h1 is the high order 8 bits of the internet
# host address". Verbs are case-insensitive (RFC 959 5.3: "The command codes themselves are
# alphabetic characters terminated by the character <SP>").
_PORT = re.compile(rb"(?i)PORT[ \t]+(" + _SIX + rb")[ \t]*\r?\n?\Z")

# RFC 1639 2: "LPRT <SP> <long-host-port> <CRLF>" with "<long-host-port> ::= <address-family>
# "," <host-address-length> "," <host-address> "," <port-address-length> "," <port-address>".
_LPRT = re.compile(rb"(?i)LPRT[ \t]+(\d[\d \t,]*\d)[ \t]*\r?\n?\Z")

# RFC 2428 2: "EPRT<space><d><net-prt><d><net-addr><d><tcp-port><d>"; "The delimiter
# character MUST be one of the ASCII characters in range 33-126 inclusive."
_EPRT = re.compile(rb"(?i)EPRT[ \t]+(([\x21-\x7e])([^\r\n]*?)\2([^\r\n]*?)\2(\d+)\2)[ \t]*\r?\n?\Z")

# RFC 1123 4.1.2.6: "an FTP client cannot assume that the parentheses shown on page 40 of
# RFC-959 will be present ... Therefore, a User-FTP program that interprets the PASV reply
# must scan the reply for the first digit of the host and port numbers."
_FIRST_DIGIT = re.compile(rb"\d")
_SIX_AT = re.compile(_SIX)

# RFC 2428 3: "The text returned in response to the EPSV command MUST be:
# <text indicating server is entering extended passive mode> (<d><d><d><tcp-port><d>)".
_EPSV_REPLY = re.compile(rb"\(([\x21-\x7e])\1\1(\d+)\1\)")

# RFC 1639 3: "228 Entering Long Passive Mode (long-host-port)".
_PAREN = re.compile(rb"\([ \t]*(\d[\d \t,]*\d)[ \t]*\)")


def _octet(raw: bytes) -> int:
    if len(raw) > 3 or int(raw) > 255:
        raise Malformed(f"octet {raw.decode()[:12]!r} is not 0..255")
    return int(raw)


def _port(hi: int, lo: int) -> int:
    port = hi * 256 + lo
    if port == 0:
        raise Malformed("port 0")
    return port


def _decimal_port(raw: bytes) -> int:
    if len(raw) > 5 or not 1 <= int(raw) <= 65535:
        raise Malformed(f"port {raw.decode()[:12]!r} is not 1..65535")
    return int(raw)


def _six(kind: Kind, m: re.Match[bytes], group: int) -> HostPort:
    raw = m.groups()[group : group + 6]
    if max(map(len, raw)) > 3:
        values = [_octet(r) for r in raw]  # raises, saying which
    values = [int(r) for r in raw]
    if max(values) > 255:
        values = [_octet(r) for r in raw]
    return HostPort(
        kind, 4, bytes(values[:4]), _port(values[4], values[5]), m.start(group), m.end(group)
    )


def _long_host_port(kind: Kind, text: bytes, start: int) -> HostPort:
    """RFC 1639: af 4 with 4 address octets, af 6 with 16; the port length is 2."""
    fields = [f.strip() for f in text.split(b",")]
    if not all(f.isdigit() for f in fields):
        raise Malformed("long-host-port has an empty or non-numeric field")
    values = [_octet(f) for f in fields]
    if len(values) < 2:
        raise Malformed("long-host-port too short")
    af, hal = values[0], values[1]
    if (af, hal) not in ((4, 4), (6, 16)):
        raise Malformed(f"address family {af} with address length {hal}")
    if len(values) != 2 + hal + 3 or values[2 + hal] != 2:
        raise Malformed("long-host-port has the wrong number of fields")
    addr = bytes(values[2 : 2 + hal])
    port = _port(values[3 + hal], values[4 + hal])
    return HostPort(kind, 4 if af == 4 else 6, addr, port, start, start + len(text))


def parse_command(line: bytes) -> HostPort | None:
    """PORT, EPRT or LPRT with its argument; None for any other command."""
    if line[4:5] not in (b" ", b"\t", b"\r", b"\n", b""):
        return None  # a longer verb such as "PORTS"
    verb = line[:4].upper()
    if verb == b"PORT":
        m = _PORT.match(line)
        if m is None:
            raise Malformed("PORT argument is not h1,h2,h3,h4,p1,p2")
        return _six(Kind.PORT, m, 1)
    if verb == b"EPRT":
        m = _EPRT.match(line)
        if m is None:
            raise Malformed("EPRT argument is not <d>proto<d>addr<d>port<d>")
        proto, host = m.group(3), m.group(4)
        if proto == b"1":
            try:
                addr = ipaddress.IPv4Address(host.decode("ascii")).packed
            except ValueError:
                raise Malformed(f"EPRT |1| address {host[:48]!r} is not dotted IPv4") from None
            family = 4
        elif proto == b"2":
            try:
                v6 = ipaddress.IPv6Address(host.decode("ascii"))
            except ValueError:
                raise Malformed(f"EPRT |2| address {host[:48]!r} is not IPv6") from None
            if v6.scope_id:
                raise Malformed("EPRT |2| address carries a zone")
            addr, family = v6.packed, 6
        else:
            raise Malformed(f"EPRT network protocol {proto[:8]!r} is neither 1 nor 2")
        return HostPort(
            Kind.EPRT,
            family,
            addr,
            _decimal_port(m.group(5)),
            m.start(1),
            m.end(1),
            m.group(2).decode("ascii"),
        )
    if verb == b"LPRT":
        m = _LPRT.match(line)
        if m is None:
            raise Malformed("LPRT argument is not a long-host-port")
        return _long_host_port(Kind.LPRT, m.group(1), m.start(1))
    return None


def parse_reply(code: bytes, line: bytes) -> HostPort:
    """The address in a 227, 228 or 229 reply line (`code` is its first three bytes)."""
    if code == b"227":
        first = _FIRST_DIGIT.search(line, 3)
        m = _SIX_AT.match(line, first.start()) if first else None
        if m is None:
            raise Malformed("227 reply carries no h1,h2,h3,h4,p1,p2")
        return _six(Kind.PASV_227, m, 0)
    if code == b"229":
        m = _EPSV_REPLY.search(line, 3)
        if m is None:
            raise Malformed("229 reply carries no (<d><d><d>port<d>)")
        return HostPort(
            Kind.EPSV_229,
            0,
            None,
            _decimal_port(m.group(2)),
            m.start(2),
            m.end(2),
            m.group(1).decode("ascii"),
        )
    if code == b"228":
        m = _PAREN.search(line, 3)
        if m is None:
            raise Malformed("228 reply carries no (long-host-port)")
        return _long_host_port(Kind.LPSV_228, m.group(1), m.start(1))
    raise Malformed(f"reply {code!r} carries no address")


def _comma_octets(addr: bytes, port: int | None = None) -> str:
    values = (*addr,) if port is None else (*addr, port >> 8, port & 0xFF)
    return ",".join(str(b) for b in values)


def format_span(hp: HostPort, addr: bytes, port: int) -> bytes:
    """The text that replaces `hp`'s span, in the same form, naming `addr` and `port`.

    `addr` must be of the session's family (4 bytes for PORT and 227); a 229 names no address,
    so only `port` is used there.
    """
    kind = hp.kind
    if kind is Kind.EPSV_229:
        return str(port).encode()
    if kind in (Kind.PORT, Kind.PASV_227):
        return _comma_octets(addr, port).encode()
    if kind is Kind.EPRT:
        d = hp.delimiter
        ip = ipaddress.ip_address(addr)
        return f"{d}{1 if ip.version == 4 else 2}{d}{ip}{d}{port}{d}".encode()
    af = 4 if len(addr) == 4 else 6
    return f"{af},{len(addr)},{_comma_octets(addr)},2,{port >> 8},{port & 0xFF}".encode()
