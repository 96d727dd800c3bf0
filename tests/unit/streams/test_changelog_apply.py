"""Table recovery applies a fetch's changelog records at once, with Faust's rules (no broker)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from agents.state.state import Pending, UserState
from agents.wiring import users_store
from streams.app import build_app
from streams.patches import changelog_apply
from streams.settings import Settings
from streams.tables import declare_users_table
from streams.users import UsersStore


def _record(topic: str, partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    return ConsumerRecord(
        topic, partition, offset, 0, 0, key, value, None, len(key), len(value or b""), []
    )


class _Recovering:
    """A Faust app with the users table, its recovery started on changelog partition 0."""

    def __init__(self, tmp_path: Any, highwater: int) -> None:
        settings = Settings(data_dir=str(tmp_path))
        self.app = build_app(settings)
        self.table = declare_users_table(self.app, settings)
        self.users: UsersStore[UserState] = users_store(self.table)
        self.tp = TP(self.users.changelog_topic, 0)
        self.recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        self.recovery.add_active(self.table, self.tp)
        self.recovery.active_offsets[self.tp] = -1
        self.recovery.active_highwaters[self.tp] = highwater
        self.recovery._set_recovery_started()
        self.consumer = SimpleNamespace(
            app=self.app, flow_active=True, _buffered_partitions=set(),
            _read_offset=defaultdict(lambda: None),
        )  # fmt: skip

    def record(self, offset: int, user_id: str, state: UserState | None) -> Any:
        key, value = self.users.changelog_record(user_id, state or UserState())
        return _record(self.tp.topic, 0, offset, key or b"", None if state is None else value)


def test_a_fetch_is_applied_newest_last_and_ends_the_recovery_at_the_highwater(
    tmp_path: Any,
) -> None:
    async def scenario() -> None:
        rec = _Recovering(tmp_path, highwater=2)
        first = UserState(clock=1.0, partition=0)
        newest = UserState(
            clock=2.0, partition=0, pending=[Pending("e", "i", None, None, None, 2.0)]
        )
        other = UserState(clock=3.0, partition=0)
        batch = [rec.record(0, "u1", first), rec.record(1, "u2", other)]
        assert changelog_apply.apply_records(rec.consumer, rec.recovery, rec.table, rec.tp, batch)
        changelog_apply.end_recovery_if_read(rec.recovery)
        assert rec.recovery.in_recovery  # offset 2 not read yet
        batch = [rec.record(2, "u1", newest)]
        changelog_apply.apply_records(rec.consumer, rec.recovery, rec.table, rec.tp, batch)
        changelog_apply.end_recovery_if_read(rec.recovery)
        assert not rec.recovery.in_recovery
        assert rec.recovery.signal_recovery_end.is_set()
        # Stored as the changelog's bytes, decoded by the store on first read.
        assert isinstance(rec.table.data.data["u1"], bytes)
        assert rec.users.get("u1") == newest
        assert rec.users.get("u2") == other
        assert rec.table.data._key_partition == {"u1": 0, "u2": 0}
        assert rec.recovery.active_offsets[rec.tp] == 2

    asyncio.run(scenario())


def test_records_read_again_are_skipped_and_a_tombstone_deletes(tmp_path: Any) -> None:
    async def scenario() -> None:
        rec = _Recovering(tmp_path, highwater=3)
        old, new = UserState(clock=1.0), UserState(clock=2.0)
        apply = changelog_apply.apply_records
        apply(rec.consumer, rec.recovery, rec.table, rec.tp,
              [rec.record(0, "u1", new), rec.record(1, "u2", new)])  # fmt: skip
        # The same offsets fetched again (a stale fetch) must not undo newer states.
        assert apply(rec.consumer, rec.recovery, rec.table, rec.tp, [rec.record(0, "u1", old)]) == 0
        assert rec.users.get("u1") == new
        apply(rec.consumer, rec.recovery, rec.table, rec.tp, [rec.record(2, "u2", None)])
        assert rec.users.get("u2") is None
        assert "u2" not in rec.table.data._key_partition
        assert rec.recovery.in_recovery

    asyncio.run(scenario())


def test_only_changelog_records_are_taken_out_of_a_fetch(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        rec = _Recovering(tmp_path, highwater=0)
        inputs = TP("impressions", 0)
        fetched = {rec.tp: [rec.record(0, "u1", UserState(clock=5.0))], inputs: ["an input"]}

        async def fetch(consumer: Any, timeout: float) -> Any:
            return dict(fetched), {rec.tp, inputs}

        monkeypatch.setattr(changelog_apply, "_wait_next_records", fetch)
        records, _ = await changelog_apply._wait_applying_changelogs(rec.consumer, 1.0)
        assert records == {inputs: ["an input"]}
        assert rec.users.get("u1") == UserState(clock=5.0)
        assert not rec.recovery.in_recovery

    asyncio.run(scenario())


def test_without_flow_the_fetch_is_left_to_faust(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        rec = _Recovering(tmp_path, highwater=0)
        rec.consumer.flow_active = False
        fetched = {rec.tp: [rec.record(0, "u1", UserState())]}

        async def fetch(consumer: Any, timeout: float) -> Any:
            return dict(fetched), {rec.tp}

        monkeypatch.setattr(changelog_apply, "_wait_next_records", fetch)
        records, _ = await changelog_apply._wait_applying_changelogs(rec.consumer, 1.0)
        assert records == fetched
        assert rec.users.get("u1") is None

    asyncio.run(scenario())
