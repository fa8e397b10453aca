from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

import outbox_client as ob

from conftest import until


async def test_writes_and_ack_commit_together_poison_rolls_back_and_dies(
        make_sub: Any, apool: Any) -> None:
    sub = make_sub(max_attempts=2, backoff_base="10 ms", backoff_max="20 ms")
    table = f"py_tx_{uuid.uuid4().hex[:8]}"
    sub.admin.execute(f"CREATE TABLE {table} (event_id bigint PRIMARY KEY)")
    poison_calls: list[int] = []

    async def handle(ev: ob.Event, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(f"INSERT INTO {table} VALUES (%s)", (ev.event_id,))
        if ev.payload.get("poison"):
            poison_calls.append(ev.attempt)
            raise RuntimeError("poison")

    try:
        async with ob.consume(apool, sub.name, handle, mode="transaction", concurrency=4,
                              tx_batch_size=3) as c:
            await c.ready()
            ids = sub.enqueue(9)
            (bad,) = sub.enqueue(1, {"poison": True})
            await until(lambda: c.stats.handled == 9 and c.stats.dead == 1, "9 acks, 1 dead")
        rows = {r[0] for r in sub.admin.execute(f"SELECT event_id FROM {table}").fetchall()}
        assert rows == set(ids)  # exactly the good ones, the poison's row rolled back
        assert poison_calls == [1, 2]  # retried with backoff, then dead: no hot loop
        st = sub.status(bad)
        assert (st["state"], st["attempts"], st["last_error"]) == ("dead", 2,
                                                                   "RuntimeError: poison")
        assert c.stats.failed == 1
    finally:
        sub.admin.execute(f"DROP TABLE {table}")


async def test_stop_rolls_back_the_transaction_of_a_stuck_handler(sub: Any, apool: Any) -> None:
    started = asyncio.Event()

    async def handle(ev: ob.Event, conn: psycopg.AsyncConnection[Any]) -> None:
        started.set()
        await asyncio.Event().wait()

    c = ob.consume(apool, sub.name, handle, mode="transaction")
    await c.ready()
    (eid,) = sub.enqueue(1)
    await asyncio.wait_for(started.wait(), 20)
    await c.stop(grace=0.2)
    assert c.stats.released == 1 and c.stats.handled == 0
    assert sub.sql("SELECT attempt FROM outbox.claim(%s, 1)", sub.name) == 1


def deferred_tables(sub: Any) -> tuple[str, str]:
    parent, child = (f"py_{w}_{uuid.uuid4().hex[:8]}" for w in ("parent", "child"))
    sub.admin.execute(f"CREATE TABLE {parent} (id int PRIMARY KEY)")
    sub.admin.execute(f"CREATE TABLE {child} (event_id bigint, parent int "
                      f"REFERENCES {parent} DEFERRABLE INITIALLY DEFERRED)")
    sub.admin.execute(f"INSERT INTO {parent} VALUES (1)")
    return parent, child


async def test_a_violated_deferred_constraint_fails_its_event_not_the_batch(
        make_sub: Any, apool: Any) -> None:
    # Checked at COMMIT, the violation would roll back the whole batch at the
    # same attempts, again and again: the poison event would never die.
    sub = make_sub(max_attempts=3, backoff_base="10 ms", backoff_max="20 ms")
    parent, child = deferred_tables(sub)

    async def handle(ev: ob.Event, conn: psycopg.AsyncConnection[Any]) -> None:
        # deferral still works within one handler: the child before its parent
        await conn.execute(f"INSERT INTO {child} VALUES (%s, %s)",
                           (ev.event_id, ev.payload["parent"]))
        if ev.payload["parent"] == 2:
            await conn.execute(f"INSERT INTO {parent} VALUES (2)")

    try:
        async with ob.consume(apool, sub.name, handle, mode="transaction",
                              tx_batch_size=10) as c:
            await c.ready()
            ids = [sub.enqueue(1, {"parent": p})[0] for p in (1, 99, 2, 1)]
            await until(lambda: c.stats.handled == 3 and c.stats.dead == 1,
                        "3 handled, 1 dead", timeout=15)
        rows = [r[0] for r in sub.admin.execute(
            f"SELECT event_id FROM {child} ORDER BY event_id").fetchall()]
        assert rows == [ids[0], ids[2], ids[3]]
        st = sub.status(ids[1])
        assert (st["state"], st["attempts"]) == ("dead", 3)
        assert "foreign key" in st["last_error"]
    finally:
        sub.admin.execute(f"DROP TABLE {child}, {parent}")
