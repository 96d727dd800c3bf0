"""Settings checks: every broker URL form Faust accepts passes, anything but kafka:// fails;
the data-parallel trainer's rank, world and rendezvous are checked together."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import server_list

from streams.app import build_app
from streams.settings import Settings, SettingsError

ACCEPTED = {
    "kafka://127.0.0.1:9092": ["127.0.0.1:9092"],
    "kafka://k1:9092;k2:9093": ["k1:9092", "k2:9093"],
    "kafka://k1:9092;kafka://k2:9093": ["k1:9092", "k2:9093"],
    "kafka://k1:9092,k2:9093,kafka://k3:9094": ["k1:9092", "k2:9093", "k3:9094"],
    "KAFKA://k1:9092": ["k1:9092"],
    "kafka://[::1]:9092": ["[::1]:9092"],
}

REJECTED = {
    "http://x": "scheme http://",
    "https://k1:9092": "scheme https://",
    "aiokafka://k1:9092": "scheme aiokafka://",
    "kafka://k1:9092;http://k2:9092": "scheme http://",
    "k1:9092": "no kafka:// scheme",
    "": "no kafka:// scheme",
    "kafka://": "empty",
    "kafka://k1:9092;": "empty",
    "kafka://k1:9092; k2:9092": "padded",
    "kafka://k1:port": "bad port",
    "kafka://k1:99999": "bad port",
    "kafka://k1:9092/topic": "not host[:port]",
    "kafka://user@k1:9092": "not host[:port]",
}


@pytest.mark.parametrize("url", ACCEPTED)
def test_kafka_urls_are_accepted_and_faust_reads_the_same_servers(url: str) -> None:
    settings = Settings.from_env({"NEGSTREAM_BROKER_URL": url})
    app = faust.App("settings-test", broker=url)
    faust_servers = server_list(app.conf.broker, 9092)
    assert faust_servers == ACCEPTED[url]
    # The admin client (kafka-python) must reach the servers the Faust worker reads.
    assert [s.lower() for s in settings.bootstrap_servers] == [s.lower() for s in faust_servers]


def test_a_server_without_a_port_is_accepted() -> None:
    settings = Settings.from_env({"NEGSTREAM_BROKER_URL": "kafka://k1;k2:9093"})
    assert settings.bootstrap_servers == ["k1", "k2:9093"]


@pytest.mark.parametrize("url", REJECTED)
def test_other_broker_urls_are_rejected_with_the_reason(url: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"NEGSTREAM_BROKER_URL": url})
    message = str(error.value)
    assert message.startswith(f"NEGSTREAM_BROKER_URL={url!r}: ")
    assert REJECTED[url] in message
    assert "expected kafka://host:port" in message
    assert "\n" not in message


def test_a_broker_override_is_checked_too() -> None:
    with pytest.raises(SettingsError, match="NEGSTREAM_BROKER_URL"):
        Settings.from_env({}, broker_url="http://x")
    with pytest.raises(SettingsError, match="NEGSTREAM_BROKER_URL"):
        Settings().replace(broker_url="http://x")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"NEGSTREAM_TRAINER_WORLD": "2", "NEGSTREAM_TRAINER_RANK": "2"}, "TRAINER_RANK=2"),
        ({"NEGSTREAM_TRAINER_RANK": "-1"}, "TRAINER_RANK=-1"),
        ({"NEGSTREAM_TRAINER_WORLD": "0"}, "TRAINER_WORLD"),
        (
            {"NEGSTREAM_TRAINER_WORLD": "2", "NEGSTREAM_TRAINER_RENDEZVOUS": "trainer-0:29500"},
            "TRAINER_RENDEZVOUS",
        ),
    ],
)
def test_data_parallel_trainer_settings_are_checked(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env(env)


def test_a_rank_of_a_data_parallel_trainer_is_accepted() -> None:
    env = {"NEGSTREAM_TRAINER_WORLD": "3", "NEGSTREAM_TRAINER_RANK": "2"}
    settings = Settings.from_env(env | {"NEGSTREAM_TRAINER_RENDEZVOUS": "tcp://trainer-0:29500"})
    assert (settings.trainer_rank, settings.trainer_world) == (2, 3)


@pytest.mark.parametrize("raw, expected", [(None, False), ("true", True), ("false", False)])
def test_the_recovery_consistency_check_reaches_faust(
    raw: str | None, expected: bool, tmp_path: Path
) -> None:
    environ = {} if raw is None else {"NEGSTREAM_RECOVERY_CONSISTENCY_CHECK": raw}
    settings = Settings.from_env(environ, data_dir=str(tmp_path))
    assert settings.recovery_consistency_check is expected
    assert build_app(settings).conf.recovery_consistency_check is expected
