"""The shared-model settings and the model-updates topic they shape."""

from __future__ import annotations

import pytest

from streams.admin import (
    MODEL_UPDATES_MAX_MESSAGE_BYTES,
    MODEL_UPDATES_MIN_RETENTION_MS,
    wanted_topics,
)
from streams.settings import Settings, SettingsError


def test_defaults_and_environment() -> None:
    defaults = Settings()
    assert (defaults.model_source, defaults.model_sync_s) == ("local", 2.0)
    assert (defaults.model_snapshot_every, defaults.model_max_age_s) == (300, 60.0)
    settings = Settings.from_env({
        "NEGSTREAM_MODEL_SOURCE": "remote", "NEGSTREAM_MODEL_SYNC_S": "0.5",
        "NEGSTREAM_MODEL_SNAPSHOT_EVERY": "10", "NEGSTREAM_MODEL_MAX_AGE_S": "20",
        "NEGSTREAM_TOPIC_PREFIX": "t-", "NEGSTREAM_APP_ID": "ns", "NEGSTREAM_DATA_DIR": "/d",
    })  # fmt: skip
    assert settings.model_source == "remote" and settings.model_snapshot_every == 10
    assert settings.topic("model_updates") == "t-model-updates"
    assert settings.trainer_group == "ns-trainer"
    assert settings.trainer_checkpoint_dir == "/d/trainer-checkpoints" != settings.checkpoint_dir


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NEGSTREAM_MODEL_SOURCE": "shared"}, "NEGSTREAM_MODEL_SOURCE='shared' must be one of"),
        ({"NEGSTREAM_MODEL_SYNC_S": "0"}, "NEGSTREAM_MODEL_SYNC_S must be > 0"),
        ({"NEGSTREAM_MODEL_SNAPSHOT_EVERY": "0"}, "NEGSTREAM_MODEL_SNAPSHOT_EVERY must be > 0"),
        ({"NEGSTREAM_MODEL_SNAPSHOT_EVERY": "2.5"}, "is not a valid int"),
        ({"NEGSTREAM_MODEL_MAX_AGE_S": "2"}, "must be more than NEGSTREAM_MODEL_SYNC_S"),
    ],
)
def test_bad_values_are_refused_with_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)


def test_model_updates_is_one_partition_that_keeps_a_few_snapshot_intervals() -> None:
    settings = Settings(partitions=8, model_sync_s=30.0, model_snapshot_every=600)
    topics = {topic.name: topic for topic in wanted_topics(settings)}
    updates = topics[settings.topic("model_updates")]
    assert updates.num_partitions == 1
    assert topics[settings.topic("examples")].num_partitions == 8
    configs = dict(updates.topic_configs)
    # Three intervals of 600 updates 30 s apart: five hours would drop the newest snapshot.
    assert int(configs["retention.ms"]) == 3 * 600 * 30 * 1000
    assert int(configs["segment.ms"]) < int(configs["retention.ms"])
    assert int(configs["max.message.bytes"]) == MODEL_UPDATES_MAX_MESSAGE_BYTES > 900 * 1024
    small = dict(next(t for t in wanted_topics(Settings()) if "model" in t.name).topic_configs)
    assert int(small["retention.ms"]) == MODEL_UPDATES_MIN_RETENTION_MS
