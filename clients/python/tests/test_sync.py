from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

import outbox_client as ob
from outbox_client import sync as obs

from conftest import until_sync


def test_sync_consumer_outcomes(sub: Any, spool: Any) -> None:
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handle(ev: ob.Event) -> None:
        with lock:
            calls.append((ev.payload["kind"], ev.attempt))
        if ev.payload["kind"] == "later" and ev.attempt == 1:
            raise ob.RetryAfter(0.05)
        if ev.payload["kind"] == "bad":
            raise ob.DeadLetter("bad")

    with obs.consume(spool, sub.name, handle, poll_interval=1) as c:
        assert c.ready(20)
        sub.enqueue(5, {"kind": "ok"})
        sub.enqueue(1, {"kind": "later"})
        sub.enqueue(1, {"kind": "bad"})
        until_sync(lambda: c.stats.handled == 6 and c.stats.dead == 1, "6 acks, 1 dead")
    assert sorted(calls) == sorted([("ok", 1)] * 5 + [("later", 1), ("later", 2), ("bad", 1)])
    assert c.done


def test_sync_stop_signals_cancellation_and_releases(sub: Any, spool: Any) -> None:
    started = threading.Event()
    saw_cancel = threading.Event()

    def handle(ev: ob.Event) -> None:
        started.set()
        if ev.cancelled.wait(30):
            saw_cancel.set()

    c = obs.consume(spool, sub.name, handle)
    c.ready(20)
    (eid,) = sub.enqueue(1)
    assert started.wait(20)
    c.stop(grace=0.2)
    assert saw_cancel.wait(5)
    assert c.stats.released == 1 and c.stats.handled == 0
    assert sub.sql("SELECT attempt FROM outbox.claim(%s, 1)", sub.name) == 1


def test_sync_transaction_mode(make_sub: Any, spool: Any) -> None:
    sub = make_sub(max_attempts=1)
    table = f"py_stx_{uuid.uuid4().hex[:8]}"
    sub.admin.execute(f"CREATE TABLE {table} (event_id bigint PRIMARY KEY)")

    def handle(ev: ob.Event, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (ev.event_id,))
        if ev.payload.get("poison"):
            raise ValueError("poison")

    try:
        with obs.consume(spool, sub.name, handle, mode="transaction") as c:
            c.ready(20)
            ids = sub.enqueue(4)
            sub.enqueue(1, {"poison": True})
            until_sync(lambda: c.stats.handled == 4 and c.stats.dead == 1, "4 acks, 1 dead")
        rows = {r[0] for r in sub.admin.execute(f"SELECT event_id FROM {table}").fetchall()}
        assert rows == set(ids)
    finally:
        sub.admin.execute(f"DROP TABLE {table}")


def test_sync_unknown_subscription(spool: Any) -> None:
    c = obs.consume(spool, "py.nope-1", lambda ev: None)
    with pytest.raises(ob.SubscriptionNotFound):
        c.wait(20)


def test_sync_a_violated_deferred_constraint_fails_its_event(make_sub: Any, spool: Any) -> None:
    from test_transaction_mode import deferred_tables

    sub = make_sub(max_attempts=2, backoff_base="10 ms", backoff_max="20 ms")
    parent, child = deferred_tables(sub)

    def handle(ev: ob.Event, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"INSERT INTO {child} VALUES (%s, %s)", (ev.event_id, ev.payload["parent"]))

    try:
        with obs.consume(spool, sub.name, handle, mode="transaction") as c:
            c.ready(20)
            ids = [sub.enqueue(1, {"parent": p})[0] for p in (1, 99, 1)]
            until_sync(lambda: c.stats.handled == 2 and c.stats.dead == 1, "2 acks, 1 dead")
        rows = [r[0] for r in sub.admin.execute(
            f"SELECT event_id FROM {child} ORDER BY event_id").fetchall()]
        assert rows == [ids[0], ids[2]]
        assert sub.status(ids[1])["state"] == "dead"
    finally:
        sub.admin.execute(f"DROP TABLE {child}, {parent}")


def test_sync_single_statements_run_outside_a_transaction_block(spool: Any) -> None:
    import asyncio

    from outbox_client._backend import SyncBackend

    b = SyncBackend(spool, "unused", lambda ev: None, False, 1)
    try:
        assert asyncio.run(b._one("SELECT now() = statement_timestamp()", ())) is True
    finally:
        asyncio.run(b.close())
    with spool.connection() as conn:
        assert conn.autocommit is False
