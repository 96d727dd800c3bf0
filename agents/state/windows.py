"""Event-time window buckets of per-user counters."""

from __future__ import annotations

import math
from array import array
from collections.abc import ItemsView, Iterator, Mapping


def bucket_of(timestamp: float, step: float) -> int:
    """Index of the bucket holding ``timestamp``.

    Examples
    --------
    >>> bucket_of(125.0, 60.0), bucket_of(120.0, 60.0)
    (2, 2)
    """
    return math.floor(timestamp / step)


def window_buckets(clock: float, size: float, step: float) -> range:
    """Buckets of the hopping window that ends with the bucket holding ``clock``.

    Examples
    --------
    >>> list(window_buckets(600.0, 300.0, 60.0))
    [6, 7, 8, 9, 10]
    """
    last = bucket_of(clock, step)
    count = max(1, round(size / step))
    return range(last - count + 1, last + 1)


def add(bucket: dict[str, int], totals: list[str], named: list[str], source: str, cap: int) -> int:
    """Add one to each name of ``totals``, and of ``named`` while the bucket holds fewer than
    ``cap`` distinct names from ``source`` (a key of the bucket counting them); return how
    many of ``named`` were left out.

    Examples
    --------
    >>> bucket = {}
    >>> add(bucket, ["imp"], ["i:a", "i:b"], "#i", cap=1), bucket
    (1, {'imp': 1, '#i': 1, 'i:a': 1})
    """
    for name in totals:
        bucket[name] = bucket.get(name, 0) + 1
    left_out = 0
    for name in named:
        count = bucket.get(name)
        if count is not None:
            bucket[name] = count + 1
            continue
        distinct = bucket.get(source, 0)
        if distinct >= cap:
            left_out += 1
            continue
        bucket[source] = distinct + 1
        bucket[name] = 1
    return left_out


def total(buckets: dict[str, dict[str, int]], window: range, name: str) -> int:
    """Sum of counter ``name`` over the buckets of ``window``.

    Examples
    --------
    >>> b = {"1": {"neg": 2}, "2": {"neg": 1, "imp": 4}, "9": {"neg": 5}}
    >>> total(b, range(0, 3), "neg"), total(b, range(0, 3), "imp")
    (3, 4)
    """
    result = 0
    for index in window:
        bucket = buckets.get(str(index))
        if bucket:
            result += bucket.get(name, 0)
    return result


def merge(buckets: dict[str, dict[str, int]], window: range) -> dict[str, int]:
    """Every counter summed over the buckets of ``window``.

    Examples
    --------
    >>> merge({"1": {"neg": 2}, "2": {"neg": 1, "imp": 4}, "9": {"neg": 5}}, range(0, 3))
    {'neg': 3, 'imp': 4}
    """
    merged: dict[str, int] = {}
    for index in window:
        bucket = buckets.get(str(index))
        if bucket:
            for name, count in bucket.items():
                merged[name] = merged.get(name, 0) + count
    return merged


def expire(buckets: dict[str, Bucket], oldest: int) -> int:
    """Drop buckets older than index ``oldest``; return how many were dropped.

    Examples
    --------
    >>> b = {"1": {}, "5": {}}
    >>> expire(b, 3), sorted(b)
    (1, ['5'])
    """
    stale = [key for key in buckets if int(key) < oldest]
    for key in stale:
        del buckets[key]
    return len(stale)


class PackedBucket(Mapping[str, int]):
    """A bucket's counters packed, in order, for a state that waits for the user's next
    event: its names (interned, so shared with every other user's) and its counts in one
    bytes object (one byte a count while all are under 256). About 10 bytes a counter
    against a dict's 33; :meth:`unpacked` gives the dict back.

    Examples
    --------
    >>> packed = PackedBucket({"imp": 3, "i:a": 300})
    >>> packed.unpacked(), packed["i:a"], packed == {"i:a": 300, "imp": 3}
    ({'imp': 3, 'i:a': 300}, 300, True)
    """

    __slots__ = ("_counts", "_names")

    def __init__(self, bucket: Mapping[str, int]) -> None:
        self._names = tuple(bucket)
        counts: bytes | array[int]
        try:
            counts = bytes(bucket.values())
        except ValueError:  # a count over 255
            counts = array("q", bucket.values())
        self._counts = counts

    def unpacked(self) -> dict[str, int]:
        """The bucket as a dict, names in the same order."""
        return dict(zip(self._names, self._counts, strict=True))

    def __getitem__(self, name: str) -> int:
        try:
            return self._counts[self._names.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def items(self) -> ItemsView[str, int]:
        """The ``(name, count)`` pairs, in order, read in one pass."""
        return _Items(self)

    def __repr__(self) -> str:
        return f"PackedBucket({self.unpacked()!r})"


class _Items(ItemsView[str, int]):
    __slots__ = ()
    _mapping: PackedBucket

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return zip(self._mapping._names, self._mapping._counts, strict=True)


#: A bucket as the fold writes it, or packed while its state waits.
Bucket = dict[str, int] | PackedBucket


def unpacked(bucket: Bucket) -> dict[str, int]:
    """A dict of ``bucket``'s counters the caller may change."""
    return dict(bucket) if isinstance(bucket, dict) else bucket.unpacked()


def readable(bucket: Bucket) -> dict[str, int]:
    """``bucket`` as a dict to read (itself when it is one)."""
    return bucket if isinstance(bucket, dict) else bucket.unpacked()


def unpack(buckets: dict[str, Bucket]) -> dict[str, Bucket]:
    """A copy of ``buckets`` with every packed bucket unpacked (dicts stay shared)."""
    return {index: readable(bucket) for index, bucket in buckets.items()}


def pack(*tables: dict[str, Bucket]) -> list[dict[str, Bucket]]:
    """``tables`` (bucket index to bucket) with every bucket packed; a dict that two
    buckets share stays shared once packed.

    Examples
    --------
    >>> counts = {"imp": 1}
    >>> fine, long = pack({"7": counts}, {"0": counts})
    >>> fine["7"] is long["0"], fine["7"] == counts
    (True, True)
    """
    done: dict[int, PackedBucket] = {}
    result = []
    for buckets in tables:
        packed: dict[str, Bucket] = {}
        for index, bucket in buckets.items():
            if isinstance(bucket, dict):
                packed_bucket = done.get(id(bucket))
                if packed_bucket is None:
                    packed_bucket = done[id(bucket)] = PackedBucket(bucket)
                bucket = packed_bucket
            packed[index] = bucket
        result.append(packed)
    return result
