"""Untrusted bytes and addresses made fit for a report or a log line (escaped with ascii(),
so no control character from the wire reaches a terminal or a log); shared by the core's
events and the adapters' reports."""

from __future__ import annotations

import ipaddress


def show_line(raw: bytes, limit: int = 120) -> str:
    """A control line (or part of one), escaped, without its line end, cut at `limit`."""
    text = ascii(raw.rstrip(b"\r\n")[:limit])[2:-1]
    return text + ("..." if len(raw.rstrip(b"\r\n")) > limit else "")


def show_addr(raw: bytes) -> str:
    """A packed IPv4 or IPv6 address in its usual text form."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))
