"""The label sweep advances a user only when something of theirs is due: a user whose last
claimed feedback has left its window is not brought due again on every later sweep."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from agents.state import fold
from streams.settings import Settings
from tests.driver import FoldDriver

T0 = 1_767_225_600.0


def record(driver: FoldDriver, topic: str, value: dict[str, Any]) -> Any:
    return driver.message(topic, value["user_id"].encode(), orjson.dumps(value))


def test_a_user_is_swept_once_for_the_label_and_once_for_the_feedback_leaving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    driver = FoldDriver(dataclasses.replace(Settings(), label_window_s=60.0))
    advanced: Counter[str] = Counter()
    advance = fold.advance

    def counting(state: Any, watermark: float, user_id: str, config: Any) -> Any:
        advanced[user_id] += 1
        return advance(state, watermark, user_id, config)

    monkeypatch.setattr(fold, "advance", counting)

    async def go() -> None:
        await driver.pipeline.process([
            record(driver, "impressions", {"event_id": "i0", "user_id": "u1", "item_id": "a",
                                           "timestamp": T0}),
            record(driver, "feedback", {"event_id": "f0", "user_id": "u1", "item_id": "a",
                                        "kind": "dislike", "timestamp": T0 + 5}),
        ])  # fmt: skip
        # Other users' events move both inputs' event time on, a batch each, for ten minutes.
        for n in range(1, 61):
            seen = {"event_id": f"v{n}", "user_id": f"v{n}", "item_id": "b",
                    "timestamp": T0 + 10 * n}  # fmt: skip
            liked = {**seen, "event_id": f"w{n}", "kind": "like", "timestamp": T0 + 10 * n + 1}
            await driver.pipeline.process(
                [record(driver, "impressions", seen), record(driver, "feedback", liked)]
            )
        await driver.pipeline.flush()

    asyncio.run(go())
    (example,) = [e for e in driver.captured.examples if e["example_id"] == "i0"]
    assert example["label"] == "dislike"
    state = driver.users.get("u1")
    assert state is not None and not state.pending and not state.reactions
    assert 1 <= advanced["u1"] <= 2


#: The checkout, whose packages the replay imports.
ROOT = Path(__file__).resolve().parents[3]
#: Folds a small heavy-world stream and prints the example ids in the order published.
REPLAY = """
import asyncio, orjson
from simulator.stream import Simulator
from simulator.worlds import world_config
from streams.settings import Settings
from tests.benchmarks.harness import INPUT_TOPICS
from tests.driver import FoldDriver

driver = FoldDriver(Settings())
events = [
    driver.message(INPUT_TOPICS[e.topic], e.key.encode(), orjson.dumps(e.value))
    for e in Simulator(world_config("heavy", seed=3, n_users=300)).events(3000)
]

async def fold():
    for first in range(0, len(events), 500):
        await driver.feed(events[first : first + 500])
    await driver.finish()

asyncio.run(fold())
print(" ".join(e["example_id"] for e in driver.captured.examples))
"""


def test_a_replayed_stream_gives_its_examples_in_one_order_whatever_the_hash_seed() -> None:
    # The model learns examples in the order they are published: a replay learns the same
    # model only if that order is not the interpreter's order of a set of strings.
    orders = [
        subprocess.run(
            [sys.executable, "-c", REPLAY],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for seed in ("1", "2")
    ]
    assert len(orders[0]) > 1000
    assert orders[0] == orders[1]
