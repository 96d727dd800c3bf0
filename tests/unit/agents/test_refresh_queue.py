"""Which queued users the rescorer rescores, and when (no broker: a dict-backed store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agents.encoder import OutputEncoder
from agents.rescorer import MAX_QUEUED_TRIGGERS, Rescorer, trigger_ids
from agents.trainer import Trainer
from agents.wiring import state_config
from streams.output import OutputProducer
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from tests.support import memory_users


def service(tmp_path: Path, users: dict[str, Any]) -> Rescorer:
    settings = Settings(data_dir=str(tmp_path), model_buckets=2**8, device="cpu",
                        score_min_interval_s=0.5, label_window_s=120.0)  # fmt: skip
    encoder = OutputEncoder(settings, Pseudonymizer(""))
    return Rescorer(settings, state_config(settings), memory_users(users), Trainer(settings),
                    encoder, OutputProducer(settings))  # fmt: skip


def state(candidates: int) -> dict[str, Any]:
    items = [{"item_id": f"i{n}", "creator_id": "c", "category": "g"} for n in range(candidates)]
    return {"clock": 100.0, "candidates": items, "suppressions": []}


def test_feedback_read_before_its_users_impressions_waits_for_candidates(tmp_path: Path) -> None:
    users: dict[str, Any] = {"u1": state(0)}
    model = service(tmp_path, users)
    model.request_refresh("u1", "dislike-1", 1_000)
    assert asyncio.run(model._due_jobs(now=10.0)) == []
    assert "u1" in model.pending, "kept queued while the user has no candidates"
    users["u1"] = state(3)  # its impressions are read
    (job,) = asyncio.run(model._due_jobs(now=11.0))
    assert job.user == "u1" and trigger_ids(job.triggers) == ("dislike-1",)
    assert model.pending == {} and model.waiting_since == {}


def test_a_user_without_candidates_is_dropped_after_the_label_window(tmp_path: Path) -> None:
    model = service(tmp_path, {})
    model.request_refresh("bot", "f-1", 1_000)
    assert asyncio.run(model._due_jobs(now=10.0)) == [] and "bot" in model.pending
    assert asyncio.run(model._due_jobs(now=129.9)) == [] and "bot" in model.pending
    assert asyncio.run(model._due_jobs(now=130.0)) == []
    assert "bot" not in model.pending and "bot" not in model.waiting_since


def test_refreshes_are_coalesced_per_user_and_triggers_bounded(tmp_path: Path) -> None:
    model = service(tmp_path, {"u1": state(2)})
    for n in range(MAX_QUEUED_TRIGGERS + 10):
        model.request_refresh("u1", f"x{n}", None)
    (job,) = asyncio.run(model._due_jobs(now=10.0))
    assert (
        len(job.triggers) == MAX_QUEUED_TRIGGERS
        and job.triggers[-1][0] == f"x{MAX_QUEUED_TRIGGERS + 9}"
    )
    model.request_refresh("u1", "f-2", 5)
    # Refreshed 0.2 s ago: it waits for the interval.
    assert asyncio.run(model._due_jobs(now=10.2)) == []
    (job,) = asyncio.run(model._due_jobs(now=10.6))
    assert trigger_ids(job.triggers) == ("f-2",)


def test_refreshes_of_everyone_take_at_most_their_share_of_wall_time(monkeypatch: Any) -> None:
    clock, calls = [0.0], []

    class Slow:
        async def refresh(self, urgent_only: bool = False) -> None:
            calls.append((clock[0], urgent_only))
            if not urgent_only:
                clock[0] += 0.25  # refreshing every queued user takes 0.25 s

    class Stop(Exception):
        pass

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        if len(calls) == 9:
            raise Stop

    monkeypatch.setattr("agents.wiring.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("agents.wiring.asyncio.sleep", sleep)
    settings = Settings(score_refresh_s=0.125, score_refresh_max_share=0.25)
    with pytest.raises(Stop):
        asyncio.run(wiring_refresh_scores(Slow(), settings))
    # 0.25 s is a quarter of 1 s: users with new feedback are rescored every 0.125 s
    # meanwhile, everyone else again from 1 s on.
    assert calls == [(0.0, False), (0.375, True), (0.5, True), (0.625, True), (0.75, True),
                     (0.875, True), (1.0, False), (1.375, True), (1.5, True)]  # fmt: skip


def test_users_with_new_feedback_are_rescored_while_the_others_wait(tmp_path: Path) -> None:
    users: dict[str, Any] = {"u1": state(2), "u2": state(2)}
    model = service(tmp_path, users)
    model.request_refresh("u1", "ex-1", None)  # a learned example
    model.request_refresh("u2", "dislike-1", 1_000)  # new feedback
    (job,) = asyncio.run(model._due_jobs(now=10.0, urgent_only=True))
    assert job.user == "u2" and list(model.pending) == ["u1"] and not model.urgent
    (job,) = asyncio.run(model._due_jobs(now=10.0))
    assert job.user == "u1"


def wiring_refresh_scores(rescorer: Any, settings: Settings) -> Any:
    from agents.wiring import refresh_scores

    return refresh_scores(rescorer, settings)
