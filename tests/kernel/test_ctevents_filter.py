"""The DESTROY listener's kernel-side filter (alg/kernel/ctevents.py), on real messages.

Entries made with `conntrack -I` in the router's namespace, then deleted: the kernel sends
the same DESTROY messages as for forwarded traffic. Only connections that had a reply may
reach the daemon; a junk flood's unreplied entries must not (issue 10).
"""

from __future__ import annotations

import select
import time

import pytest

from alg.kernel.ctevents import DestroyListener
from alg.lab import netns
from tests.kernel.lab import Lab

pytestmark = pytest.mark.netns

ENTRIES = {  # source port: conntrack -I arguments
    1234: "-s 10.9.0.1 -d 10.9.0.2 --state SYN_SENT",  # no reply: filtered
    1235: "-s 10.9.0.1 -d 10.9.0.2 --state ESTABLISHED -u SEEN_REPLY",
    1236: "-s 10.9.0.1 -d 10.9.0.2 --state ESTABLISHED -u SEEN_REPLY,ASSURED -w 7",  # + zone
    1237: "-s fd00::1 -d fd00::2 --state ESTABLISHED -u SEEN_REPLY",
    1238: "-s fd00::1 -d fd00::2 --state SYN_SENT",  # no reply: filtered
    1239: "-s 10.9.0.1 -d 10.9.0.2 --state CLOSE -u ASSURED",  # no reply: filtered
}


def test_only_destroyed_connections_that_had_a_reply_are_read(lab: Lab) -> None:
    with netns.enter(lab.router):
        listener = DestroyListener()  # before the entries: see ctevents' docstring
    with listener:
        for sport, args in ENTRIES.items():
            lab.run(
                lab.router,
                "conntrack",
                "-I",
                "-p",
                "tcp",
                "--sport",
                str(sport),
                "--dport",
                "21",
                "-t",
                "50",
                *args.split(),
            )
        for args in ("-s 10.9.0.1", "-s 10.9.0.1 -w 7", "-f ipv6 -s fd00::1"):
            lab.run(lab.router, "conntrack", "-D", *args.split(), check=False)
        seen: list[int] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(seen) < 3:
            select.select([listener], [], [], 0.2)
            seen += [e.original.sport for e in listener.read_events()]
        time.sleep(0.2)  # anything filtered wrongly would have arrived by now
        seen += [e.original.sport for e in listener.read_events()]
        assert sorted(seen) == [1235, 1236, 1237]
        assert listener.lost == 0
