from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

import outbox_client as ob
from outbox_client import sync as obs
from outbox_client.testing import drain_sync


async def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(sub: Any) -> None:
    async with await psycopg.AsyncConnection.connect("") as conn:
        async with conn.transaction():
            kept = await ob.enqueue(conn, sub.topic, {"n": 1}, key="k1",
                                    headers={"traceparent": "00-abc"}, dedup_key="d1")
        try:
            async with conn.transaction():
                await ob.enqueue(conn, sub.topic, {"n": 2})
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        async with conn.transaction():
            again = await ob.enqueue(conn, sub.topic, {"n": 3}, dedup_key="d1")
    assert again == kept  # dedup: the first event's id
    rows = sub.admin.execute("SELECT event_id, key, payload, headers, attempt FROM "
                             "outbox.claim(%s, 10)", (sub.name,)).fetchall()
    assert rows == [(kept, "k1", {"n": 1}, {"traceparent": "00-abc"}, 1)]


async def test_enqueue_many_returns_ids_in_order_with_keys_and_delay(sub: Any) -> None:
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    async with await psycopg.AsyncConnection.connect("") as conn:
        ids = await ob.enqueue_many(conn, sub.topic, [{"i": 0}, [1, 2], "three"],
                                    keys=["a", None, "c"], headers=[None, {"h": 1}, None])
        delayed = await ob.enqueue_many(conn, sub.topic, [{"late": True}], deliver_at=later)
        assert await ob.enqueue_many(conn, sub.topic, []) == []
        await conn.commit()
    assert ids == sorted(ids) and len(set(ids)) == 3
    rows = sub.admin.execute("SELECT event_id, key, payload, headers FROM "
                             "outbox.claim(%s, 10) ORDER BY event_id", (sub.name,)).fetchall()
    assert rows == [(ids[0], "a", {"i": 0}, None), (ids[1], None, [1, 2], {"h": 1}),
                    (ids[2], "c", "three", None)]
    assert sub.status(delayed[0])["state"] == "scheduled"


def test_sync_enqueue_and_drain(sub: Any, spool: Any) -> None:
    with psycopg.connect("") as conn:
        one = obs.enqueue(conn, sub.topic, {"x": 1})
        many = obs.enqueue_many(conn, sub.topic, [{"x": 2}, {"x": 3}])
    seen: list[Any] = []
    stats = drain_sync(spool, sub.name, lambda ev: seen.append(ev.payload["x"]))
    assert sorted(seen) == [1, 2, 3]
    assert stats.handled == 3 and stats.claimed == 3
    for i in (one, *many):
        assert sub.status(i)["state"] == "done"


async def test_enqueue_errors_surface_as_psycopg_errors(sub: Any) -> None:
    async with await psycopg.AsyncConnection.connect("") as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            await ob.enqueue(conn, "", {"x": 1})
