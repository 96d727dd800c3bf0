"""Training-throughput measurements shared by the model benchmarks: synthetic examples
and timed learning on a device."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from model import ExampleBatch, ModelConfig, OnlineModel
from model.config import DEFAULT_FEATURES, ENGAGEMENT, EXPLICIT_NEGATIVE, IMPLICIT_NEGATIVE

_LABELS = ("none",) * 10 + EXPLICIT_NEGATIVE + IMPLICIT_NEGATIVE * 2 + ENGAGEMENT * 2


def synthetic_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` decoded Example records over realistic id vocabularies."""
    rng = random.Random(seed)
    examples = []
    for index in range(n):
        label = rng.choice(_LABELS)
        examples.append(
            {
                "example_id": f"e{index}",
                "user_id": f"u{rng.randrange(100_000)}",
                "item_id": f"i{rng.randrange(200_000)}",
                "creator_id": f"c{rng.randrange(10_000)}" if rng.random() < 0.9 else None,
                "category": f"cat{rng.randrange(50)}" if rng.random() < 0.9 else None,
                "request_id": None,
                "timestamp": 1.7e9 + index,
                "label": label,
                "kinds": [] if label == "none" else [label],
                "weight": 1.0,
                "features": {name: rng.random() * 10 for name in DEFAULT_FEATURES},
                "label_delay_s": None,
            }
        )
    return examples


def measure(
    device: str, batch_size: int = 1024, batches: int = 60, warmup: int = 10
) -> dict[str, float]:
    """Examples/s of featurise + learn_many on ``device``; the split is in seconds per batch."""
    config = ModelConfig(device=device)
    model = OnlineModel(config)
    stream: Sequence[list[dict[str, Any]]] = [
        synthetic_examples(batch_size, seed=b) for b in range(batches + warmup)
    ]
    featurise = train = 0.0
    for index, examples in enumerate(stream):
        start = time.perf_counter()
        batch = ExampleBatch.from_examples(examples, config)
        built = time.perf_counter()
        model.learn_many(batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        if index >= warmup:
            featurise += built - start
            train += done - built
    total = featurise + train
    return {
        "examples_per_s": batches * batch_size / total,
        "train_only_examples_per_s": batches * batch_size / train,
        "featurise_ms_per_batch": 1e3 * featurise / batches,
        "train_ms_per_batch": 1e3 * train / batches,
    }


def measure_pipelined(device: str, batch_size: int = 1024, batches: int = 60) -> float:
    """Examples/s when batch k+1 is featurised while a worker thread trains on batch k.

    The shape the trainer should take: featurising is GIL-bound Python, training spends
    most of its time in torch kernels that release the GIL, so the two overlap on two cores.
    """
    config = ModelConfig(device=device)
    model = OnlineModel(config)
    stream = [synthetic_examples(batch_size, seed=b) for b in range(batches + 10)]
    for examples in stream[:10]:
        model.learn_many(ExampleBatch.from_examples(examples, config))
    with ThreadPoolExecutor(max_workers=1) as trainer:
        start = time.perf_counter()
        pending: Future[None] | None = None
        for examples in stream[10:]:
            batch = ExampleBatch.from_examples(examples, config)
            if pending is not None:
                pending.result()
            pending = trainer.submit(model.learn_many, batch)
        if pending is not None:
            pending.result()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed
