"""The published JSON Schema accepts exactly the values the worker accepts.

The worker runs with its context rules off (no message key, no clock, no size limit), and the
values stay inside what the schema's description leaves to the encoding (finite numbers within
double range, no lone surrogates, shallow nesting), which no JSON Schema can see.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.contract import CONTEXT_RULES, FEEDBACK, IMPRESSION, RECORDS
from schemas.jsonschema import SCHEMAS
from schemas.kinds import ALL_KINDS
from schemas.rules import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    REASONS,
    TIMESTAMP_PATTERN,
    Choice,
    Count,
    EventTime,
    Rule,
    Text,
    ValidationError,
    _calendar_dates,
)
from schemas.validation import decode_feedback, decode_impression

TOPICS = sorted(SCHEMAS)
VALIDATORS = {topic: Draft202012Validator(SCHEMAS[topic]()) for topic in TOPICS}
DECODERS = {"impressions": decode_impression, "negative-feedback": decode_feedback}
ABSENT = object()


def worker_verdict(topic: str, value: Any) -> str | None:
    """The worker's dead-letter reason for ``value`` sent as JSON, or None when it accepts it."""
    raw = json.dumps(value, ensure_ascii=False).encode()
    try:
        DECODERS[topic](raw, key=None, max_bytes=len(raw), latest=None)
    except ValidationError as error:
        assert error.reason in REASONS
        return error.reason
    return None


def assert_same_verdict(topic: str, value: Any) -> str | None:
    reason = worker_verdict(topic, value)
    errors = [error.message for error in VALIDATORS[topic].iter_errors(value)]
    assert (reason is None) == (not errors), (
        f"worker: {reason or 'accepts'}; schema: {errors or 'accepts'}; value: {value!r}"
    )
    return reason


# --- what each rule might be given -----------------------------------------------------------

OTHER_TYPES: list[Any] = [None, True, False, [], [1], {}, {"a": 1}]
NON_FINITE = [math.nan, math.inf, -math.inf]


def rfc3339_text(day: str, time: str = "00:00:00", offset: str = "Z", sep: str = "T") -> str:
    return f"{day}{sep}{time}{offset}"


#: Event-time strings the worker reads and the ones it refuses, each for a reason.
TIME_STRINGS = [
    "2026-01-01T00:00:00Z",
    "2026-01-01 00:00+0100",
    "2028-02-29T23:59:59.123456789-11:30",
    "2000-01-01T00:00:00+01:00",  # dated 2000, an instant in 1999: the date decides
    "2099-12-31T23:00:00-02:00",  # dated 2099, an instant in 2100
    "1999-12-31T23:00:00-02:00",  # dated 1999, an instant in 2000
    "2100-01-01T00:30:00+01:00",
    "2026-01-01T00:00:00",  # no offset
    "2026-01-01",
    "2026-W01-1T00:00Z",
    "2026-001T00:00Z",
    "20260101T000000Z",
    "2026-01-01T00Z",
    "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00:00.Z",
    "2026-01-01T00:00:00+01:00:30",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:60Z",
    "2026-02-29T00:00:00Z",
    "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-01-01t00:00:00z",
    "2026-01-01X00:00:00Z",
    "2026-01-01T00:00:00Z\n",
    " 2026-01-01T00:00:00Z",
    "2026-01-01T0\u0663:00:00Z",  # an Arabic-Indic 3, a digit to Python's \d
    "\uff12026-01-01T00:00:00Z",
    "yesterday",
    "",
]
#: Values of every kind the validators tell apart, for each rule type.
EDGES: dict[type, list[Any]] = {
    Text: ["a", "\U0001f600", "", "a" * 512, "\U0001f600" * 512, "a" * 513, "\u00e9" * 513, 0, 1.5],
    Choice: [*sorted(ALL_KINDS), "HIDE", "hide ", "none", "", 3],
    Count: [0, 3, 3.0, -0.0, 3.5, -1, -1.0, 2**31 - 1, 2**31, float(2**31), 2**64, 1e300, "3"],
    EventTime: [
        MIN_TIMESTAMP,
        int(MIN_TIMESTAMP),
        math.nextafter(MIN_TIMESTAMP, 0),
        int(MIN_TIMESTAMP) - 1,
        math.nextafter(MAX_TIMESTAMP, 0),
        MAX_TIMESTAMP,
        int(MAX_TIMESTAMP),
        1_767_225_600,
        1_767_225_600_000,
        0,
        -1.5,
        *NON_FINITE,
        *TIME_STRINGS,
    ],
}


def edges(rule: Rule) -> list[Any]:
    extra = NON_FINITE if isinstance(rule, Count | EventTime) else []
    return [*EDGES[type(rule)], *extra, *OTHER_TYPES]


def good_value(rule: Rule) -> Any:
    """The first edge value ``rule`` accepts."""
    for value in edges(rule):
        try:
            rule.check("field", value, None)
        except ValidationError:
            continue
        return value
    raise AssertionError(f"no valid edge value for {rule!r}")


# --- generated values ------------------------------------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Beyond about 1e308 orjson reads an integer as an infinite double (an encoding rule).
INTEGERS = st.integers(min_value=-(10**300), max_value=10**300)
JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | FINITE | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def written_times(
    draw: st.DrawFn, first: date = date(2000, 1, 1), last: date = date(2099, 12, 31)
) -> tuple[str, datetime]:
    """A date-time string of the accepted shape dated ``first`` to ``last``, and its instant."""
    day = draw(st.dates(min_value=first, max_value=last))
    hour, minute, second = draw(st.integers(0, 23)), draw(st.integers(0, 59)), 0
    time, fraction = f"{hour:02d}:{minute:02d}", ""
    if draw(st.booleans()):
        second = draw(st.integers(0, 59))
        time += f":{second:02d}"
        if draw(st.booleans()):
            fraction = draw(st.text("0123456789", min_size=1, max_size=12))
            time += "." + fraction
    sign, minutes = draw(st.sampled_from([0, 1, -1])), draw(st.integers(0, 24 * 60 - 1))
    offset = "Z"
    if sign:
        colon = draw(st.sampled_from(["", ":"]))
        offset = f"{'+' if sign > 0 else '-'}{minutes // 60:02d}{colon}{minutes % 60:02d}"
    zone = timezone(timedelta(minutes=sign * minutes))
    micros = int(fraction[:6].ljust(6, "0"))  # digits beyond microseconds are dropped
    instant = datetime(day.year, day.month, day.day, hour, minute, second, micros, zone)
    return rfc3339_text(day.isoformat(), time, offset, draw(st.sampled_from("T "))), instant


def rfc3339(
    first: date = date(2000, 1, 1), last: date = date(2099, 12, 31)
) -> st.SearchStrategy[str]:
    return written_times(first, last).map(lambda pair: pair[0])


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with one character deleted, replaced or inserted, or a digit of another script."""
    at = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["delete", "replace", "insert", "foreign digit"]))
    if how == "foreign digit":
        digits = [i for i, char in enumerate(text) if char.isdigit()]
        at = draw(st.sampled_from(digits))
        zero = draw(st.sampled_from([0x660, 0x6F0, 0x966, 0xFF10]))
        return text[:at] + chr(zero + int(text[at])) + text[at + 1 :]
    # Any character UTF-8 can carry: JSON on the wire is UTF-8, so no lone surrogates.
    stray = draw(st.sampled_from("0123456789-:.,+TtZz W\n") | st.characters(codec="utf-8"))
    if how == "insert":
        return text[:at] + stray + text[at:]
    return text[:at] + ("" if how == "delete" else stray) + text[at + 1 :]


def valid_values(rule: Rule) -> st.SearchStrategy[Any]:
    if isinstance(rule, Text):
        return st.text(min_size=rule.min_length, max_size=min(rule.max_length, 20))
    if isinstance(rule, Choice):
        return st.sampled_from(sorted(rule.choices))
    if isinstance(rule, Count):
        return st.integers(rule.minimum, rule.exclusive_maximum - 1)
    if isinstance(rule, EventTime):
        seconds = st.floats(min_value=MIN_TIMESTAMP, max_value=MAX_TIMESTAMP, exclude_max=True)
        return seconds | st.integers(int(MIN_TIMESTAMP), int(MAX_TIMESTAMP) - 1) | rfc3339()
    raise AssertionError(f"no values for {rule!r}: add them here and to EDGES")


def doubtful_values(rule: Rule) -> st.SearchStrategy[Any]:
    """The rule's edge cases, values of its type near them, and any JSON."""
    near: st.SearchStrategy[Any] = st.sampled_from(edges(rule))
    if isinstance(rule, Text | Choice):
        near = near | st.text(max_size=12)
    if isinstance(rule, Count | EventTime):
        near = near | INTEGERS | FINITE
    if isinstance(rule, Count):
        near = near | valid_values(rule).map(float)
    if isinstance(rule, EventTime):
        dated = (
            rfc3339(date(1, 1, 1), date(9999, 12, 31))
            | rfc3339(date(1999, 12, 31), date(2000, 1, 1))
            | rfc3339(date(2099, 12, 31), date(2100, 1, 1))
        )
        near = near | dated | rfc3339().flatmap(mutated)
    return st.one_of(near, near, near, JSON)


@st.composite
def records(draw: st.DrawFn, topic: str, broken: str | None = None) -> dict[str, Any]:
    """A valid value of ``topic`` with extra properties now and then, or, with ``broken``,
    one field (``broken`` names it, or "any") absent, null or doubtful."""
    fields = RECORDS[topic].fields
    target = None
    if broken:
        target = draw(st.sampled_from([f.name for f in fields if broken in ("any", f.name)]))
    value: dict[str, Any] = {}
    for field in fields:
        if field.name == target:
            how = draw(st.sampled_from(["absent", "null"] + ["doubtful"] * 6))
            if how != "absent":
                value[field.name] = None if how == "null" else draw(doubtful_values(field.rule))
        elif field.required or draw(st.booleans()):
            valid = valid_values(field.rule)
            value[field.name] = draw(valid if field.required else valid | st.none())
    value.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=2)))
    return value


def values(topic: str) -> st.SearchStrategy[Any]:
    declared = st.sampled_from([field.name for field in RECORDS[topic].fields])
    arbitrary_object = st.dictionaries(declared | st.text(max_size=8), JSON, max_size=8)
    # Event time has the most ways to be wrong: it gets a share of its own.
    broken = records(topic, "any") | records(topic, "timestamp")
    return st.one_of(records(topic), broken, broken, arbitrary_object, JSON)


# --- properties ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", TOPICS)
def test_published_schemas_are_valid_draft_2020_12(topic: str) -> None:
    Draft202012Validator.check_schema(SCHEMAS[topic]())
    assert CONTEXT_RULES in SCHEMAS[topic]()["description"]


@pytest.mark.parametrize("topic", TOPICS)
def test_schema_and_worker_agree_on_every_edge_of_every_field(topic: str) -> None:
    fields = RECORDS[topic].fields
    valid = {field.name: good_value(field.rule) for field in fields}
    assert assert_same_verdict(topic, valid) is None
    seen = set()
    for field in fields:
        for edge in [ABSENT, *edges(field.rule)]:
            value = {**valid, field.name: edge}
            if edge is ABSENT:
                del value[field.name]
            seen.add(assert_same_verdict(topic, value))
    assert seen >= {None, "missing_field", "wrong_type", "bad_value", "timestamp_out_of_range"}


@pytest.mark.parametrize("topic", TOPICS)
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_schema_and_worker_agree(topic: str, data: st.DataObject) -> None:
    reason = assert_same_verdict(topic, data.draw(values(topic), label="value"))
    event(reason or "accepted")


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        ("2026-01-01T00:00:00", "bad_value"),  # issue 22: the schema used to accept both
        (math.nan, "nan"),
        ("2026-02-29T00:00:00Z", "bad_value"),
        ("1999-12-31T23:00:00-02:00", "timestamp_out_of_range"),
        (1_767_225_600_000, "timestamp_out_of_range"),
        ("2026-01-01 00:00+0100", None),
    ],
)
def test_the_worker_gives_these_reasons(timestamp: Any, reason: str | None) -> None:
    value = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "timestamp": timestamp}
    assert worker_verdict("impressions", value) == reason


def test_integral_numbers_are_integers_on_both_sides() -> None:
    value = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "timestamp": 1.8e9}
    assert IMPRESSION.validate({**value, "position": 3.0}).position == 3
    assert worker_verdict("impressions", {**value, "position": 3.5}) == "wrong_type"
    assert VALIDATORS["impressions"].is_valid({**value, "position": 3.0})


@pytest.mark.parametrize("first", [2000, 2100])
def test_date_pattern_is_the_calendar_of_its_century(first: int) -> None:
    dates = re.compile(rf"^(?:{_calendar_dates(first, first + 100)})$")
    for year in range(first - 1, first + 101):
        for month in range(0, 14):
            for day in (0, 1, 28, 29, 30, 31, 32):
                try:
                    date(year, month, day)
                    real = first <= year < first + 100
                except ValueError:
                    real = False
                assert bool(dates.match(f"{year:04d}-{month:02d}-{day:02d}")) == real
    # 2000 is a leap year (divisible by 400), 2100 is not.
    assert bool(dates.match(f"{first}-02-29")) == (first == 2000)


@settings(max_examples=300, deadline=None)
@given(written_times())
def test_an_accepted_string_is_the_instant_it_writes(written: tuple[str, datetime]) -> None:
    text, instant = written
    assert re.match(TIMESTAMP_PATTERN, text)
    assert EventTime().check("timestamp", text, None) == instant.timestamp()


def test_every_record_field_has_a_rule_and_a_description() -> None:
    for rules in (IMPRESSION, FEEDBACK):
        schema = rules.json_schema()
        assert list(schema["properties"]) == [field.name for field in rules.fields]
        assert all(prop["description"] for prop in schema["properties"].values())
        assert set(schema["required"]) == {f.name for f in rules.fields if f.required}
    assert set(FEEDBACK.json_schema()["properties"]["kind"]["enum"]) == ALL_KINDS
