"""Fixtures: a real PostgreSQL with outbox, reached through the PG* environment
(PGHOST, PGPORT, PGUSER, PGDATABASE), as test.sh exports them."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool


@dataclass
class Sub:
    name: str
    topic: str
    admin: psycopg.Connection[Any]

    def enqueue(self, n: int = 1, payload: Any = None, **kw: Any) -> list[int]:
        from outbox_client.sync import enqueue_many

        with self.admin.transaction():
            return enqueue_many(self.admin, self.topic,
                                [payload if payload is not None else {"i": i} for i in range(n)],
                                **kw)

    def status(self, event_id: int) -> dict[str, Any]:
        cur = self.admin.execute(
            "SELECT state, attempts, last_error, lease_until FROM outbox.event_status(%s) "
            "WHERE subscription = %s", (event_id, self.name))
        row = cur.fetchone()
        assert row is not None, f"no delivery of {event_id} for {self.name}"
        return {"state": row[0], "attempts": row[1], "last_error": row[2],
                "lease_until": row[3]}

    def stats(self) -> dict[str, Any]:
        cur = self.admin.execute(
            "SELECT ready, scheduled, leased, dead FROM outbox.stats WHERE subscription = %s",
            (self.name,))
        row = cur.fetchone()
        assert row is not None
        return dict(zip(("ready", "scheduled", "leased", "dead"), row))

    def sql(self, query: str, *params: Any) -> Any:
        row = self.admin.execute(query, params).fetchone()
        return None if row is None else row[0]


@pytest.fixture(scope="session")
def admin() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect("", autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_sub(admin: psycopg.Connection[Any]) -> Iterator[Callable[..., Sub]]:
    made: list[str] = []

    def make(**settings: Any) -> Sub:
        tag = uuid.uuid4().hex[:8]
        # a dot and a dash: the channel must be quoted as one identifier
        name, topic = f"py.t-{tag}", f"py.topic-{tag}"
        args = ", ".join(f"{k} => %s" for k in settings)
        admin.execute(f"SELECT outbox.subscribe(%s, ARRAY[%s]{', ' if args else ''}{args})",
                      (name, topic, *settings.values()))
        made.append(name)
        return Sub(name, topic, admin)

    yield make
    for name in made:
        admin.execute("SELECT outbox.unsubscribe(%s)", (name,))


@pytest.fixture
def sub(make_sub: Callable[..., Sub]) -> Sub:
    return make_sub(backoff_base="10 ms", backoff_max="20 ms")


@pytest.fixture
async def apool() -> AsyncIterator[AsyncConnectionPool]:
    pool: AsyncConnectionPool = AsyncConnectionPool("", min_size=1, max_size=8, open=False)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def spool() -> Iterator[ConnectionPool]:
    pool: ConnectionPool = ConnectionPool("", min_size=1, max_size=8, open=False)
    pool.open(wait=True)
    try:
        yield pool
    finally:
        pool.close()


async def until(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition; the timeout only bounds a failing test."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def until_sync(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
