"""Examples waiting for the model to learn them: each example's user is handed back once an
applied update names an offset at or past the example's, never before, at most once."""

from __future__ import annotations

import random

import pytest

from agents.unlearned import UnlearnedExamples


def test_examples_come_back_once_the_model_learned_their_offsets() -> None:
    unlearned = UnlearnedExamples(cap=100)
    for offset in range(5):
        assert unlearned.add(0, offset, f"u{offset}", f"a{offset}") == []
    assert unlearned.add(1, 7, "v", "b7") == []
    assert unlearned.learn({0: -1, 1: -1}) == []
    assert unlearned.learn({0: 2}) == [("u0", "a0"), ("u1", "a1"), ("u2", "a2")]
    # Partition 1 not named: its example waits; learned offsets are the newest update's.
    assert len(unlearned) == 3
    assert unlearned.learn({0: 2, 1: 6}) == []
    assert unlearned.learn({0: 3, 1: 7}) == [("u3", "a3"), ("v", "b7")]
    # Read after the model learned it: handed back at once.
    assert unlearned.add(1, 5, "w", "b5") == [("w", "b5")]
    # A restarted trainer whose model learned less: what it has not learned waits again.
    assert unlearned.learn({0: 1, 1: 1}) == []
    assert unlearned.add(1, 5, "w", "b5") == []
    assert unlearned.learn({0: 4, 1: 5}) == [("u4", "a4"), ("w", "b5")]
    assert len(unlearned) == 0 and unlearned.dropped == 0


def test_every_example_comes_back_exactly_once_at_the_first_update_covering_it() -> None:
    rng = random.Random(5)
    unlearned = UnlearnedExamples(cap=10_000)
    read: dict[str, int] = {}
    back: dict[str, int] = {}
    next_offset = [0, 0, 0]
    learned = [-1, -1, -1]
    for step in range(300):
        for _ in range(rng.randrange(10)):
            partition = rng.randrange(3)
            offset = next_offset[partition]
            next_offset[partition] += 1
            example = f"{partition}-{offset}"
            read[example] = step
            for _, example_id in unlearned.add(partition, offset, "u", example):
                back[example_id] = step
        if rng.random() < 0.3:
            learned = [rng.randint(learned[p], next_offset[p] - 1) for p in range(3)]
            for _, example_id in unlearned.learn(dict(enumerate(learned))):
                assert example_id not in back
                partition, offset = map(int, example_id.split("-"))
                assert offset <= learned[partition]
                back[example_id] = step
    covered = {e for e in read if int(e.split("-")[1]) <= learned[int(e.split("-")[0])]}
    assert set(back) == covered
    assert len(unlearned) == len(read) - len(covered)


def test_the_oldest_examples_are_dropped_past_the_cap_and_counted() -> None:
    unlearned = UnlearnedExamples(cap=3)
    for offset in range(5):
        unlearned.add(0, offset, "u", f"a{offset}")
    unlearned.add(1, 0, "v", "b0")
    assert unlearned.dropped == 2 and len(unlearned) == 4
    assert [e for _, e in unlearned.learn({0: 10, 1: 10})] == ["a2", "a3", "a4", "b0"]
    with pytest.raises(ValueError):
        UnlearnedExamples(cap=0)


def test_an_update_without_offsets_covers_everything_read() -> None:
    unlearned = UnlearnedExamples()
    unlearned.add(0, 3, "u", "a3")
    unlearned.add(2, 9, "v", "c9")
    assert sorted(unlearned.learn(None)) == [("u", "a3"), ("v", "c9")]
    # And says nothing of later examples: they wait for the next update.
    assert unlearned.add(0, 1, "u", "a1") == []
