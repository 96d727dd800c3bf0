"""Output records: pseudonymised, partitioned and encoded in one place, in one shape."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from schemas.codec import encode
from schemas.events import DeadLetter, Example, ScoreUpdate
from streams.privacy import Pseudonymizer
from streams.settings import Settings


class OutputRecord(NamedTuple):
    """One record for the output producer."""

    topic: str
    key: bytes | None
    value: bytes
    #: Set when the key no longer hashes to the user's partition (pseudonymous ids).
    partition: int | None


class OutputEncoder:
    """Turns examples, score updates and dead letters into :class:`OutputRecord`.

    With pseudonymous ids the key no longer hashes to the user's partition, so each record
    names its partition explicitly: outputs stay co-partitioned with the input.
    """

    def __init__(self, settings: Settings, pseudonym: Pseudonymizer) -> None:
        self.pseudonym = pseudonym
        self.examples_topic = settings.topic("examples")
        self.scores_topic = settings.topic("scores")
        self.dead_letters_topic = settings.topic("dead_letters")
        self.drift_topic = settings.topic("drift")

    def published_id(self, user_id: str) -> str:
        """The id a user is published under."""
        return self.pseudonym(user_id)

    def score_update(self, update: ScoreUpdate, partition: int | None) -> OutputRecord:
        """A score update, keyed by its (published) user id."""
        return self._per_user(self.scores_topic, update, update.user_id, partition)

    def example(self, example: Example, partition: int | None) -> OutputRecord:
        """A training example, keyed by its (published) user id."""
        return self._per_user(self.examples_topic, example, example.user_id, partition)

    def _per_user(
        self, topic: str, record: Example | ScoreUpdate, user_id: str, partition: int | None
    ) -> OutputRecord:
        hide = self.pseudonym.enabled
        published = self.pseudonym(user_id)
        value = encode(replace(record, user_id=published) if hide else record)
        return OutputRecord(topic, published.encode(), value, partition if hide else None)

    def dead_letter(self, letter: DeadLetter, key: bytes | None) -> OutputRecord:
        """A rejected input under its original key; with pseudonymous ids, the payload (which
        names the user) is replaced by its size and digest, and the key by its pseudonym."""
        if self.pseudonym.enabled:
            hidden = None if key is None else self.pseudonym(key.decode("utf-8", "replace"))
            key = None if hidden is None else hidden.encode()
            detail = letter.detail
            if letter.reason == "key_mismatch":
                detail = "message key is not the user_id"
            letter = replace(letter, key=hidden, value_b64="", detail=detail,
                             truncated=letter.value_size > 0)  # fmt: skip
        return OutputRecord(self.dead_letters_topic, key, encode(letter), None)
