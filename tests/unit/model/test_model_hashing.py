"""Stable feature hashing: stability across processes, salts, range, spread, collisions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model.hashing import FeatureHasher, expected_collision_fraction, stable_hash


def test_same_bucket_in_a_fresh_process_with_another_hash_seed() -> None:
    ids = ["u1", "user-éß", "", "x" * 200]
    here = FeatureHasher("user", 2**18).hash_many(ids).tolist()
    code = (
        "from model.hashing import FeatureHasher;"
        f"print(FeatureHasher('user', 2**18).hash_many({ids!r}).tolist())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert there.strip() == str(here)


def test_fields_are_salted_apart() -> None:
    ids = [f"id-{i}" for i in range(1000)]
    users = FeatureHasher("user", 2**18).hash_many(ids)
    items = FeatureHasher("item", 2**18).hash_many(ids)
    # Unsalted fields would agree on every id; independent ones on ~1000 / 2**18 of them.
    assert (users == items).sum() <= 2


def test_missing_is_row_zero_and_real_ids_never_are() -> None:
    hasher = FeatureHasher("category", 16)
    buckets = hasher.hash_many([None, *(str(i) for i in range(5000)), None])
    assert buckets[0] == buckets[-1] == 0
    assert buckets[1:-1].min() >= 1
    assert buckets[1:-1].max() <= 15
    assert buckets.dtype == np.int64


def test_sequential_ids_spread_evenly() -> None:
    buckets = FeatureHasher("item", 65).hash_many([f"item-{i}" for i in range(64_000)])
    counts = np.bincount(buckets, minlength=65)[1:]
    # 1000 expected per bucket; a binomial std is ~31, so +/-15% is a > 4 sigma band.
    assert counts.min() > 850
    assert counts.max() < 1150


def test_collision_rate_matches_the_documented_formula() -> None:
    buckets = 2**15
    n = 10_000
    hashed = FeatureHasher("user", buckets + 1).hash_many([f"u{i}" for i in range(n)])
    _, counts = np.unique(hashed, return_counts=True)
    colliding = counts[counts > 1].sum() / n
    expected = expected_collision_fraction(n, buckets)
    assert expected == pytest.approx(0.2632, abs=1e-3)
    assert colliding == pytest.approx(expected, abs=0.02)


def test_scalar_and_vector_forms_agree_and_cache_eviction_is_harmless() -> None:
    ids = [f"c{i}" for i in range(300)]
    small_cache = FeatureHasher("creator", 1024, cache_size=50)
    first = small_cache.hash_many(ids)
    second = small_cache.hash_many(list(reversed(ids)))[::-1]
    np.testing.assert_array_equal(first, second)
    assert [stable_hash(i, "creator", 1024) for i in ids] == first.tolist()
    assert stable_hash(None, "creator", 1024) == 0


def test_rejects_too_few_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        FeatureHasher("user", 1)
