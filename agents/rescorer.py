"""The model path's rescorer: queued users' candidates scored by the current model and
published as ``ScoreUpdate`` records, coalesced per user."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from agents.delivery import deliver_records
from agents.encoder import OutputEncoder, OutputRecord
from agents.pipeline import SuppressionsAhead
from agents.state.config import StateConfig
from agents.state.features import feature_rows
from agents.state.state import UserState
from agents.state.suppression import active_suppressions, for_update
from model import CandidateBatch, ModelConfig
from schemas.events import ItemScore, ScoreUpdate, Suppression
from streams import metrics
from streams.output import OutputProducer
from streams.settings import Settings
from streams.users import UsersStore
from streams.yielding import Yielder

log = logging.getLogger(__name__)

#: Most event ids a ScoreUpdate names as its triggers.
MAX_TRIGGER_IDS = 50
#: Most triggers queued for one user between two updates (the newest are kept).
MAX_QUEUED_TRIGGERS = 1000
#: Queued users looked at, and rescored, by one refresh (the rest wait for the next).
MAX_SCANNED = 5000
MAX_JOBS = 1000


def trigger_ids(triggers: list[tuple[str, int | None]]) -> tuple[str, ...]:
    """The event ids a ScoreUpdate names: feedback events first, then the newest examples.

    ``triggers`` are ``(event_id, produced_ms)`` in arrival order; a feedback event has its
    produce time, a learned example ``None``. A busy user gathers many learned examples
    between two updates, and a ranking service matches the update to the feedback it reacts
    to, so feedback ids are kept before example ids (the newest of each, at most
    :data:`MAX_TRIGGER_IDS` in all).

    Examples
    --------
    >>> trigger_ids([("f1", 5), *((f"x{n}", None) for n in range(60)), ("f2", 9)])[:4]
    ('f1', 'f2', 'x12', 'x13')
    >>> len(trigger_ids([(f"f{n}", n) for n in range(80)]))
    50
    """
    feedback = [event_id for event_id, produced_ms in triggers if produced_ms is not None]
    kept = feedback[-MAX_TRIGGER_IDS:]
    room = MAX_TRIGGER_IDS - len(kept)
    examples = [event_id for event_id, produced_ms in triggers if produced_ms is None]
    return tuple(kept + (examples[-room:] if room else []))


class Scorer(Protocol):
    """The model rescoring asks: a worker's own (:class:`agents.trainer.Trainer`) or the
    trainer's shared one (:class:`agents.model_follower.ModelFollower`)."""

    @property
    def executor(self) -> Executor:
        """The one thread every call of the model runs on (never the event loop)."""
        ...

    @property
    def config(self) -> ModelConfig:
        """The model's config: candidate batches are built with it."""
        ...

    @property
    def ready(self) -> bool:
        """Whether there is a model to score with yet."""
        ...

    def score(self, batch: CandidateBatch) -> tuple[list[float], int]:
        """p_negative of each candidate, and the version of the model that gave them."""
        ...


@dataclass(frozen=True)
class _Rescore:
    """One user to rescore: the stored state read, why, and the suppressions to publish."""

    user: str
    state: UserState
    triggers: list[tuple[str, int | None]]
    suppressions: tuple[Suppression, ...]


class Rescorer:
    """Rescores queued users (queued by their new feedback, and by learned examples), at
    most once per ``score_min_interval_s`` each, so a busy user's updates are coalesced.

    Featurising, scoring and encoding run on the scorer's model thread: stored states are
    never changed in place, so reading them there is safe, and the event loop stays free.
    While the scorer has no model yet (a remote model not received), users stay queued.
    """

    def __init__(
        self,
        settings: Settings,
        config: StateConfig,
        users: UsersStore[UserState],
        scorer: Scorer,
        encoder: OutputEncoder,
        outputs: OutputProducer,
        lane: SuppressionsAhead | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.users = users
        self.scorer = scorer
        self.encoder = encoder
        self.outputs = outputs
        # Suppressions the fast lane published ahead of the users table are merged in.
        self.lane = lane
        self.pending: dict[str, list[tuple[str, int | None]]] = {}
        # The queued users with new feedback among their triggers (in queue order): rescored
        # even while refreshes for learned examples wait (see ``refresh``).
        self.urgent: dict[str, None] = {}
        self.last_refresh: dict[str, float] = {}
        # Queued users without candidates yet, and since when (see ``_due_jobs``).
        self.waiting_since: dict[str, float] = {}

    def learned(self, examples: list[dict[str, Any]]) -> None:
        """Queue the users of learned examples (their scores changed with the model)."""
        self.learned_users([(example["user_id"], example["example_id"]) for example in examples])

    def learned_users(self, learned: Iterable[tuple[str, str]]) -> None:
        """Queue the users of learned examples, given as ``(user_id, example_id)`` with the
        user id as the example carries it."""
        for user_id, example_id in learned:
            self.request_refresh(self.encoder.pseudonym.real_id(user_id), example_id, None)

    def request_refresh(self, user_id: str, trigger_id: str, produced_ms: int | None) -> None:
        """Queue ``user_id`` for rescoring because of event ``trigger_id``."""
        triggers = self.pending.setdefault(user_id, [])
        triggers.append((trigger_id, produced_ms))
        if produced_ms is not None:
            self.urgent[user_id] = None
        if len(triggers) > MAX_QUEUED_TRIGGERS:
            # A flooding user: an update names at most MAX_TRIGGER_IDS of them anyway.
            del triggers[: len(triggers) - MAX_QUEUED_TRIGGERS]

    async def _due_jobs(self, now: float, urgent_only: bool = False) -> list[_Rescore]:
        """Take the queued users due a refresh that have candidates to score (with
        ``urgent_only``, only those with new feedback among their triggers).

        A user's feedback can be read before the impressions that give it candidates (the
        two input topics are read independently), so a user without candidates keeps its
        triggers queued, for up to ``label_window_s``: the update that follows its first
        impression still names the feedback.
        """
        jobs: list[_Rescore] = []
        interval, patience = self.settings.score_min_interval_s, self.settings.label_window_s
        # A bounded slice a call, round robin (a user looked at goes to the back), so the
        # event loop is never held however many users are queued.
        queue = self.urgent if urgent_only else self.pending
        for scanned, user in enumerate(list(itertools.islice(queue, MAX_SCANNED))):
            if len(jobs) >= MAX_JOBS:
                break
            if scanned % 100 == 99:
                await asyncio.sleep(0)  # the event loop is never held for the whole scan
            if now - self.last_refresh.get(user, 0.0) < interval:
                self._to_back(user)
                continue
            state = self.users.get(user)
            if state is None or not state.candidates:
                since = self.waiting_since.setdefault(user, now)
                if now - since >= patience:
                    del self.pending[user], self.waiting_since[user]
                    self.urgent.pop(user, None)
                    metrics.REFRESHES_WITHOUT_CANDIDATES.inc()
                else:
                    self._to_back(user)
                continue
            self.waiting_since.pop(user, None)
            active = for_update((), active_suppressions(state), self.config)
            if self.lane is not None:
                active = self.lane.merge(user, active, state.clock)
            jobs.append(_Rescore(user, state, self.pending.pop(user), active))
            self.urgent.pop(user, None)
            self.last_refresh[user] = now
        if len(self.last_refresh) > 2 * len(self.pending) + MAX_SCANNED:
            # Only refreshes within the interval matter; the rest would grow for ever.
            self.last_refresh = {
                user: at for user, at in self.last_refresh.items() if now - at < interval
            }
        return jobs

    def _to_back(self, user: str) -> None:
        """Move a queued user to the back of the queue(s) it is in."""
        self.pending[user] = self.pending.pop(user)
        if user in self.urgent:
            self.urgent[user] = self.urgent.pop(user)

    async def refresh(self, urgent_only: bool = False) -> None:
        """Rescore the queued users that have not been refreshed too recently (with
        ``urgent_only``, only those with new feedback among their triggers)."""
        if not (self.urgent if urgent_only else self.pending) or not self.scorer.ready:
            return
        jobs = await self._due_jobs(time.monotonic(), urgent_only)
        if not jobs:
            return
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(self.scorer.executor, self._rescore, jobs)
        metrics.SCORE_REFRESH_SECONDS.observe(time.perf_counter() - started)
        await deliver_records(self.outputs, records)
        sent = time.time()
        metrics.LAST_SCORE_TIMESTAMP.set(sent)
        metrics.SCORE_UPDATES.labels("model").inc(len(records))
        latency = metrics.FEEDBACK_TO_SCORE.labels("model")
        yielder = Yielder()
        for job in jobs:
            for _, produced_ms in job.triggers:
                if produced_ms:
                    latency.observe(max(0.0, sent - produced_ms / 1000))
            await yielder()  # a thousand users' triggers: the loop runs others in between

    def _rescore(self, jobs: list[_Rescore]) -> list[OutputRecord]:
        """Score each job's candidates; return each user's encoded ``ScoreUpdate`` record."""
        ids: dict[str, list[str | None]] = {
            "user_id": [], "item_id": [], "creator_id": [], "category": []
        }  # fmt: skip
        dense: list[tuple[float, ...]] = []
        for job in jobs:
            candidates = job.state.candidates
            dense += feature_rows(job.state, self.config, candidates)
            ids["user_id"] += [job.user] * len(candidates)
            ids["item_id"] += [c.item_id for c in candidates]
            ids["creator_id"] += [c.creator_id for c in candidates]
            ids["category"] += [c.category for c in candidates]
        # The model is configured with FEATURE_NAMES (see agents.trainer), the rows' order.
        batch = CandidateBatch.from_columns(ids, dense, self.scorer.config)
        p_negative, version = self.scorer.score(batch)
        records: list[OutputRecord] = []
        start = 0
        for job in jobs:
            candidates = job.state.candidates
            penalties = _penalties(job.suppressions)
            scores = []
            for candidate, p in zip(
                candidates, p_negative[start : start + len(candidates)], strict=True
            ):
                penalty = max(
                    penalties.get(("item", candidate.item_id), 0.0),
                    penalties.get(("creator", candidate.creator_id), 0.0),
                    penalties.get(("category", candidate.category), 0.0),
                )
                score = round((1.0 - p) * (1.0 - penalty), 6)
                scores.append(ItemScore(candidate.item_id, round(p, 6), score))
            start += len(candidates)
            triggers = trigger_ids(job.triggers)
            update = ScoreUpdate(
                user_id=job.user,
                source="model",
                model_version=version,
                timestamp=job.state.clock,
                trigger_event_ids=triggers,
                scores=tuple(sorted(scores, key=lambda s: -s.score)),
                suppressions=job.suppressions,
                update_id=model_update_id(job.user, version, job.triggers),
            )
            records.append(self.encoder.score_update(update, job.state.partition))
        return records


def model_update_id(user: str, version: int, triggers: list[tuple[str, int | None]]) -> str:
    """A model update's id: its model version and a digest of the user and every trigger.

    Examples
    --------
    >>> model_update_id("u1", 7, [("f1", 5)]) == model_update_id("u1", 7, [("f1", 5)])
    True
    >>> model_update_id("u1", 7, [("f1", 5)]).startswith("model:7:")
    True
    """
    digest = hashlib.blake2b(user.encode(), digest_size=8)
    for event_id, _ in triggers:
        digest.update(b"\0" + event_id.encode())
    return f"model:{version}:{digest.hexdigest()}"


def _penalties(suppressions: tuple[Suppression, ...]) -> dict[tuple[str, str | None], float]:
    """The strongest penalty on each suppressed (target type, target id)."""
    strongest: dict[tuple[str, str | None], float] = {}
    for suppression in suppressions:
        target = (suppression.target_type, suppression.target_id)
        strongest[target] = max(strongest.get(target, 0.0), suppression.penalty)
    return strongest
