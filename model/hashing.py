"""Stable, salted feature hashing of string ids into a fixed number of embedding buckets.

Why this hash
-------------
Python's ``hash()`` is salted per process, so it cannot map ids to embedding rows that must
survive a checkpoint. ``hashlib.blake2b`` is stable but costs ~2 us per id here; ``zlib.crc32``
costs ~0.2 us. CRC32 alone is linear, so its low bits are a poor bucket index for ids that differ
in a few characters (``user-1``, ``user-2``); each CRC is therefore passed through the
``fmix64`` finaliser of MurmurHash3 (vectorised in numpy) before taking the bucket. Every field
(user, item, creator, category) gets its own salt, so the same string in two fields lands in
unrelated buckets. Bucket 0 is reserved for a missing id (``None``); real ids use
``1 .. buckets - 1``. Hashes of ids already seen are cached (bounded), because streams repeat
the same users, creators and categories constantly.

Expected collisions
-------------------
With ``B`` buckets and ``n`` distinct ids hashed uniformly, the expected fraction of ids that
share their bucket with at least one other id is ``1 - exp(-(n - 1) / B) ~ 1 - exp(-n / B)``.
At the default ``B = 2**18 = 262_144``:

==========  ==========================
distinct n  fraction of ids colliding
==========  ==========================
10 000      ~3.7 %
100 000     ~31.7 %
1 000 000   ~97.8 %
==========  ==========================

So 2**18 suits per-field vocabularies up to ~10**4..10**5; raise ``ModelConfig.buckets`` for
larger item catalogues (memory is ``4 * buckets * dim`` floats).

Examples
--------
>>> users = FeatureHasher("user", buckets=2**18)
>>> ids = users.hash_many(["u1", "u2", None, "u1"])
>>> ids.dtype, int(ids[2]), bool(ids[0] == ids[3]), bool(ids[0] != ids[1])
(dtype('int64'), 0, True, True)
>>> int(ids[0]) == stable_hash("u1", "user", 2**18)
True
>>> stable_hash("u1", "user", 2**18) != stable_hash("u1", "item", 2**18)
True
>>> round(expected_collision_fraction(100_000, 2**18), 3)
0.317
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureHasher", "cross_buckets", "expected_collision_fraction", "stable_hash"]

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S32 = np.uint64(32)


def _fmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """MurmurHash3 finaliser: full avalanche of every input bit into every output bit."""
    h = values.copy()
    with np.errstate(over="ignore"):
        h ^= h >> _S33
        h *= _M1
        h ^= h >> _S33
        h *= _M2
        h ^= h >> _S33
    return h


def _salt(field: str) -> int:
    return zlib.crc32(f"negstream:{field}".encode())


def _buckets_from_crc(
    crcs: npt.NDArray[np.uint64], salt: int, buckets: int
) -> npt.NDArray[np.int64]:
    mixed = _fmix64(crcs ^ (np.uint64(salt) << _S32))
    return (mixed % np.uint64(buckets - 1)).astype(np.int64) + 1


def stable_hash(value: str | None, field: str, buckets: int) -> int:
    """Bucket of one id: the scalar form of :meth:`FeatureHasher.hash_many`."""
    if value is None:
        return 0
    salt = _salt(field)
    crc = np.array([zlib.crc32(value.encode(), salt)], dtype=np.uint64)
    return int(_buckets_from_crc(crc, salt, buckets)[0])


def cross_buckets(
    left: npt.NDArray[np.int64], right: npt.NDArray[np.int64], field: str, buckets: int
) -> npt.NDArray[np.int64]:
    """Bucket of each ``(left, right)`` pair of hashed ids, e.g. user x creator.

    Crosses are hashed from the two fields' buckets, not from the strings, so they cost one
    vectorised mix and no id cache. A pair with a missing side (bucket 0) maps to 0.

    Examples
    --------
    >>> users, creators = np.array([5, 5, 7, 5]), np.array([9, 8, 9, 0])
    >>> pairs = cross_buckets(users, creators, "user*creator", 2**20)
    >>> bool(pairs[0] == cross_buckets(users[:1], creators[:1], "user*creator", 2**20)[0])
    True
    >>> len(set(pairs[:3].tolist())), int(pairs[3])
    (3, 0)
    """
    joined = (left.astype(np.uint64) << _S32) | right.astype(np.uint64)
    mixed = _fmix64(_fmix64(joined) ^ np.uint64(_salt(field)))
    out = (mixed % np.uint64(buckets - 1)).astype(np.int64) + 1
    out[(left == 0) | (right == 0)] = 0
    return out


def expected_collision_fraction(n_ids: int, buckets: int) -> float:
    """Expected fraction of ``n_ids`` distinct ids sharing a bucket with another id."""
    return 1.0 - math.exp(-max(n_ids - 1, 0) / buckets)


class FeatureHasher:
    """Hash one id field into ``buckets`` rows, stably across processes and machines.

    Parameters
    ----------
    field
        Field name; doubles as the salt, so fields never share a hash layout.
    buckets
        Number of rows including the reserved missing-id row 0; at least 2.
    cache_size
        Ids whose bucket is remembered; the cache is emptied when full, which bounds memory
        without the bookkeeping of an LRU.
    """

    def __init__(self, field: str, buckets: int, cache_size: int = 1_000_000) -> None:
        if buckets < 2:
            raise ValueError(f"buckets must be >= 2, got {buckets}")
        self.field = field
        self.buckets = buckets
        self.cache_size = cache_size
        self._salt = _salt(field)
        self._cache: dict[str | None, int] = {None: 0}
        # The trainer thread and a scoring thread may share one hasher; clearing the cache
        # between another call's fill and lookup would lose its ids.
        self._lock = threading.Lock()

    def hash_many(self, values: Iterable[str | None]) -> npt.NDArray[np.int64]:
        """Bucket of each id; ``None`` maps to 0."""
        ids = list(values)
        with self._lock:
            cache = self._cache
            missing = set(ids).difference(cache)
            if missing:
                if len(cache) + len(missing) > self.cache_size:
                    cache.clear()
                    cache[None] = 0
                    missing = set(ids)
                    missing.discard(None)
                salt = self._salt
                new_ids = list(missing)
                crcs = np.fromiter(
                    (zlib.crc32(v.encode(), salt) for v in new_ids if v is not None),
                    dtype=np.uint64,
                    count=len(new_ids),
                )
                buckets = _buckets_from_crc(crcs, salt, self.buckets).tolist()
                cache.update(zip(new_ids, buckets, strict=True))
            return np.fromiter(map(cache.__getitem__, ids), dtype=np.int64, count=len(ids))
