"""States at rest kept compressed: read back exactly as stored, compressed once their
partition's watermark has moved on without them or once many other states were written since,
never changed in place, and a fold over them publishes what it publishes over plain states."""

from __future__ import annotations

import asyncio
import math
import zlib
from types import SimpleNamespace

import orjson

from agents.resting import COMPRESS_PER_CALL, RECOVERED_PER_CALL, RestingStates
from agents.state.state import WIRE_DICTIONARY, Candidate, Pending, Schedule, UserState
from agents.wiring import users_store
from simulator.stream import IMPRESSIONS_TOPIC, Simulator
from simulator.worlds import world_config
from streams.users import WIRE_JSON, Resting
from tests.driver import FoldDriver


def _state(watermark: float, partition: int = 0) -> UserState:
    return UserState(
        clock=watermark - 1.0,
        topic_clock={"impression": watermark - 1.0},
        seen={"e1": watermark - 1.0},
        fine={"7": {"imp": 2, "i:x": 1}},
        long={"0": {"imp": 2}},
        candidates=[Candidate.shared("x", "c1", None)],
        partition=partition,
        watermark=watermark,
    )


async def _no_pause() -> None:
    return None


def test_a_state_at_rest_reads_back_as_its_changelog_value_decodes() -> None:
    users = users_store(SimpleNamespace(data={}))
    state = _state(100.0)
    wire = state.to_wire()
    users.put("u1", state, 0)
    assert users.rest("u1", Schedule.of)
    held = users.table.data["u1"]
    assert isinstance(held, Resting)
    # What a recovery reads, compressed; the state object itself is left as it was.
    raw = orjson.dumps(wire, option=WIRE_JSON)
    assert zlib.decompressobj(zdict=WIRE_DICTIONARY).decompress(held.packed) == raw
    assert state.to_wire() == wire
    assert users.get("u1") == users.peek("u1") == UserState.from_wire(wire)
    # Read, it stays compressed; the deadline index reads its view without decoding it.
    assert users.table.data["u1"] is held
    assert list(users.views(Schedule.of, Schedule.from_wire)) == [("u1", Schedule.of(state))]
    # Once at rest, or refused by the caller, or a recovered value: left as it is.
    assert not users.rest("u1", Schedule.of)
    users.put("u2", _state(1.0), 0)
    assert not users.rest("u2", lambda _: None) and type(users.table.data["u2"]) is UserState
    users.table.data["u3"] = orjson.dumps(wire, option=WIRE_JSON)
    assert not users.rest("u3", Schedule.of) and not users.rest("nobody", Schedule.of)


def test_a_state_with_open_label_windows_keeps_its_schedule_at_rest() -> None:
    users = users_store(SimpleNamespace(data={}))
    state = _state(50.0)
    state.pending = [Pending("p1", "x", None, None, "r1", 49.0)]
    users.put("u1", state, 0)
    assert users.rest("u1", Schedule.of)
    assert dict(users.views(Schedule.of, Schedule.from_wire))["u1"].pending_times == (49.0,)


def test_states_are_compressed_once_the_watermark_has_moved_on_without_them() -> None:
    users = users_store(SimpleNamespace(data={}))
    resting = RestingStates(users, rest_after_s=100.0)
    marks = {0: 0.0, 1: 0.0}

    def write(user: str, partition: int, watermark: float) -> None:
        state = _state(watermark, partition)
        users.put(user, state, partition)
        resting.written(user, partition, state)

    def compress() -> int:
        return asyncio.run(resting.compress_due(marks.__getitem__, _no_pause))

    def at_rest() -> set[str]:
        return {u for u, v in users.table.data.items() if isinstance(v, Resting)}

    write("a", 0, 10.0)
    write("b", 0, 20.0)
    write("c", 1, 10.0)
    marks[0] = 109.0
    assert compress() == 0 and at_rest() == set()
    write("a", 0, 109.0)  # "a" is back: noted once, its note comes due, not its state
    assert [users for _, users in resting.due[0]] == [["a"], ["b"]]
    marks[0] = marks[1] = 120.0
    assert compress() == 2 and at_rest() == {"b", "c"}
    marks[0] = 209.0
    assert compress() == 1 and at_rest() == {"a", "b", "c"}
    assert compress() == 0 and not resting.due[0]
    write("d", 1, 130.0)
    resting.forget_partitions([1])
    marks[1] = math.inf
    assert compress() == 0 and "d" not in at_rest() and not resting.noted


def test_one_call_compresses_a_bounded_number_of_states() -> None:
    users = users_store(SimpleNamespace(data={}))
    resting = RestingStates(users, rest_after_s=1.0)
    for n in range(COMPRESS_PER_CALL + 5):
        state = _state(1.0)
        users.put(f"u{n}", state, 0)
        resting.written(f"u{n}", 0, state)
    # Written in one batch, at one watermark: one list of users.
    assert len(resting.due[0]) == 1
    done = [asyncio.run(resting.compress_due(lambda _: 10.0, _no_pause)) for _ in range(3)]
    assert done == [COMPRESS_PER_CALL, 5, 0] and not resting.due[0] and not resting.noted


def test_the_least_recently_written_states_beyond_the_bound_are_compressed() -> None:
    users = users_store(SimpleNamespace(data={}))
    resting = RestingStates(users, rest_after_s=math.inf, open_states=2)

    def write(user: str, partition: int = 0) -> None:
        state = _state(10.0, partition)
        users.put(user, state, partition)
        resting.written(user, partition, state)

    def compress() -> int:
        return asyncio.run(resting.compress_due(lambda _: 0.0, _no_pause))

    def at_rest() -> set[str]:
        return {u for u, v in users.table.data.items() if isinstance(v, Resting)}

    for user in "abc":
        write(user)
    write("a")  # written again: the most recent now, "b" the least
    assert compress() == 1 and at_rest() == {"b"}
    assert list(resting.recent) == ["c", "a"]
    write("b")  # its next event: open again, and "c" the least recent
    write("d", 1)
    assert compress() == 2 and at_rest() == {"c", "a"}
    # Partitions given away leave the order; a user at rest already is only forgotten.
    resting.forget_partitions([1])
    assert list(resting.recent) == ["b"]
    users.rest("b", Schedule.of)
    write("e")
    write("f")
    assert compress() == 0 and list(resting.recent) == ["e", "f"]


def test_the_recent_bound_is_kept_however_many_states_one_batch_wrote() -> None:
    users = users_store(SimpleNamespace(data={}))
    resting = RestingStates(users, rest_after_s=math.inf, open_states=10)
    written = 3 * COMPRESS_PER_CALL
    for n in range(written):
        state = _state(1.0)
        users.put(f"u{n}", state, 0)
        resting.written(f"u{n}", 0, state)
    # One call may compress as many as were written since the last, and a bounded few more.
    assert asyncio.run(resting.compress_due(lambda _: 0.0, _no_pause)) == written - 10
    assert list(resting.recent) == [f"u{n}" for n in range(written - 10, written)]
    resting.open_states = 0
    assert asyncio.run(resting.compress_due(lambda _: 0.0, _no_pause)) == 10
    assert not resting.recent


def test_values_a_recovery_stored_undecoded_are_compressed_a_slice_at_a_time() -> None:
    users = users_store(SimpleNamespace(data={}))
    resting = RestingStates(users, rest_after_s=math.inf)
    states = {f"u{n}": _state(float(n)) for n in range(RECOVERED_PER_CALL + 2)}
    states["u0"].pending = [Pending("p1", "x", None, None, "r1", 0.5)]
    for user, state in states.items():
        users.table.data[user] = orjson.dumps(state.to_wire(), option=WIRE_JSON)
    users.put("written", _state(1.0), 0)
    assert users.user_ids() == [*states, "written"]
    resting.recovered(users.user_ids())
    assert users.get("u1") == states["u1"]  # read first: decoded, open, passed over
    done = [asyncio.run(resting.compress_due(lambda _: 0.0, _no_pause)) for _ in range(2)]
    assert done == [RECOVERED_PER_CALL, 1] and not resting.recovered_users
    held = users.table.data
    assert type(held["u1"]) is UserState and type(held["written"]) is UserState
    assert all(isinstance(held[user], Resting) for user in states if user != "u1")
    # Read back as the recovery's JSON decodes; the index reads the view it was given.
    assert users.get("u0") == users.peek("u0") == states["u0"]
    assert isinstance(held["u0"], Resting)
    views = dict(users.views(Schedule.of, Schedule.from_wire))
    assert views["u0"] == Schedule.of(states["u0"]) and views["u0"].pending_times == (0.5,)


def _fold(
    rest_after_s: float | None, open_states: int | None = None
) -> tuple[FoldDriver, list[bytes]]:
    driver = FoldDriver()
    if rest_after_s is not None:
        driver.pipeline.resting.rest_after_s = rest_after_s
    if open_states is not None:
        driver.pipeline.resting.open_states = open_states
    simulator = Simulator(world_config("heavy", n_users=800, seed=3, keep_ground_truth=False))
    topics = {IMPRESSIONS_TOPIC: "impressions"}
    captured = driver.run(
        (topics.get(e.topic, "feedback"), e.key.encode(), orjson.dumps(e.value), 0)
        for e in simulator.events(6_000)
        if isinstance(e.value, dict)
    )
    published = [
        orjson.dumps(record)
        for record in (*captured.examples, *captured.updates, *captured.dead_letters)
    ]
    return driver, published


def test_a_fold_over_states_at_rest_publishes_what_it_publishes_over_plain_ones() -> None:
    plain, published = _fold(math.inf)
    compressed, published_at_rest = _fold(60.0)
    held = compressed.users.table.data
    assert sum(isinstance(value, Resting) for value in held.values()) > len(held) / 2
    assert published_at_rest == published
    assert {user: state.to_wire() for user, state in compressed.users.items()} == {
        user: state.to_wire() for user, state in plain.users.items()
    }


def test_a_fold_over_least_recently_written_states_at_rest_publishes_the_same() -> None:
    plain, published = _fold(math.inf, open_states=10**9)
    compressed, published_at_rest = _fold(math.inf, open_states=50)
    held = compressed.users.table.data
    assert sum(isinstance(value, Resting) for value in held.values()) >= len(held) - 50
    assert published_at_rest == published
    # The changelog values, byte for byte.
    assert {
        u: orjson.dumps(s.to_wire(), option=WIRE_JSON) for u, s in compressed.users.items()
    } == {u: orjson.dumps(s.to_wire(), option=WIRE_JSON) for u, s in plain.users.items()}


def _fold_restarted(compress: bool) -> tuple[FoldDriver, list[bytes]]:
    """The heavy world folded with a restart half-way: every state is then stored as its
    changelog JSON, as a recovery leaves it, and compressed after if ``compress``."""
    driver = FoldDriver()
    if compress:
        driver.pipeline.resting.open_states = 50
    else:
        driver.pipeline.resting.rest_after_s = math.inf
        driver.pipeline.resting.open_states = 10**9
    simulator = Simulator(world_config("heavy", n_users=800, seed=5, keep_ground_truth=False))
    topics = {IMPRESSIONS_TOPIC: "impressions"}
    records = [
        driver.message(topics.get(e.topic, "feedback"), e.key.encode(), orjson.dumps(e.value))
        for e in simulator.events(6_000)
        if isinstance(e.value, dict)
    ]
    size = driver.settings.batch_size // 4

    async def go() -> None:
        for start in range(0, len(records), size):
            if start == size * (len(records) // size // 2):
                held = driver.users.table.data
                for user, state in list(driver.users.items()):
                    held[user] = orjson.dumps(state.to_wire(), option=WIRE_JSON)
                driver.pipeline.on_recovery(float(start))
                if not compress:
                    driver.pipeline.resting.recovered_users.clear()
            await driver.feed(records[start : start + size])
        await driver.finish()

    asyncio.run(go())
    captured = driver.captured
    published = [
        orjson.dumps(record)
        for record in (*captured.examples, *captured.updates, *captured.dead_letters)
    ]
    return driver, published


def test_a_fold_over_recovered_values_kept_compressed_publishes_the_same() -> None:
    plain, published = _fold_restarted(compress=False)
    compressed, published_compressed = _fold_restarted(compress=True)
    assert not compressed.pipeline.resting.recovered_users
    assert any(isinstance(v, bytes) for v in plain.users.table.data.values())
    assert not any(isinstance(v, bytes) for v in compressed.users.table.data.values())
    assert published_compressed == published
    assert {
        u: orjson.dumps(s.to_wire(), option=WIRE_JSON) for u, s in compressed.users.items()
    } == {u: orjson.dumps(s.to_wire(), option=WIRE_JSON) for u, s in plain.users.items()}
