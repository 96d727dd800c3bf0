"""The users store over Faust's in-memory table store: states written by the input pipeline
are dropped, like recovered ones, when their partition moves to another worker."""

from __future__ import annotations

import asyncio

from faust.types import TP

from agents.state.state import UserState
from agents.wiring import users_store
from streams.app import build_app
from streams.settings import Settings
from streams.tables import declare_users_table


def test_states_of_partitions_no_longer_owned_are_dropped_after_recovery(tmp_path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    table = declare_users_table(build_app(settings), settings)
    users = users_store(table)
    users.put("kept", UserState(), partition=0)
    users.put("moved", UserState(), partition=1)
    changelog = table.changelog_topic.get_topic_name()
    # Recovery after a rebalance that left this worker partition 0 only.
    asyncio.run(table.data.on_recovery_completed({TP(changelog, 0)}, set()))
    assert users.get("kept") is not None
    assert users.get("moved") is None


def test_a_changelog_value_is_the_json_faust_wrote_before_values_were_stored_raw(
    tmp_path,
) -> None:
    settings = Settings(data_dir=str(tmp_path))
    app = build_app(settings)
    users = users_store(declare_users_table(app, settings))
    state = UserState(clock=2.5, partition=1, seen={"e1": 2.0}, fine={"7": {"imp": 1}})
    _, value = users.changelog_record("u1", state)
    assert value == app.serializers.dumps_value(None, state.to_wire(), serializer="json")
    # Either form read back from the changelog (raw bytes now, a parsed dict before) decodes.
    users.table.data.data.update({"raw": value, "parsed": state.to_wire()})
    assert users.get("raw") == users.peek("parsed") == state
