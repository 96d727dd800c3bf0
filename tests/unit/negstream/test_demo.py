"""The demo's output: each suppression once, every kind of line limited, a status line."""

from __future__ import annotations

import math
from typing import Any

import pytest

from negstream.demo import DEMO_ENV, DemoView, FirstSeen, LineBudget, describe
from negstream.status import Status, histogram_quantile, parse_metrics
from streams.settings import Settings

SETTINGS = Settings()


def fast_path(user: str, event: str, *targets: tuple[str, str]) -> dict[str, Any]:
    return {
        "user_id": user,
        "source": "fast_path",
        "trigger_event_ids": [event],
        "model_version": 0,
        "scores": [],
        "suppressions": [
            {"target_type": kind, "target_id": target, "penalty": 1.0, "reason": "hide",
             "expires_at": 0.0}
            for kind, target in targets
        ],
    }  # fmt: skip


def test_each_suppression_is_printed_once(capsys: pytest.CaptureFixture[str]) -> None:
    view = DemoView(SETTINGS, "http://unused", lines=100, status_every=5)
    view.show("scores", fast_path("u1", "e1", ("item", "i1")))
    # The input pipeline publishes the fast lane's update again...
    view.show("scores", fast_path("u1", "e1", ("item", "i1")))
    # ...and the user's next strong negative repeats the first suppression.
    view.show("scores", fast_path("u1", "e2", ("item", "i1"), ("creator", "c1")))
    view.show("scores", fast_path("u2", "e3", ("item", "i1")))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[suppress] u1: item i1 (hide)",
        "[suppress] u1: creator c1 (hide)",
        "[suppress] u2: item i1 (hide)",
    ]


def test_every_kind_of_line_is_limited_and_the_rest_counted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = DemoView(SETTINGS, "http://unused", lines=2, status_every=5)
    letter = {"reason": "bad_json", "topic": "impressions", "partition": 0, "offset": 1,
              "detail": "unexpected end of data"}  # fmt: skip
    for index in range(5):
        view.show("dead-letter", letter)
        view.show("scores", fast_path("u", f"e{index}", ("item", f"i{index}")))
    out = capsys.readouterr().out
    assert out.count("[dead-letter]") == 2 and out.count("[suppress]") == 2
    assert view.budget.close_period() == "3 suppressions, 3 dead letters"
    assert view.budget.close_period() == ""
    view.show("dead-letter", letter)
    assert capsys.readouterr().out.count("[dead-letter]") == 1


def test_line_budget_counts_per_kind() -> None:
    budget = LineBudget(1)
    assert [budget.allow("drift") for _ in range(3)] == [True, False, False]
    assert budget.allow("scores")
    assert budget.close_period() == "2 drift reports"


def test_first_seen_forgets_the_oldest() -> None:
    seen = FirstSeen(size=2)
    assert seen.new(["a", "b", "c"]) == ["a", "b", "c"]
    assert seen.new(["a"]) == ["a"]  # forgotten: only the 2 newest are kept


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.01, 10.0), (0.05, 90.0), (0.1, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 + 0.04 * 40 / 80)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.05 + 0.05 * 9 / 10)
    assert math.isnan(histogram_quantile(0.5, [(0.01, 0.0), (math.inf, 0.0)]))


def page(events: int, examples: int, fast: dict[str, int], version: int, lag: int) -> str:
    prefix = SETTINGS.topic("impressions")
    lines = [
        "# TYPE negstream_events_total counter",
        f'negstream_events_total{{type="impression",outcome="accepted"}} {events - 10}',
        'negstream_events_total{type="feedback",outcome="dead_letter"} 10',
        "# TYPE negstream_examples_total counter",
        f'negstream_examples_total{{label_group="none"}} {examples}',
        "# TYPE negstream_model_version gauge",
        f"negstream_model_version {version}",
        "# TYPE negstream_topic_partition_end_offset gauge",
        f'negstream_topic_partition_end_offset{{topic="{prefix}",partition="0"}} {100 + lag}',
        "# TYPE negstream_topic_partition_offset_commited gauge",
        f'negstream_topic_partition_offset_commited{{topic="{prefix}",partition="0"}} 100',
        "# TYPE negstream_feedback_to_score_seconds histogram",
    ]
    lines += [
        f'negstream_feedback_to_score_seconds_bucket{{path="fast",le="{le}"}} {count}'
        for le, count in fast.items()
    ]
    return "\n".join(lines) + "\n"


def test_status_line_from_two_scrapes() -> None:
    before = parse_metrics(page(1000, 400, {"0.01": 0, "0.05": 0, "+Inf": 0}, 3, 0))
    after = parse_metrics(page(2500, 1150, {"0.01": 50, "0.05": 100, "+Inf": 100}, 9, 37))
    status = Status.between(before, after, 5.0, SETTINGS)
    assert status.events_per_s == pytest.approx(300)
    assert status.examples_per_s == pytest.approx(150)
    assert status.input_lag == 37 and status.model_version == 9
    assert status.fast_p50_s == pytest.approx(0.01)
    assert status.describe() == (
        "in 300 events/s | examples 150/s | lag 37 (training 0) | "
        "fast path p50 10 ms, p99 49 ms | model v9"
    )


def test_drift_lines_show_counts_as_counts() -> None:
    report = {"model_version": 12, "metrics": {"examples": 1670.0, "psi_p_negative": 0.31},
              "alerts": [{"metric": "psi_p_negative", "value": 0.31, "threshold": 0.25,
                          "level": "act"}]}  # fmt: skip
    line = describe("drift", report)
    assert "examples 1,670 |" in line and "1670.000" not in line
    assert line.endswith("ALERT psi_p_negative 0.310 > 0.25 (act)")


def test_demo_checkpoints_are_small() -> None:
    demo = Settings.from_env(DEMO_ENV)
    assert demo.model_buckets <= Settings().model_buckets // 8
