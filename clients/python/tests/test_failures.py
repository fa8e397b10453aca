from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, AsyncIterator, Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import outbox_client as ob

from conftest import until


async def noop(ev: ob.Event) -> None:
    pass


@pytest.fixture(scope="module")
def otherdb(admin: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"py_other_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"dbname={name}", autocommit=True) as c:
        c.execute("CREATE EXTENSION outbox")
    yield name
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def pool_as(admin: psycopg.Connection[Any]) -> AsyncIterator[Any]:
    made: list[tuple[str, AsyncConnectionPool]] = []

    async def make(conninfo: str) -> AsyncConnectionPool:
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=4, open=False)
        await pool.open(wait=True)
        made.append((conninfo, pool))
        return pool

    yield make
    for _, p in made:
        await p.close()


async def test_unknown_subscription_is_a_typed_fatal_error(apool: Any) -> None:
    c = ob.consume(apool, "py.nope-0", noop)
    with pytest.raises(ob.SubscriptionNotFound) as e:
        await c.ready()
    assert e.value.sqlstate == "42704"
    with pytest.raises(ob.SubscriptionNotFound):
        await c.wait()


async def test_missing_grant_is_a_typed_fatal_error(sub: Any, pool_as: Any) -> None:
    role = f"py_nogrant_{uuid.uuid4().hex[:8]}"
    sub.admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        pool = await pool_as(f"user={role}")
        for listen in (None, False):  # through the LISTEN connection, and claim
            c = ob.consume(pool, sub.name, noop, listen=listen)
            with pytest.raises(ob.PermissionDenied):
                await c.wait()
        sub.admin.execute("SELECT outbox.grant_consume(%s, %s)", (role, sub.name))
        c = ob.consume(pool, sub.name, noop)
        async with c:
            await c.ready()
            sub.enqueue(2)
            await until(lambda: c.stats.handled == 2, "2 acks with the grant")
    finally:
        sub.admin.execute("SELECT outbox.revoke_consume(%s, %s)", (role, sub.name))
        await asyncio.sleep(0)
        sub.admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          f"WHERE usename = '{role}'")
        for _ in range(50):
            try:
                sub.admin.execute(f'DROP ROLE "{role}"')
                break
            except psycopg.errors.DependentObjectsStillRemain:
                raise
            except psycopg.Error:
                await asyncio.sleep(0.1)


async def test_no_extension_is_a_schema_mismatch(admin: Any, pool_as: Any) -> None:
    pool = await pool_as("dbname=template1")
    with pytest.raises(ob.SchemaMismatch):
        await ob.consume(pool, "py.x", noop).wait()


async def test_paused_subscription_gets_nothing_until_resumed(sub: Any, apool: Any) -> None:
    sub.sql("SELECT outbox.pause(%s)", sub.name)
    async with ob.consume(apool, sub.name, noop) as c:
        ids = sub.enqueue(3)
        await c.ready()
        await asyncio.sleep(0.5)
        assert c.stats.claimed == 0
        sub.sql("SELECT outbox.resume(%s)", sub.name)
        await until(lambda: c.stats.handled == 3, "3 acks after resume")
    assert all(sub.status(i)["state"] == "done" for i in ids)


async def test_listener_and_pool_connections_terminated_resume(sub: Any, apool: Any) -> None:
    reconnects: list[float] = []
    async with ob.consume(apool, sub.name, noop, poll_interval=3600, reconnect_min=0.05,
                          hooks=ob.Hooks(on_reconnect=lambda e, d: reconnects.append(d))
                          ) as c:
        await c.ready()
        killed = sub.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE application_name = 'outbox-client listener' "
                         "AND datname = current_database()")
        assert killed == 1
        await until(lambda: c.stats.reconnects == 1, "the LISTEN connection re-established")
        # and the pool's connections too
        sub.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                "datname = current_database() AND pid <> pg_backend_pid() AND "
                "backend_type = 'client backend' AND application_name <> "
                "'outbox-client listener'")
        # a notification on the new LISTEN is the only way to learn of these
        sub.enqueue(5)
        await until(lambda: c.stats.handled == 5, "5 acks after the failures")
        assert not c.done
    assert len(reconnects) == 1 and 0.05 <= reconnects[0] <= 30


async def test_poll_only_when_notifications_cannot_arrive(sub: Any, apool: Any, otherdb: str,
                                                          caplog: Any) -> None:
    # A LISTEN connection that notifications never reach (another database:
    # the same happens behind a pooler in transaction mode) is detected.
    with psycopg.connect(f"dbname={otherdb}", autocommit=True) as o:
        o.execute("SELECT outbox.subscribe(%s, ARRAY['x'])", (sub.name,))
    caplog.set_level(logging.WARNING, "outbox_client")
    polls: list[str] = []
    async with ob.consume(apool, sub.name, noop, listen_conninfo=f"dbname={otherdb}",
                          probe_timeout=0.5, poll_only_wait=0.5,
                          hooks=ob.Hooks(on_poll_only=polls.append)) as c:
        await c.ready()
        assert c.poll_only
        sub.enqueue(3)
        await until(lambda: c.stats.handled == 3, "3 acks by polling")
    warned = [r for r in caplog.records if "LISTEN cannot work" in r.getMessage()]
    assert len(warned) == 1 and len(polls) == 1


async def test_listen_false_polls_without_a_listener(sub: Any, apool: Any,
                                                     caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "outbox_client")
    async with ob.consume(apool, sub.name, noop, listen=False, poll_only_wait=0.5) as c:
        await c.ready()
        assert c.poll_only
        assert sub.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                       "'outbox-client listener'") == 0
        sub.enqueue(2)
        await until(lambda: c.stats.handled == 2, "2 acks by polling")
    assert not [r for r in caplog.records if "LISTEN cannot work" in r.getMessage()]


async def test_poll_only_waits_in_claim(sub: Any, apool: Any) -> None:
    # Without LISTEN, an outbox with claim(..., wait) is polled by a claim
    # that waits on the server (no poll loop): the consumer's session shows
    # up waiting in it, and an event enqueued then is handled.
    async with ob.consume(apool, sub.name, noop, listen=False, poll_only_wait=30,
                          poll_only_interval=3600) as c:
        await c.ready()
        assert c.poll_only
        await until(lambda: sub.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Extension'"
            " AND query LIKE '%%outbox.claim(%%'") == 1, "a claim waiting on the server")
        sub.enqueue(1)
        await until(lambda: c.stats.handled == 1, "the event handled by the waiting claim")
