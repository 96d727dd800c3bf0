"""The examples a remote-model worker read that no model update it applied has learned yet.

A worker that scores with the trainer's model rescores an example's user once the model it
holds has learned that example: only then can the user's scores reflect it. Every update
names, per partition of the training examples, the last offset its model learned
(:attr:`model.update.ModelUpdate.learned`); the examples read are kept per partition, in
offset order, until an applied update covers them.

Examples
--------
>>> unlearned = UnlearnedExamples(cap=2)
>>> unlearned.add(0, 10, "u1", "e10"), unlearned.add(0, 11, "u2", "e11")
([], [])
>>> unlearned.add(0, 12, "u3", "e12"), unlearned.dropped  # the oldest makes room
([], 1)
>>> unlearned.learn({0: 11}), len(unlearned)
([('u2', 'e11')], 1)
>>> unlearned.add(0, 9, "u4", "e9")  # learned already by the model held
[('u4', 'e9')]
>>> unlearned.learn(None)  # an update that names no offsets covers everything read
[('u3', 'e12')]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Final

__all__ = ["MAX_UNLEARNED", "UnlearnedExamples"]

#: Examples kept per partition (the oldest are dropped past it): at 1,000 examples a second
#: on one partition, a minute of a trainer's lag.
MAX_UNLEARNED: Final = 60_000

#: ``(user_id, example_id)`` of an example a model has learned.
Learned = tuple[str, str]


class UnlearnedExamples:
    """Per partition, ``(offset, user_id, example_id)`` of the examples read that the newest
    applied model has not learned, oldest first; at most ``cap`` a partition.

    ``dropped`` counts the examples let go to keep to the cap: their users are not
    rescored for them.
    """

    def __init__(self, cap: int = MAX_UNLEARNED) -> None:
        if cap < 1:
            raise ValueError(f"cap {cap} keeps no example")
        self.cap = cap
        self.waiting: dict[int, deque[tuple[int, str, str]]] = {}
        #: Per partition, the last offset the newest applied model learned.
        self.learned: dict[int, int] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return sum(len(examples) for examples in self.waiting.values())

    def add(self, partition: int, offset: int, user_id: str, example_id: str) -> list[Learned]:
        """Keep an example read until a model learns it; returned at once (to be rescored
        now) when the model held has learned it already."""
        if offset <= self.learned.get(partition, -1):
            return [(user_id, example_id)]
        examples = self.waiting.setdefault(partition, deque())
        if len(examples) >= self.cap:
            examples.popleft()
            self.dropped += 1
        examples.append((offset, user_id, example_id))
        return []

    def learn(self, learned: Mapping[int, int] | None) -> list[Learned]:
        """The examples the model of an applied update has learned, taken out (oldest
        first per partition).

        ``learned`` is the update's last offset learned per partition; ``None`` (an update
        that does not say) counts as having learned everything read so far. A partition the
        update does not name keeps its examples. The offsets replace the ones held: a
        restarted trainer's model may have learned less than the one before it.
        """
        if learned is None:
            everything = [(user, example) for examples in self.waiting.values()
                          for _, user, example in examples]  # fmt: skip
            self.waiting.clear()
            self.learned.clear()
            return everything
        self.learned = dict(learned)
        taken: list[Learned] = []
        for partition, examples in self.waiting.items():
            last = learned.get(partition)
            if last is None:
                continue
            while examples and examples[0][0] <= last:
                _, user, example = examples.popleft()
                taken.append((user, example))
        return taken
