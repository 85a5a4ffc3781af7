"""The pure core of ftp-alg: bytes, integers and `now` in; verdicts and actions out.

No I/O, clock, logging, scapy, netfilterqueue or pyroute2 here (a test checks the imports).
"""

from alg.core.config import Config
from alg.core.errors import CoreError, NotControlTraffic, PacketError
from alg.core.events import (
    ACCEPT,
    Action,
    Dir,
    Drop,
    Event,
    Expect,
    Expectation,
    FlowKey,
    Outcome,
    Release,
    Unexpect,
    Verdict,
)
from alg.core.gateway import Gateway, reverse
from alg.core.grammar import Kind

__all__ = [
    "ACCEPT",
    "Action",
    "Config",
    "CoreError",
    "Dir",
    "Drop",
    "Event",
    "Expect",
    "Expectation",
    "FlowKey",
    "Gateway",
    "Kind",
    "NotControlTraffic",
    "Outcome",
    "PacketError",
    "Release",
    "Unexpect",
    "Verdict",
    "reverse",
]
