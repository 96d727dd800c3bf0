"""Table recovery applies a fetch's changelog records at once, with Faust's rules (no broker)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
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


class _Consumer:
    """What Faust's ``Recovery._restart_recovery`` asks of the consumer, with no broker:
    partition ends, seeks, pauses and the flow."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.flow_active = False
        self._buffered_partitions: set[TP] = set()
        self._read_offset: Any = defaultdict(lambda: None)
        self.active: set[TP] = set()
        self.ends: dict[TP, int] = {}
        self.resumed = asyncio.Event()

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends.get(tp, 0) for tp in tps}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 0)

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        for tp, offset in offsets.items():
            self._read_offset[tp] = offset or None

    def resume_partitions(self, tps: Any) -> None:
        self.active |= set(tps)

    def pause_partitions(self, tps: Any) -> None:
        self.active -= set(tps)

    def resume_flow(self) -> None:
        self.flow_active = True
        self.resumed.set()

    def stop_flow(self) -> None:
        self.flow_active = False
        self.resumed.clear()

    def assignment(self) -> set[TP]:
        return set()

    async def perform_seek(self) -> None:
        return None


def test_a_rebalance_right_after_a_recovery_reads_its_new_partitions_first(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faust's own recovery service, ended by this module's batches: a second rebalance
    # within 5 s of the first recovery's end (a killed worker's restart, then its expiry)
    # must not find the first recovery's end signal still set.
    monkeypatch.setattr(Consumer, "_wait_next_records", Consumer._wait_next_records)
    monkeypatch.setattr(Recovery, "_set_recovery_started", Recovery._set_recovery_started)
    monkeypatch.setattr(changelog_apply, "_wait_next_records", changelog_apply._wait_next_records)
    changelog_apply.install()

    async def scenario() -> None:
        rec = _Recovering(tmp_path, highwater=0)
        recovery, table, app = rec.recovery, rec.table, rec.app
        consumer = _Consumer(app)
        app.consumer = consumer

        async def fetcher_started() -> None:
            return None

        app.__dict__["_fetcher"] = SimpleNamespace(maybe_start=fetcher_started)
        kept, new = rec.tp, TP(rec.tp.topic, 1)

        def record(tp: TP, offset: int, user_id: str) -> Any:
            state = UserState(clock=float(offset), partition=tp.partition)
            key, value = rec.users.changelog_record(user_id, state)
            return _record(tp.topic, tp.partition, offset, key or b"", value)

        async def rebalance(generation: int, tps: list[TP]) -> None:
            consumer.stop_flow()
            consumer.pause_partitions(set(consumer.active))
            recovery.active_tps.clear()
            recovery.actives_for_table.clear()
            for tp in tps:
                recovery.add_active(table, tp)
            app.consumer_generation_id = recovery._generation_id = generation
            recovery.signal_recovery_start.set()
            await asyncio.wait_for(consumer.resumed.wait(), 5)

        def fetched(tp: TP, batch: list[Any]) -> None:
            changelog_apply.apply_records(consumer, recovery, table, tp, batch)
            changelog_apply.end_recovery_if_read(recovery)

        recovery.revoke(kept)
        await recovery.start()
        try:
            consumer.ends[kept] = 2  # Faust's highwater: offset 1 is the last
            await rebalance(1, [kept])
            fetched(kept, [record(kept, 0, "u1"), record(kept, 1, "u2")])
            await asyncio.sleep(0.2)
            assert not recovery.in_recovery and recovery.completed.is_set()
            consumer.ends[new] = 3
            await rebalance(2, [kept, new])
            await asyncio.sleep(0.2)
            # Still reading the new partition: nothing of it read, and it is not paused.
            assert recovery.in_recovery
            assert consumer.active == {kept, new}
            assert rec.users.get("u3") is None
            fetched(new, [record(new, n, f"u{n + 3}") for n in range(3)])
            await asyncio.sleep(0.2)
            assert not recovery.in_recovery
            assert consumer.active == set()
            assert rec.users.get("u5") == UserState(clock=2.0, partition=1)
            assert rec.users.get("u1") == UserState(clock=0.0, partition=0)
        finally:
            await recovery.stop()

    asyncio.run(scenario())
