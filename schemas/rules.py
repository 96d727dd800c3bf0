"""Field rules of input events: each checks a value for the worker and states itself as JSON Schema.

A rule's two sides read the same attributes, and :class:`RecordRules` builds both the worker's
check of a whole record and its JSON Schema from one table of fields, so a constraint cannot
exist on one side only. ``tests/unit/schemas/test_contract.py`` checks that the two agree.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, Protocol, TypeVar

#: Every reason a message can be rejected with; each is a ``reason`` label on dead letters.
REASONS: Final = (
    "oversize",
    "not_utf8",
    "bad_json",
    "nan",
    "too_deep",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_kind",
    "timestamp_out_of_range",
    "key_mismatch",
)

#: Event times are in [FIRST_YEAR, END_YEAR) UTC.
FIRST_YEAR: Final = 2000
END_YEAR: Final = 2100
#: The same range in epoch seconds.
MIN_TIMESTAMP: Final = float(calendar.timegm((FIRST_YEAR, 1, 1, 0, 0, 0)))
MAX_TIMESTAMP: Final = float(calendar.timegm((END_YEAR, 1, 1, 0, 0, 0)))
MAX_ID_LENGTH: Final = 512


class ValidationError(ValueError):
    """An input message that negstream rejects; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Rule(Protocol):
    """What a present, non-null field value must be."""

    def check(self, name: str, value: Any, latest: float | None) -> Any:
        """The value as the record holds it, or raise :class:`ValidationError`.

        ``latest`` (epoch seconds), when given, is the latest event time accepted.
        """

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of the values :meth:`check` accepts."""


@dataclass(frozen=True, slots=True)
class Text:
    """A string of ``min_length`` to ``max_length`` characters (code points).

    Examples
    --------
    >>> Text(1, 3).check("item_id", "abc", None)
    'abc'
    >>> Text(1, 3).json_schema()
    {'type': 'string', 'minLength': 1, 'maxLength': 3}
    """

    min_length: int = 1
    max_length: int = MAX_ID_LENGTH

    def check(self, name: str, value: Any, latest: float | None) -> str:
        if not isinstance(value, str):
            raise ValidationError("wrong_type", f"field {name!r} must be a string")
        if not self.min_length <= len(value) <= self.max_length:
            detail = f"field {name!r} must have {self.min_length}..{self.max_length} chars"
            raise ValidationError("bad_value", detail)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "minLength": self.min_length, "maxLength": self.max_length}


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a fixed set of strings; any other string is rejected with ``reason``.

    Examples
    --------
    >>> Choice(frozenset({"a", "b"})).json_schema()
    {'type': 'string', 'enum': ['a', 'b']}
    """

    choices: frozenset[str]
    reason: str = "unknown_kind"

    def check(self, name: str, value: Any, latest: float | None) -> str:
        if not isinstance(value, str):
            raise ValidationError("wrong_type", f"field {name!r} must be a string")
        if value not in self.choices:
            detail = f"{name} {value[:40]!r} is not one of {sorted(self.choices)}"
            raise ValidationError(self.reason, detail)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": sorted(self.choices)}


@dataclass(frozen=True, slots=True)
class Count:
    """An integer in ``[minimum, exclusive_maximum)``; ``3.0`` counts as ``3``, as in JSON.

    Examples
    --------
    >>> Count().check("position", 3.0, None)
    3
    >>> Count().json_schema()
    {'type': 'integer', 'minimum': 0, 'exclusiveMaximum': 2147483648}
    """

    minimum: int = 0
    exclusive_maximum: int = 2**31

    def check(self, name: str, value: Any, latest: float | None) -> int:
        number: int = value if value.__class__ is int else _integer(name, value)
        if not self.minimum <= number < self.exclusive_maximum:
            detail = f"field {name!r} must be in [{self.minimum}, {self.exclusive_maximum})"
            raise ValidationError("bad_value", detail)
        return number

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "integer",
            "minimum": self.minimum,
            "exclusiveMaximum": self.exclusive_maximum,
        }


def _integer(name: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        # JSON has one number type: 3.0 is the integer 3 to every JSON Schema validator.
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValidationError("wrong_type", f"field {name!r} must be an integer")


def _rfc3339(date: str) -> str:
    """Regex of an RFC 3339 date-time with an offset; ``T`` or a space between date and time,
    seconds optional (Java's ``OffsetDateTime.toString()`` drops them at whole minutes)."""
    time = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]+)?)?"
    offset = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])"
    # [0-9], not \d (Unicode digits in Python); the lookahead, not $ (which Python lets match
    # before a final newline), ends the string the same way in Python and ECMA-262 regexes.
    return rf"^(?:{date})[T ]{time}{offset}(?![\s\S])"


def _calendar_dates(first_year: int, end_year: int) -> str:
    """Regex of the real calendar dates of one century, ``first_year`` a multiple of 100."""
    if first_year % 100 or end_year != first_year + 100:
        raise ValueError("event-time years must be one whole century")
    century = f"{first_year // 100:02d}"
    # Every fourth year is a leap year; the century's first only when divisible by 400.
    leap = (
        r"[02468][048]|[13579][26]" if first_year % 400 == 0 else r"0[48]|[2468][048]|[13579][26]"
    )
    month_day = (
        r"(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
        r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
        r"|02-(?:0[1-9]|1[0-9]|2[0-8])"
    )
    return rf"{century}[0-9]{{2}}-(?:{month_day})|{century}(?:{leap})-02-29"


#: An RFC 3339 event time in range, as a JSON Schema ``pattern`` (ECMA-262) and for ``re``.
TIMESTAMP_PATTERN: Final = _rfc3339(_calendar_dates(FIRST_YEAR, END_YEAR))
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
#: The same shape in any year, to tell an out-of-range date from a malformed one.
_ANY_YEAR = re.compile(_rfc3339(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))


@dataclass(frozen=True, slots=True)
class EventTime:
    """Epoch seconds in ``[MIN_TIMESTAMP, MAX_TIMESTAMP)``, or an RFC 3339 string with an
    offset whose date, as written, lies in ``FIRST_YEAR`` to ``END_YEAR - 1``.

    Examples
    --------
    >>> EventTime().check("timestamp", "2026-01-01T01:00:00+01:00", None)
    1767225600.0
    """

    def check(self, name: str, value: Any, latest: float | None) -> float:
        written = False
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            seconds = float(value)
        elif isinstance(value, str):
            try:
                if _TIMESTAMP.match(value) is None:
                    raise ValueError(value)
                # Raises only if this Python's parser disagrees with the pattern: never crash.
                seconds = datetime.fromisoformat(value).timestamp()
            except ValueError:
                raise _string_error(value) from None
            written = True
        else:
            raise ValidationError("wrong_type", f"field {name!r} must be a number or string")
        if latest is not None and seconds > latest:
            # A clock far ahead would drag the event-time watermark with it and make every
            # other user's events on the partition late.
            raise ValidationError(
                "timestamp_out_of_range",
                f"timestamp {value} is later than the allowed {latest:.0f}",
            )
        # A written date's range is in the pattern: its instant may lie up to a day outside.
        if not written and not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
            raise _range_error(value, seconds)
        return seconds

    def json_schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {
                    "type": "number",
                    "minimum": MIN_TIMESTAMP,
                    "exclusiveMaximum": MAX_TIMESTAMP,
                    "$comment": "The 'not' rejects NaN, which every comparison lets through.",
                    "not": {"minimum": 1, "maximum": 0},
                },
                {"type": "string", "pattern": TIMESTAMP_PATTERN},
            ]
        }


def _range_error(value: Any, seconds: float) -> ValidationError:
    if isinstance(value, str):
        shown, hint = repr(value), ""
    else:
        shown, hint = f"{value}", " in epoch seconds"
        if seconds >= MAX_TIMESTAMP * 100:
            hint += " (milliseconds? divide by 1000)"
    span = f"[{FIRST_YEAR}-01-01, {END_YEAR}-01-01)"
    return ValidationError("timestamp_out_of_range", f"timestamp {shown} is outside {span}{hint}")


def _string_error(value: str) -> ValidationError:
    """Why a timestamp string does not match :data:`TIMESTAMP_PATTERN` (not on the hot path)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.tzinfo is None:
        return ValidationError("bad_value", "timestamp string needs a UTC offset (e.g. 'Z')")
    if parsed is not None and _ANY_YEAR.match(value):
        return _range_error(value, parsed.timestamp())
    detail = f"timestamp {value[:40]!r} is not an RFC 3339 date-time like '2026-01-01T00:00:00Z'"
    return ValidationError("bad_value", detail)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a record: its rule, whether it must be present, and what it means."""

    name: str
    rule: Rule
    required: bool = False
    description: str = ""
    #: The message key must equal this field's value (UTF-8), when the message has a key.
    is_key: bool = False


R = TypeVar("R")


class RecordRules(Generic[R]):
    """The fields of one input record (sent to ``topic``), in the order the worker checks them.

    ``validate`` is the worker's check; ``json_schema`` the producers'. A field that is absent
    or ``null`` is missing: a required one is rejected (``missing_field``), an optional one
    left at ``None``. Properties not declared are allowed and ignored. The key field, when
    there is one, comes first: a message keyed for another user is reported as such
    (``key_mismatch``) whatever else is wrong with it.
    """

    def __init__(
        self, topic: str, title: str, record: type[R], fields: tuple[Field, ...], context: str
    ) -> None:
        if not dataclasses.is_dataclass(record):
            raise TypeError(f"{title}: {record!r} is not a dataclass")
        order = [field.name for field in dataclasses.fields(record)]
        declared = [field.name for field in fields]
        if sorted(declared) != sorted(order):
            raise TypeError(f"{title}: declared fields {declared} are not {order}")
        if any(field.is_key for field in fields[1:]):
            raise TypeError(f"{title}: only the first field can be the message key")
        self.topic, self.title, self.record = topic, title, record
        self.fields, self.context = fields, context
        # Built positionally, in the record's field order: keywords cost a fifth of the check.
        self._size = len(order)
        plan = [(order.index(f.name), f.name, f.rule.check, f.required) for f in fields]
        self._key_field = plan[0] if fields[0].is_key else None
        self._plan = tuple(plan[1:] if fields[0].is_key else plan)

    def validate(
        self, obj: dict[str, Any], key: bytes | None = None, latest: float | None = None
    ) -> R:
        """The record built from a decoded object, or raise :class:`ValidationError`."""
        values: list[Any] = [None] * self._size
        get = obj.get
        if self._key_field is not None:
            index, name, check, _ = self._key_field
            value = get(name)
            if value is None:
                raise ValidationError("missing_field", f"field {name!r} is required")
            values[index] = check(name, value, latest)
            if key is not None and key != value.encode():
                shown = key[:64].decode("utf-8", "replace")
                raise ValidationError(
                    "key_mismatch", f"message key {shown!r} is not {name} {value!r}"
                )
        for index, name, check, required in self._plan:
            value = get(name)
            if value is None:
                if required:
                    raise ValidationError("missing_field", f"field {name!r} is required")
                continue
            values[index] = check(name, value, latest)
        return self.record(*values)

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of a message value."""
        properties: dict[str, Any] = {}
        for field in self.fields:
            schema = field.rule.json_schema()
            if not field.required:
                schema = {"anyOf": [schema, {"type": "null"}]}
            properties[field.name] = {"description": field.description, **schema}
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://negstream.dev/schemas/{self.title}.json",
            "title": self.title,
            "description": f"Value of a message on {self.topic!r}. {self.context}",
            "type": "object",
            "properties": properties,
            "required": [field.name for field in self.fields if field.required],
        }
