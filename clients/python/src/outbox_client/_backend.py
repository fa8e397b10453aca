"""The database calls of a consumer, for an async pool and for a sync pool.

The consumer's engine is asyncio code in both cases: with a sync pool
(``outbox_client.sync``) each call runs in a worker thread, and the handlers
run in a thread pool of ``concurrency`` threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence

from psycopg.rows import TupleRow

from ._errors import DeadLetter, Release, RetryAfter
from ._types import Event

CLAIM = ("SELECT event_id, topic, key, payload, headers, attempt, enqueued_at "
         "FROM outbox.claim(%s, %s, %s)")
CLAIM_WAIT = ("SELECT event_id, topic, key, payload, headers, attempt, enqueued_at "
              "FROM outbox.claim(%s, %s, %s, %s)")
ACK = "SELECT outbox.ack(%s, %s::bigint[])"
FAIL = ("SELECT outbox.fail(%s, %s, error => %s, retry_in => %s, attempt => %s, "
        "dead => %s)")
RELEASE = "SELECT outbox.release(%s, %s, attempt => %s, retry_in => %s)"
EXTEND = "SELECT outbox.extend_lease(%s, %s::bigint[], %s::int[], %s)"
SCHEMA = ("SELECT to_regprocedure('outbox.extend_lease(text,bigint[],integer[],interval)')"
          " IS NOT NULL, to_regprocedure('outbox.claim(text,integer,interval,interval)')"
          " IS NOT NULL")
PROBE = "SELECT pg_notify(%s, 'outbox-client-probe')"
# After a handler returns (transaction mode), inside its savepoint: its
# deferred constraints are checked now, so that a violation fails this event
# instead of the COMMIT of the whole batch (which would give every delivery
# back at the same attempt, the poison event included, forever).  The inner
# savepoint is rolled back so the constraints' modes stay as they were; the
# checks run again at COMMIT, as they would anyway.
CHECK_DEFERRED = ("SAVEPOINT outbox_check; SET CONSTRAINTS ALL IMMEDIATE; "
                  "ROLLBACK TO SAVEPOINT outbox_check; RELEASE SAVEPOINT outbox_check")

MAX_ERROR_TEXT = 4000

# A settlement: the SQL and its parameters after the subscription name.
Settlement = tuple[str, tuple[Any, ...]]
# What a transaction-mode batch did to one event: (event, outcome, new state, duration).
TxRecord = tuple[Event, "BaseException | None", "str | None", float]


def to_event(row: Sequence[Any], subscription: str) -> Event:
    return Event(event_id=row[0], topic=row[1], key=row[2], payload=row[3], headers=row[4],
                 attempt=row[5], enqueued_at=row[6], subscription=subscription)


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_TEXT]


def settlement(event: Event, outcome: BaseException) -> Settlement:
    """The fail or release call for a handler's outcome (always fenced by attempt)."""
    if isinstance(outcome, Release):
        retry = None if outcome.after is None else timedelta(seconds=outcome.after)
        return RELEASE, (event.event_id, event.attempt, retry)
    if isinstance(outcome, DeadLetter):
        return FAIL, (event.event_id, outcome.reason[:MAX_ERROR_TEXT], None, event.attempt, True)
    if isinstance(outcome, RetryAfter):
        return FAIL, (event.event_id, (outcome.reason or str(outcome))[:MAX_ERROR_TEXT],
                      timedelta(seconds=outcome.seconds), event.attempt, False)
    return FAIL, (event.event_id, error_text(outcome), None, event.attempt, False)


def listen_target(pool: Any, override: str | None) -> tuple[str, dict[str, Any]]:
    """Conninfo and connection arguments of the dedicated LISTEN connection."""
    kwargs: dict[str, Any] = {}
    pk = getattr(pool, "kwargs", None)
    if isinstance(pk, dict):
        kwargs = {k: v for k, v in pk.items()
                  if k not in ("row_factory", "cursor_factory", "context", "autocommit",
                               "prepare_threshold")}
    if override is not None:
        return override, {}
    conninfo = getattr(pool, "conninfo", "")
    return (conninfo if isinstance(conninfo, str) else ""), kwargs


class _Backend:
    """What both backends run the same way: one-value statements through
    ``_one``, which each implements for its pool."""

    sub: str

    async def _one(self, query: str, params: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    async def ack(self, ids: list[int]) -> int:
        return int(await self._one(ACK, (self.sub, ids)) or 0)

    async def settle(self, s: Settlement) -> str | None:
        r: str | None = await self._one(s[0], (self.sub, *s[1]))
        return r

    async def extend(self, ids: list[int], attempts: list[int], lease: timedelta) -> set[int]:
        r = await self._one(EXTEND, (self.sub, ids, attempts, lease))
        return set(r or ())

    async def probe(self, channel: str) -> None:
        await self._one(PROBE, (channel,))


class AsyncBackend(_Backend):
    """Calls through a ``psycopg_pool.AsyncConnectionPool``; async handlers."""

    cancellable = True

    def __init__(self, pool: Any, subscription: str, handler: Callable[..., Awaitable[Any]],
                 transaction_mode: bool) -> None:
        self.pool = pool
        self.sub = subscription
        self.handler = handler
        self.tx = transaction_mode

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[Any]:
        """A pool connection in autocommit mode for one statement: one round trip
        instead of BEGIN, the statement and the pool's COMMIT on return.  The
        pool's own setting is restored before the connection goes back."""
        async with self.pool.connection() as conn:
            if conn.autocommit:
                yield conn
                return
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                if not conn.closed:
                    await conn.set_autocommit(False)

    async def _one(self, query: str, params: tuple[Any, ...]) -> Any:
        async with self._autocommit() as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
            return None if row is None else row[0]

    async def schema(self) -> tuple[bool, bool]:
        async with self._autocommit() as conn:
            cur = await conn.execute(SCHEMA)
            row = await cur.fetchone()
            assert row is not None
            return bool(row[0]), bool(row[1])

    async def claim(self, n: int, lease: timedelta, wait: timedelta | None) -> list[Event]:
        async with self._autocommit() as conn:
            if wait is None:
                cur = await conn.execute(CLAIM, (self.sub, n, lease))
            else:
                cur = await conn.execute(CLAIM_WAIT, (self.sub, n, lease, wait))
            return [to_event(r, self.sub) for r in await cur.fetchall()]

    async def run_handler(self, event: Event) -> None:
        await self.handler(event)

    async def tx_batch(self, n: int, lease: timedelta,
                       on_claimed: Callable[[list[Event]], None],
                       on_start: Callable[[Event], None]) -> list[TxRecord]:
        records: list[TxRecord] = []
        async with self.pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(CLAIM, (self.sub, n, lease))
                events = [to_event(r, self.sub) for r in await cur.fetchall()]
                on_claimed(events)
                acks: list[int] = []
                for ev in events:
                    on_start(ev)
                    t0 = time.monotonic()
                    try:
                        async with conn.transaction():
                            await self.handler(ev, conn)
                            await conn.execute(CHECK_DEFERRED)
                    except Exception as exc:
                        if conn.broken or conn.closed:
                            raise
                        s = settlement(ev, exc)
                        cur = await conn.execute(s[0], (self.sub, *s[1]))
                        row = await cur.fetchone()
                        records.append((ev, exc, None if row is None else row[0],
                                        time.monotonic() - t0))
                    else:
                        acks.append(ev.event_id)
                        records.append((ev, None, "done", time.monotonic() - t0))
                if acks:
                    await conn.execute(ACK, (self.sub, acks))
        return records

    async def close(self) -> None:
        pass


class SyncBackend(_Backend):
    """Calls through a ``psycopg_pool.ConnectionPool`` in worker threads; sync handlers
    in a pool of ``concurrency`` threads."""

    cancellable = False

    def __init__(self, pool: Any, subscription: str, handler: Callable[..., Any],
                 transaction_mode: bool, concurrency: int) -> None:
        self.pool = pool
        self.sub = subscription
        self.handler = handler
        self.tx = transaction_mode
        self._db = ThreadPoolExecutor(max_workers=4, thread_name_prefix="outbox-db")
        self._handlers = ThreadPoolExecutor(max_workers=concurrency,
                                            thread_name_prefix="outbox-handler")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[Any]:
        """As AsyncBackend._autocommit."""
        with self.pool.connection() as conn:
            if conn.autocommit:
                yield conn
                return
            conn.autocommit = True
            try:
                yield conn
            finally:
                if not conn.closed:
                    conn.autocommit = False

    def _one_sync(self, query: str, params: tuple[Any, ...]) -> Any:
        with self._autocommit() as conn:
            row: TupleRow | None = conn.execute(query, params).fetchone()
            return None if row is None else row[0]

    async def _one(self, query: str, params: tuple[Any, ...]) -> Any:
        return await self._run(self._one_sync, query, params)

    def _schema_sync(self) -> tuple[bool, bool]:
        with self._autocommit() as conn:
            row = conn.execute(SCHEMA).fetchone()
            assert row is not None
            return bool(row[0]), bool(row[1])

    async def schema(self) -> tuple[bool, bool]:
        r: tuple[bool, bool] = await self._run(self._schema_sync)
        return r

    def _claim_sync(self, n: int, lease: timedelta, wait: timedelta | None) -> list[Event]:
        with self._autocommit() as conn:
            if wait is None:
                rows = conn.execute(CLAIM, (self.sub, n, lease)).fetchall()
            else:
                rows = conn.execute(CLAIM_WAIT, (self.sub, n, lease, wait)).fetchall()
            return [to_event(r, self.sub) for r in rows]

    async def claim(self, n: int, lease: timedelta, wait: timedelta | None) -> list[Event]:
        r: list[Event] = await self._run(self._claim_sync, n, lease, wait)
        return r

    async def run_handler(self, event: Event) -> None:
        await asyncio.get_running_loop().run_in_executor(self._handlers, self.handler, event)

    def _tx_batch_sync(self, n: int, lease: timedelta,
                       on_claimed: Callable[[list[Event]], None],
                       on_start: Callable[[Event], None]) -> list[TxRecord]:
        records: list[TxRecord] = []
        with self.pool.connection() as conn:
            with conn.transaction():
                rows = conn.execute(CLAIM, (self.sub, n, lease)).fetchall()
                events = [to_event(r, self.sub) for r in rows]
                on_claimed(events)
                acks: list[int] = []
                for ev in events:
                    on_start(ev)
                    t0 = time.monotonic()
                    try:
                        with conn.transaction():
                            self.handler(ev, conn)
                            conn.execute(CHECK_DEFERRED)
                    except Exception as exc:
                        if conn.broken or conn.closed:
                            raise
                        s = settlement(ev, exc)
                        row = conn.execute(s[0], (self.sub, *s[1])).fetchone()
                        records.append((ev, exc, None if row is None else row[0],
                                        time.monotonic() - t0))
                    else:
                        acks.append(ev.event_id)
                        records.append((ev, None, "done", time.monotonic() - t0))
                if acks:
                    conn.execute(ACK, (self.sub, acks))
        return records

    async def tx_batch(self, n: int, lease: timedelta,
                       on_claimed: Callable[[list[Event]], None],
                       on_start: Callable[[Event], None]) -> list[TxRecord]:
        loop = asyncio.get_running_loop()

        def claimed(evs: list[Event]) -> None:
            loop.call_soon_threadsafe(on_claimed, evs)

        def started(ev: Event) -> None:
            loop.call_soon_threadsafe(on_start, ev)

        r: list[TxRecord] = await loop.run_in_executor(
            self._handlers, self._tx_batch_sync, n, lease, claimed, started)
        return r

    async def close(self) -> None:
        self._db.shutdown(wait=False)
        self._handlers.shutdown(wait=False)

