"""Event-time semantics: any interleaving of the two inputs within grace gives the examples
and final suppressions of the event-time order, here computed independently of the fold.

Streams come from hypothesis, with a power user (hundreds of events in bursts) beside light
ones; each input is read in its own order, the two merged with random lags under the grace
period, and fed to the worker's input pipeline (in-process, see ``tests.driver``) in random
batch sizes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.kinds import (
    CREATOR_TARGETED,
    EXPLICIT_NEGATIVE,
    NEGATIVE_KINDS,
    POSITIVE,
    STRONG_NEGATIVE,
    label_of,
    severity,
)
from streams.settings import Settings
from tests.driver import FoldDriver

T0 = 1_767_225_600.0
# The abuse guard (tested in test_user_state) is left out of the oracle.
SETTINGS = Settings(abuse_negative_cap=10**9)
STEP, SHORT, LONG_STEP = SETTINGS.window_step_s, SETTINGS.window_short_s, 1800.0
LONG_BUCKETS = round(SETTINGS.window_long_s / LONG_STEP)
SKEW = 5.0
KINDS = sorted(NEGATIVE_KINDS) + list(POSITIVE)


@dataclass(frozen=True)
class Ev:
    event_id: str
    user: str
    item: str
    creator: str
    category: str
    ts: float
    kind: str | None  # None: an impression

    def record(self) -> tuple[str, bytes, bytes, int]:
        value: dict[str, Any] = {
            "event_id": self.event_id, "user_id": self.user, "item_id": self.item,
            "creator_id": self.creator, "category": self.category, "timestamp": self.ts,
        }  # fmt: skip
        if self.kind is None:
            return ("impressions", self.user.encode(), orjson.dumps(value), 0)
        return ("feedback", self.user.encode(), orjson.dumps({**value, "kind": self.kind}), 0)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Ev], list[float], list[int]]:
    users = ["power", "light1", "light2"]
    events: list[Ev] = []
    n = 0
    for user in users:
        count = draw(st.integers(150, 500)) if user == "power" else draw(st.integers(1, 25))
        t = T0 + draw(st.floats(0, 600))
        for _ in range(count):
            # Bursts: mostly seconds apart, now and then minutes or an hour.
            gap = draw(st.sampled_from([0.5, 2.0, 7.0, 45.0, 400.0, 3600.0]))
            t += gap * draw(st.floats(0.1, 1.0))
            item = draw(st.integers(0, 6))
            creator, category = f"c{item % 3}", f"g{item % 2}"
            events.append(Ev(f"i{n}", user, f"item{item}", creator, category, t, None))
            n += 1
            for _ in range(draw(st.integers(0, 2))):
                delay = draw(st.floats(-SKEW + 0.5, 150.0))
                kind = draw(st.sampled_from(KINDS))
                events.append(Ev(f"f{n}", user, f"item{item}", creator, category, t + delay, kind))
                n += 1
    lags = [draw(st.floats(0.0, 200.0)) for _ in events]
    sizes = draw(st.lists(st.integers(1, 60), min_size=1, max_size=5))
    return events, lags, sizes


def read_order(events: list[Ev], lags: list[float]) -> list[Ev]:
    """Each input in event-time order; the two merged by a read time that lags within grace."""
    read: list[tuple[float, int, Ev]] = []
    for impressions in (True, False):
        mine = [(e, lag) for e, lag in zip(events, lags, strict=True)
                if (e.kind is None) == impressions]  # fmt: skip
        topic = sorted(mine, key=lambda pair: (pair[0].ts, pair[0].event_id))
        clock = -math.inf
        for order, (event, lag) in enumerate(topic):
            clock = max(clock, event.ts + lag)
            read.append((clock, order, event))
    return [event for _, _, event in sorted(read, key=lambda r: (r[0], r[1], r[2].event_id))]


def fold(order: list[Ev], sizes: list[int]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    driver = FoldDriver(SETTINGS)
    captured = driver.run([event.record() for event in order], sizes)
    examples = {e["example_id"]: e for e in captured.examples}
    assert len(examples) == len(captured.examples), "an example was published twice"
    suppressions = {}
    for user in {event.user for event in order}:
        state = driver.users.get(user)
        assert state is not None
        suppressions[user] = sorted(
            (s.target_type, s.target_id, s.penalty, s.expires_at) for s in state.suppressions
        )
    return examples, suppressions


# --- the oracle: the definitions of the README, written out directly ---------------------


def _step(ts: float) -> int:
    return math.floor(ts / STEP)


def _names(event: Ev) -> list[str]:
    if event.kind is None:
        return ["imp", "i:" + event.item, "c:" + event.creator]
    if event.kind in NEGATIVE_KINDS:
        names = ["neg", "k:" + event.kind, "nc:" + event.creator, "ng:" + event.category]
        return names + (["exp"] if event.kind in EXPLICIT_NEGATIVE else [])
    return ["pos", "k:" + event.kind]


def _in_windows(event: Ev, cut: int) -> tuple[bool, bool]:
    step = _step(event.ts)
    short = cut - round(SHORT / STEP) <= step < cut
    per_long = round(LONG_STEP / STEP)
    head = (cut - 1) // per_long
    long_bucket = math.floor(event.ts / LONG_STEP)
    long = head - LONG_BUCKETS < long_bucket < head or (head * per_long <= step < cut)
    return short, long


def expected_examples(events: list[Ev]) -> dict[str, dict[str, Any]]:
    impressions = [e for e in events if e.kind is None]
    owner: dict[str, str] = {}
    for fb in (e for e in events if e.kind is not None):
        joined = [
            p for p in impressions
            if p.user == fb.user and p.item == fb.item
            and -SKEW <= fb.ts - p.ts <= SETTINGS.label_window_s
        ]  # fmt: skip
        if joined:
            owner[fb.event_id] = max(joined, key=lambda p: (p.ts, p.event_id)).event_id
    expected = {}
    for p in impressions:
        own = [e for e in events if owner.get(e.event_id) == p.event_id]
        cut = _step(p.ts)
        short: Counter[str] = Counter()
        long: Counter[str] = Counter()
        for event in events:
            if event.user != p.user or event in own:
                continue
            in_short, in_long = _in_windows(event, cut)
            if in_short:
                short.update(_names(event))
            if in_long:
                long.update(_names(event))
        features = {
            "neg_rate_short": short["neg"] / short["imp"] if short["imp"] else 0.0,
            "neg_rate_long": long["neg"] / long["imp"] if long["imp"] else 0.0,
            "explicit_neg_long": float(long["exp"]),
            "creator_neg_long": float(long["nc:" + p.creator]),
            "category_neg_long": float(long["ng:" + p.category]),
            "item_exposure": float(long["i:" + p.item]),
            "creator_exposure": float(long["c:" + p.creator]),
            "impressions_long": float(long["imp"]),
        }
        kinds = tuple(e.kind for e in sorted(own, key=lambda e: (e.ts, e.event_id)) if e.kind)
        label = label_of(kinds)
        expected[p.event_id] = {"label": label, "kinds": list(kinds),
                                "weight": severity(label), "features": features}  # fmt: skip
    return expected


def expected_suppressions(events: list[Ev]) -> dict[str, list[tuple[str, str, float, float]]]:
    result = {}
    for user in {e.user for e in events}:
        feedback = sorted((e for e in events if e.user == user and e.kind is not None),
                          key=lambda e: (e.ts, e.event_id))  # fmt: skip
        held: dict[tuple[str, str], tuple[float, float]] = {}
        for index, fb in enumerate(feedback):
            if fb.kind not in STRONG_NEGATIVE:
                continue
            cut = _step(fb.ts) + 1
            earlier = feedback[: index + 1]

            def repeats(
                prefix: str, target: str, cut: int = cut, earlier: list[Ev] = earlier
            ) -> int:
                return sum(
                    1 for e in earlier
                    if e.kind in NEGATIVE_KINDS and prefix + target in _names(e)
                    and _in_windows(e, cut)[1]
                )  # fmt: skip

            group_expiry = fb.ts + SETTINGS.creator_suppression_ttl_s
            new = [("item", fb.item, 1.0, fb.ts + SETTINGS.suppression_ttl_s)]
            if fb.kind in CREATOR_TARGETED:
                new.append(("creator", fb.creator, 1.0, group_expiry))
            elif repeats("nc:", fb.creator) >= 2:
                new.append(("creator", fb.creator, 0.8, group_expiry))
            if repeats("ng:", fb.category) >= 3:
                new.append(("category", fb.category, 0.5, group_expiry))
            for target_type, target, penalty, expiry in new:
                previous = held.get((target_type, target))
                if previous is not None and previous[0] > penalty:
                    continue
                held[(target_type, target)] = (penalty, max(expiry, previous[1] if previous else 0))
        newest = max((fb.ts for fb in feedback), default=0.0)
        result[user] = sorted(
            (t, i, penalty, expiry) for (t, i), (penalty, expiry) in held.items() if expiry > newest
        )
    return result


def _comparable(example: dict[str, Any]) -> dict[str, Any]:
    features = {k: round(v, 9) for k, v in example["features"].items()}
    return {"label": example["label"], "kinds": list(example["kinds"]),
            "weight": example["weight"], "features": features}  # fmt: skip


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(streams())
def test_any_interleaving_within_grace_gives_the_event_time_outputs(
    stream: tuple[list[Ev], list[float], list[int]],
) -> None:
    events, lags, sizes = stream
    examples, suppressions = fold(read_order(events, lags), sizes)
    expected = expected_examples(events)
    assert sorted(examples) == sorted(expected), "one example per impression"
    wrong = {i: (_comparable(e), expected[i]) for i, e in examples.items()
             if _comparable(e) != {**expected[i], "features": {
                 k: round(v, 9) for k, v in expected[i]["features"].items()}}}  # fmt: skip
    assert not wrong, f"{len(wrong)} examples differ, e.g. {next(iter(wrong.items()))}"
    assert suppressions == expected_suppressions(events)


def test_an_example_never_counts_its_own_feedback() -> None:
    # The dislike comes 3 s before its impression (clock skew), in the step before it: it is
    # the impression's label, and not one of its features.
    start = T0 + 10 * STEP
    events = [
        Ev("i0", "u", "item1", "c1", "g1", start - 200.0, None),
        Ev("f1", "u", "item1", "c1", "g1", start - 3.0, "dislike"),
        Ev("i1", "u", "item1", "c1", "g1", start + 2.0, None),
    ]
    for order in (events, [events[1], events[0], events[2]], [events[2], events[1], events[0]]):
        examples, _ = fold(order, [1])
        own = examples["i1"]
        assert own["label"] == "dislike" and examples["i0"]["label"] == "none"
        assert own["features"]["explicit_neg_long"] == 0.0
        assert own["features"]["creator_neg_long"] == 0.0
        assert own["features"]["item_exposure"] == 1.0, "the earlier impression counts"
