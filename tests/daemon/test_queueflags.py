"""The queue config message, byte by byte (the kernel test shows its effect)."""

from __future__ import annotations

import socket
import struct

import pytest

from alg.daemon.queueflags import NFQA_CFG_F_FAIL_OPEN, config_flags_message


def test_fail_open_message_layout() -> None:
    msg = config_flags_message(0x0102, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN, seq=9)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, flags, seq, pid) == (len(msg), 0x0302, 0x1, 9, 0) and length == 36
    assert msg[16:20] == bytes((socket.AF_UNSPEC, 0, 0x01, 0x02))  # res_id big-endian
    assert struct.unpack_from("=HH", msg, 20) == (8, 4)  # NFQA_CFG_MASK
    assert msg[24:28] == b"\0\0\0\x01"
    assert struct.unpack_from("=HH", msg, 28) == (8, 5)  # NFQA_CFG_FLAGS
    assert msg[32:36] == b"\0\0\0\x01"


def test_clearing_sends_zero_under_the_mask() -> None:
    msg = config_flags_message(3, NFQA_CFG_F_FAIL_OPEN, 0)
    assert msg[24:28] == b"\0\0\0\x01" and msg[32:36] == b"\0\0\0\0"


def test_flags_outside_the_mask_are_not_sent() -> None:
    assert config_flags_message(3, 1, 0xFF)[32:36] == b"\0\0\0\x01"


@pytest.mark.parametrize("queue", [-1, 65536])
def test_queue_number_out_of_range(queue: int) -> None:
    with pytest.raises(ValueError, match="queue number"):
        config_flags_message(queue, 1, 1)
