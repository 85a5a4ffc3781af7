"""Internet checksums (RFC 1071) and their incremental update (RFC 1624).

The sum is taken over the whole buffer as one big integer modulo 0xFFFF: 2**16 is 1 modulo
0xFFFF, so that remainder is the ones' complement sum of the 16-bit words, computed in C
instead of a Python loop over the words.
"""

from __future__ import annotations

_FOLD = 0xFFFF


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """Ones' complement sum of `data` as big-endian 16-bit words (odd length padded)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big")
    if value == 0:
        return 0
    rem = value % _FOLD
    return rem if rem else _FOLD


def finish(total: int) -> int:
    """Fold a sum of `ones_sum` results and complement it into a checksum field value."""
    while total > _FOLD:
        total = (total & _FOLD) + (total >> 16)
    return ~total & _FOLD


def checksum(data: bytes | bytearray | memoryview) -> int:
    return finish(ones_sum(data))


def update32(check: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 32-bit field changed from `old` to `new`: HC' = ~(~HC + ~m + m')."""
    total = (~check & _FOLD) + (~old & 0xFFFFFFFF) + new
    while total > _FOLD:
        total = (total & _FOLD) + (total >> 16)
    return ~total & _FOLD
