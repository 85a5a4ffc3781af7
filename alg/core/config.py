"""Policy knobs of the core, with the defaults a router admin gets without a config file."""

from __future__ import annotations

from dataclasses import dataclass, field

# TCP ports of FTP control connections unless configured: 21, and 2121 where servers often
# listen unprivileged. The daemon, the rules, the replay and the core share this one default.
DEFAULT_CONTROL_PORTS = (21, 2121)


@dataclass(frozen=True, slots=True)
class Config:
    # TCP ports on which clients open FTP control connections.
    control_ports: frozenset[int] = field(default_factory=lambda: frozenset(DEFAULT_CONTROL_PORTS))
    # FXP (server-to-server transfers): PORT/227 naming a third host. Off: refused as bounce.
    allow_fxp: bool = False
    # Data ports below this are refused (OpenBSD ftp-proxy, libalias): no PORT to :25.
    min_data_port: int = 1024
    # Longest control line parsed (OpenBSD ftp-proxy uses 500); longer ones are not parsed.
    max_line: int = 512
    # How long a segment ending in a possibly address-bearing partial line may be held for
    # its continuation (the Linux tail-loss probe sends it after ~205 ms with Nagle on).
    hold_timeout: float = 0.5
    # Held segments per direction at most; beyond, they are released unchanged.
    max_held: int = 32
    # Lifetime of an expectation: the data connection must arrive within it.
    expect_timeout: float = 60.0
    # A session with no packet for this long is forgotten (conntrack events usually come first).
    idle_timeout: float = 7200.0
    # After FIN from both sides or a RST: how long retransmissions are still mapped.
    linger: float = 10.0
    # Control sessions tracked at once; beyond, new ones pass untouched with a refusal.
    max_sessions: int = 65536
    # Rewrites per direction not yet acknowledged by the peer; beyond, further ones are refused.
    max_corrections: int = 64
    # Commands awaiting their reply, per session (pipelining clients).
    max_pending: int = 32
    # Recompute both checksums of every changed packet instead of updating them (captures
    # with offloaded checksums: the output is then valid whatever the input was).
    full_checksum: bool = False
    # The kernel's skip rule lets plain replies pass unqueued (alg/kernel/rules_skip.py): a
    # hole in a reply stream is lines that passed, not a loss. The daemon sets it from its
    # watch_mark; the replay feeds every segment and leaves it off.
    replies_unqueued: bool = False
    # Address to write into rewrites instead of the router's outside address conntrack shows
    # (double NAT: that address is itself private). The expectation still uses the real one.
    announce: dict[bytes, bytes] = field(default_factory=dict)
