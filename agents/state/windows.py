"""Event-time window buckets of per-user counters."""

from __future__ import annotations

import math


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


def expire(buckets: dict[str, dict[str, int]], oldest: int) -> int:
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
