"""Fail-open for a bound NFQUEUE: a full queue passes packets instead of dropping them.

python netfilterqueue never sets NFQA_CFG_F_FAIL_OPEN, so once the queue holds `max_len`
packets the kernel drops every further one (`--queue-bypass` only covers a queue nobody has
bound). A flood of junk to port 21 then cuts real FTP off. The flag is one NFQNL_MSG_CONFIG
message (include/uapi/linux/netfilter/nfnetlink_queue.h):

    nlmsghdr  type (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, flags NLM_F_REQUEST
    nfgenmsg  family, version NFNETLINK_V0, res_id = queue number (big-endian)
    NFQA_CFG_MASK  u32 be: the flags to change (NFQA_CFG_F_FAIL_OPEN)
    NFQA_CFG_FLAGS u32 be: their new value

nfqnl_recv_config (net/netfilter/nfnetlink_queue.c) accepts it only from the socket bound to
that queue (`queue->peer_portid != NETLINK_CB(skb).portid` gives EPERM), so it is written to
the fd netfilterqueue exposes. It is sent without NLM_F_ACK: that socket also carries the
queued packets, and reading an ACK from it would consume packet messages netfilterqueue must
see. An error still comes back as an NLMSG_ERROR (netlink reports errors even without the
ACK flag), which netfilterqueue's `run()` reads and discards; the kernel test
(tests/kernel/test_queue_fail_open.py) is what shows the flag takes effect.
"""

from __future__ import annotations

import os
import socket
import struct

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NLM_F_REQUEST = 0x1
NFNETLINK_V0 = 0

_NLMSGHDR = struct.Struct("=IHHII")  # host byte order, as all netlink headers
_NFGENMSG = struct.Struct("!BBH")  # res_id is big-endian
_NLATTR = struct.Struct("=HH")


def _attr_u32(atype: int, value: int) -> bytes:
    """An attribute carrying a big-endian u32 (its nlattr header in host order)."""
    return _NLATTR.pack(8, atype) + struct.pack("!I", value)


def config_flags_message(
    queue_num: int,
    mask: int,
    flags: int,
    family: int = socket.AF_UNSPEC,
    seq: int = 0,
    nl_flags: int = NLM_F_REQUEST,
) -> bytes:
    """The NFQNL_MSG_CONFIG message that sets `flags` under `mask` on queue `queue_num`."""
    if not 0 <= queue_num <= 0xFFFF:
        raise ValueError(f"queue number {queue_num} is not in 0..65535")
    body = (
        _NFGENMSG.pack(family, NFNETLINK_V0, queue_num)
        + _attr_u32(NFQA_CFG_MASK, mask)
        + _attr_u32(NFQA_CFG_FLAGS, flags & mask)
    )
    mtype = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, nl_flags, seq, 0) + body


def set_fail_open(
    fd: int, queue_num: int, enabled: bool = True, family: int = socket.AF_UNSPEC
) -> None:
    """Let queue `queue_num`, bound on netlink socket `fd`, pass packets when full (or not).

    `fd` is `NetfilterQueue().get_fd()` after `bind()`. Raises OSError if the socket refuses
    the message outright; the kernel's verdict on it is not read (see the module docstring).
    """
    message = config_flags_message(
        queue_num, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN if enabled else 0, family
    )
    sent = os.write(fd, message)  # a netlink socket's default destination is the kernel
    if sent != len(message):
        raise OSError(f"short write of the queue config message ({sent} of {len(message)})")
