"""The only exceptions that leave `alg.core`: anything else escaping is a bug."""

from __future__ import annotations


class CoreError(Exception):
    """Base of every exception the core raises on purpose."""


class PacketError(CoreError):
    """The bytes are not an IP packet the core can read (truncated, bad lengths)."""


class NotControlTraffic(CoreError):
    """A well-formed packet the core does not inspect (not TCP, a fragment, no ports)."""
