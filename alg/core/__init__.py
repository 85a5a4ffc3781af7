"""The pure core of ftp-alg: packets and answers in, commands out.

No I/O, clock, logging, scapy, netfilterqueue or pyroute2 here (a test checks the imports).
`Gateway` is the whole API; `commands` names what passes between it and its adapters,
`reports` every event kind and refusal reason.
"""

from alg.core.commands import (
    Accept,
    Answer,
    Command,
    DataExpectation,
    Dir,
    Drop,
    FlowKey,
    Found,
    Handle,
    Lookup,
    NotFound,
    Reserve,
    Reserved,
    Withdraw,
    WriteSeqAdj,
)
from alg.core.config import Config
from alg.core.errors import CoreError, NotControlTraffic, PacketError
from alg.core.flows import inside_view, reverse
from alg.core.gateway import Gateway
from alg.core.grammar import Kind
from alg.core.reports import EventKind, Level, Reason, Report
from alg.core.seqadj import SeqAdjRecord

__all__ = [
    "Accept",
    "Answer",
    "Command",
    "Config",
    "CoreError",
    "DataExpectation",
    "Dir",
    "Drop",
    "EventKind",
    "FlowKey",
    "Found",
    "Gateway",
    "Handle",
    "Kind",
    "Level",
    "Lookup",
    "NotControlTraffic",
    "NotFound",
    "PacketError",
    "Reason",
    "Report",
    "Reserve",
    "Reserved",
    "SeqAdjRecord",
    "Withdraw",
    "WriteSeqAdj",
    "inside_view",
    "reverse",
]
