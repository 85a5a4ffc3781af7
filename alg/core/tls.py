"""Following TLS records on a control connection after AUTH TLS, to see when they stop.

After "AUTH TLS" is answered by 234 (RFC 4217 4) the control connection carries TLS records
and the gateway cannot read commands any more: it is blind. A client may later send CCC
(RFC 4217 12.3) and, after the TLS close, talk in clear text again on the same connection.
The CCC itself is encrypted, so the only way to notice is to walk the record framing
(RFC 8446 5.1: type, legacy version 0x03xx, 16-bit length) and see clear text where the next
record header should be.
"""

from __future__ import annotations

# RFC 8446 5.1 / RFC 6520: change_cipher_spec, alert, handshake, application_data, heartbeat.
_RECORD_TYPES = frozenset(range(20, 25))


class TlsWalker:
    """Walks record boundaries across segments; `feed` says where clear text starts."""

    __slots__ = ("head", "skip")

    def __init__(self) -> None:
        self.skip = 0  # bytes left in the current record's body
        self.head = b""  # a record header split across segments

    def feed(self, data: bytes) -> int:
        """Index in `data` where clear text resumes, or -1 while still in TLS records."""
        pos, n = 0, len(data)
        while pos < n:
            if self.skip:
                step = min(self.skip, n - pos)
                self.skip -= step
                pos += step
                continue
            need = 5 - len(self.head)
            self.head += data[pos : pos + need]
            if self.head[0] not in _RECORD_TYPES or (len(self.head) > 1 and self.head[1] != 3):
                self.head = b""
                return pos
            if len(self.head) < 5:
                return -1
            pos += need
            self.skip = (self.head[3] << 8) | self.head[4]
            self.head = b""
        return -1
