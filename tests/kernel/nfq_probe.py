"""A small process for the queue and privilege kernel tests, run inside a test namespace.

`bind`: bind NFQUEUE `--queue` with `--max-len`, optionally set fail-open through
alg.daemon.queueflags, print "ready", then never read the queue until stdin closes (so the
queue fills). `caps`: try what the daemon needs at start (bind a queue, dump expectations
over ctnetlink, join the conntrack DESTROY group) and print one JSON line with the outcome of
each, the uid and the effective capabilities.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import select
import socket
import struct
import sys
from typing import Any

from alg.daemon.queueflags import NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, set_fail_open

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NFQA_CFG_CMD, NFQNL_CFG_CMD_BIND = 1, 1
PR_GET_MDWE = 66


def _bind(queue: int, max_len: int, fail_open: list[bool]) -> int:
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue, lambda pkt: pkt.accept(), max_len=max_len)
    for enabled in fail_open:
        set_fail_open(nfq.get_fd(), queue, enabled)
    print("ready", flush=True)
    select.select([sys.stdin], [], [], 60.0)  # hold the queue, unread, until told to stop
    nfq.unbind()
    return 0


def raw_queue_bind_errno(queue: int) -> int:
    """errno of an NFQNL_CFG_CMD_BIND sent with an ACK request on a fresh socket (0 = ok)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        cmd = struct.pack("=HH", 8, NFQA_CFG_CMD) + struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)
        body = struct.pack("!BBH", socket.AF_INET, 0, queue) + cmd
        mtype = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
        sock.send(
            struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body
        )
        reply = sock.recv(65536)
    _len, rtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", reply)
    if rtype != NLMSG_ERROR:
        raise RuntimeError(f"expected an NLMSG_ERROR, got message type {rtype}")
    code: int = struct.unpack_from("=i", reply, 16)[0]
    return -code


def _status(field: str) -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith(f"{field}:"))


def _cap_eff() -> str:
    return _status("CapEff")


def _sandbox() -> dict[str, Any]:
    """What tests/kernel/sandbox.py should have switched on, and two things it must refuse."""
    out: dict[str, Any] = {"seccomp": int(_status("Seccomp")), "nnp": int(_status("NoNewPrivs"))}
    out["mdwe"] = ctypes.CDLL(None).prctl(PR_GET_MDWE, 0, 0, 0, 0)
    try:
        rwx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        mmap.mmap(-1, 4096, prot=rwx).close()
        out["wx_mmap"] = 0
    except OSError as exc:
        out["wx_mmap"] = exc.errno
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))  # in @resources, denied by the unit
        out["setaffinity"] = 0
    except OSError as exc:
        out["setaffinity"] = exc.errno
    return out


def _caps(queue: int) -> int:
    from netfilterqueue import NetfilterQueue

    from alg.kernel.ctevents import DestroyListener
    from alg.kernel.ctnetlink import Ctnetlink, CtnetlinkError

    out: dict[str, Any] = {"raw_bind_errno": raw_queue_bind_errno(queue + 1)}
    try:
        nfq = NetfilterQueue()
        nfq.bind(queue, lambda pkt: pkt.accept(), max_len=16)
        nfq.unbind()
        out["nfqueue"] = "ok"
    except OSError as exc:
        out["nfqueue"] = f"error: {exc}"
    try:
        with Ctnetlink() as ct:
            out["ctnetlink"] = f"ok: {len(ct.list_expectations())} expectations"
    except (OSError, CtnetlinkError) as exc:
        out["ctnetlink"] = f"error: errno {exc.errno}: {exc}"
        out["ctnetlink_errno"] = exc.errno
    try:
        with DestroyListener():
            out["events"] = "ok"
    except OSError as exc:
        out["events"] = f"error: errno {exc.errno}: {exc}"
        out["events_errno"] = exc.errno
    out["uid"], out["cap_eff"] = os.getuid(), _cap_eff()
    out.update(_sandbox())
    print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["bind", "caps"])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--max-len", type=int, default=4)
    parser.add_argument(
        "--fail-open",
        action="append",
        default=[],
        choices=["on", "off"],
        help="set (on) or clear (off) the flag after binding; repeatable, applied in order",
    )
    args = parser.parse_args()
    if args.mode == "bind":
        return _bind(args.queue, args.max_len, [f == "on" for f in args.fail_open])
    return _caps(args.queue)


if __name__ == "__main__":
    sys.exit(main())
