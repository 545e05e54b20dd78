"""Kafka's key partitioner: which partition a keyed record goes to for a partition count.

The gateway's producer uses librdkafka's ``murmur2_random`` partitioner (the Java client's
default for keyed records): ``(murmur2(key) & 0x7fffffff) % partition_count``, murmur2 being
Kafka's 32-bit MurmurHash2 with seed 0x9747b28c. A consumer recomputes it to know which
partition an account's records went to under an earlier partition count.
"""

from __future__ import annotations

from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` as an unsigned 32-bit value."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for at in range(0, whole, 4):
        k = int.from_bytes(data[at:at + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    left = length & 3
    if left == 3:
        h ^= data[whole + 2] << 16
    if left >= 2:
        h ^= data[whole + 1] << 8
    if left >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: bytes, partition_count: int) -> int:
    """The partition a record keyed ``key`` goes to among ``partition_count``."""
    return (murmur2(key) & 0x7FFFFFFF) % partition_count
