"""enqueue / enqueue_many on the caller's own connection or transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence, Union

import psycopg
from psycopg.types.json import Jsonb

AsyncConn = Union[psycopg.AsyncConnection[Any], psycopg.AsyncCursor[Any]]
SyncConn = Union[psycopg.Connection[Any], psycopg.Cursor[Any]]

_ENQUEUE = (
    "SELECT outbox.enqueue(%s, %s, key => %s, headers => %s, "
    "deliver_at => %s, dedup_key => %s)"
)
_ENQUEUE_MANY = (
    "SELECT outbox.enqueue_many(%s, %s::jsonb[], keys => %s::text[], "
    "headers => %s::jsonb[], deliver_at => %s, dedup_keys => %s::text[])"
)


def _enqueue_params(topic: str, payload: Any, key: str | None,
                    headers: Mapping[str, Any] | None, deliver_at: datetime | None,
                    dedup_key: str | None) -> tuple[Any, ...]:
    return (topic, Jsonb(payload), key, None if headers is None else Jsonb(dict(headers)),
            deliver_at, dedup_key)


def _many_params(topic: str, payloads: Sequence[Any], keys: Sequence[str | None] | None,
                 headers: Sequence[Mapping[str, Any] | None] | None,
                 deliver_at: datetime | None,
                 dedup_keys: Sequence[str | None] | None) -> tuple[Any, ...]:
    return (
        topic,
        [Jsonb(p) for p in payloads],
        None if keys is None else list(keys),
        None if headers is None else [None if h is None else Jsonb(dict(h)) for h in headers],
        deliver_at,
        None if dedup_keys is None else list(dedup_keys),
    )


async def enqueue(conn: AsyncConn, topic: str, payload: Any, *, key: str | None = None,
                  headers: Mapping[str, Any] | None = None, deliver_at: datetime | None = None,
                  dedup_key: str | None = None) -> int:
    """Enqueue one event in the caller's transaction (``outbox.enqueue``); returns its id.

    ``conn`` is an ``AsyncConnection`` or ``AsyncCursor``: the event commits or
    rolls back with the caller's own writes.  ``payload`` is anything that
    serialises to JSON.
    """
    cur = await conn.execute(_ENQUEUE, _enqueue_params(topic, payload, key, headers,
                                                       deliver_at, dedup_key))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def enqueue_many(conn: AsyncConn, topic: str, payloads: Sequence[Any], *,
                       keys: Sequence[str | None] | None = None,
                       headers: Sequence[Mapping[str, Any] | None] | None = None,
                       deliver_at: datetime | None = None,
                       dedup_keys: Sequence[str | None] | None = None) -> list[int]:
    """Enqueue one event per payload, in order (``outbox.enqueue_many``); returns the ids."""
    cur = await conn.execute(_ENQUEUE_MANY, _many_params(topic, payloads, keys, headers,
                                                         deliver_at, dedup_keys))
    row = await cur.fetchone()
    assert row is not None
    return [int(i) for i in row[0]]


def enqueue_sync(conn: SyncConn, topic: str, payload: Any, *, key: str | None = None,
                 headers: Mapping[str, Any] | None = None, deliver_at: datetime | None = None,
                 dedup_key: str | None = None) -> int:
    """The sync twin of :func:`enqueue`, on a ``Connection`` or ``Cursor``."""
    row = conn.execute(_ENQUEUE, _enqueue_params(topic, payload, key, headers, deliver_at,
                                                 dedup_key)).fetchone()
    assert row is not None
    return int(row[0])


def enqueue_many_sync(conn: SyncConn, topic: str, payloads: Sequence[Any], *,
                      keys: Sequence[str | None] | None = None,
                      headers: Sequence[Mapping[str, Any] | None] | None = None,
                      deliver_at: datetime | None = None,
                      dedup_keys: Sequence[str | None] | None = None) -> list[int]:
    """The sync twin of :func:`enqueue_many`."""
    row = conn.execute(_ENQUEUE_MANY, _many_params(topic, payloads, keys, headers, deliver_at,
                                                   dedup_keys)).fetchone()
    assert row is not None
    return [int(i) for i in row[0]]
