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


def test_refreshes_take_at_most_their_share_of_wall_time(monkeypatch: Any) -> None:
    import agents.wiring as wiring

    clock, pauses = [0.0], []

    class Slow:
        async def refresh(self) -> None:
            clock[0] += 0.2  # a refresh that takes 0.2 s

    class Stop(Exception):
        pass

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise Stop

    monkeypatch.setattr("agents.wiring.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("agents.wiring.asyncio.sleep", sleep)
    settings = Settings(score_refresh_s=0.1, score_refresh_max_share=0.25)
    with pytest.raises(Stop):
        asyncio.run(wiring.refresh_scores(Slow(), settings))  # type: ignore[arg-type]
    # 0.2 s of rescoring is a quarter of 0.8 s: the next refresh waits 0.6 s, not 0.1 s.
    assert pauses == [pytest.approx(0.6)] * 3
