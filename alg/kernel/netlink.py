"""A minimal NETLINK_NETFILTER socket: send one request, collect its replies, map errors.

pyroute2's own sockets run an asyncio loop per synchronous call (~1 ms measured for one
CT_GET); a daemon that asks ctnetlink on every PORT/227 wants a plain blocking socket that it
reuses, so this module keeps the transport to a few syscalls and leaves message layouts to
`messages`. Errors come out as `OSError` with the kernel's errno; `ctnetlink` turns them into
its own exceptions.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10  # acks without a copy of the request: smaller, nothing to skip
SO_ATTACH_FILTER = 26

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

_HDR = struct.Struct("=IHHII")
_ERR = struct.Struct("=i")
_RECV_SIZE = 1 << 16

T = TypeVar("T")


def walk(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """Split a datagram into (type, flags, seq, whole message) per netlink message."""
    view = memoryview(data)
    offset = 0
    while offset + _HDR.size <= len(data):
        length, mtype, flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > len(data):
            break  # malformed: the kernel never sends this, stop rather than loop
        yield mtype, flags, seq, view[offset : offset + length]
        offset += (length + 3) & ~3


def error_of(msg: memoryview) -> int:
    """The positive errno of an NLMSG_ERROR or NLMSG_DONE message (0 for an ack)."""
    if len(msg) < _HDR.size + _ERR.size:
        return 0
    code: int = _ERR.unpack_from(msg, _HDR.size)[0]
    return -code


class NetlinkSocket:
    """One NETLINK_NETFILTER socket, opened in the network namespace of the calling thread."""

    def __init__(self, groups: tuple[int, ...] = (), rcvbuf: int | None = None) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            for group in groups:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            if rcvbuf is not None:
                try:  # SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN
                    self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
                except PermissionError:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def attach_filter(self, program: list[tuple[int, int, int, int]]) -> None:
        """Attach a classic BPF socket filter: (code, jt, jf, k) per instruction. The
        kernel runs it on each message before queueing it, so what it refuses costs
        neither a wake-up nor room in the receive buffer."""
        code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
        buf = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("=HxxxxxxQ", len(program), ctypes.addressof(buf))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def request(self, payload: Callable[[int], bytes], decode: Callable[[bytes], T]) -> list[T]:
        """Send `payload(seq)` and return the decoded replies carrying that sequence number.

        Ends at the ack (requests sent with NLM_F_ACK) or at NLMSG_DONE (dumps); a non-zero
        error in either raises OSError. Messages left over from an earlier, interrupted
        request have another sequence number and are skipped.
        """
        replies, _ = self.request_then(payload, decode, None)
        return replies

    def request_then(
        self,
        payload: Callable[[int], bytes],
        decode: Callable[[bytes], T],
        then: Callable[[int], bytes] | None,
    ) -> tuple[list[T], int]:
        """`request`, with a second request (`then`, sent with NLM_F_ACK) in the same
        datagram: the kernel carries them out in order, so one round trip does both. Returns
        the first's replies and the second's errno (0: done); the first's error raises."""
        seq = self._next_seq()
        data = payload(seq)
        follow = 0
        if then is not None:
            follow = self._next_seq()
            data += then(follow)
        self._sock.send(data)
        replies: list[T] = []
        first_err: int | None = None
        then_err: int | None = None if then is not None else 0
        while first_err is None or then_err is None:
            for mtype, _flags, mseq, msg in walk(self._sock.recv(_RECV_SIZE)):
                done = mtype in (NLMSG_ERROR, NLMSG_DONE)
                if mseq == seq and first_err is None:
                    if done:
                        first_err = error_of(msg)
                    else:
                        replies.append(decode(bytes(msg)))
                elif mseq == follow and then_err is None and done:
                    then_err = error_of(msg)
        if first_err:
            raise OSError(first_err, os.strerror(first_err))
        return replies, then_err

    def _next_seq(self) -> int:
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        return self._seq

    def receive_nowait(self) -> Iterator[tuple[int, bytes]]:
        """Yield (type, message) for every queued multicast message, without blocking.

        ENOBUFS (the kernel dropped events because the buffer was full) is raised once the
        messages already read are yielded, so the caller can count the loss and go on.
        """
        while True:
            try:
                data = self._sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            for mtype, _flags, _seq, msg in walk(data):
                yield mtype, bytes(msg)
