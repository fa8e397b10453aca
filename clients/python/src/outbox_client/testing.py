"""Helpers for the test suites of applications.

- :func:`run_handler` / :func:`run_handler_sync` run a handler on an event in
  process, without a database (or on the test's own connection in transaction
  mode), and tell what the consumer would do with the result.
- :func:`drain` / :func:`drain_sync` claim and handle what a subscription has
  ready now, once, without LISTEN, and return the counters.  Claims only see
  committed events: commit the producing transaction first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

from ._backend import AsyncBackend, SyncBackend
from ._engine import Engine
from ._errors import DeadLetter, Release, RetryAfter
from ._types import ConsumerOptions, Event, Stats, make_options

Action = Literal["ack", "fail", "retry", "dead", "release"]


@dataclass(frozen=True)
class Outcome:
    """What the consumer would do: ``ack``; ``fail`` (backoff), ``retry``
    (``retry_in`` seconds), ``dead``, or ``release`` (``retry_in`` or None)."""

    action: Action
    error: BaseException | None = None
    retry_in: float | None = None


def make_event(payload: Any, *, topic: str = "test", key: str | None = None,
               headers: Mapping[str, Any] | None = None, attempt: int = 1,
               event_id: int = 1, enqueued_at: datetime | None = None,
               subscription: str = "test") -> Event:
    """An :class:`Event` as a claim would return it."""
    return Event(event_id=event_id, topic=topic, key=key, payload=payload, headers=headers,
                 attempt=attempt, enqueued_at=enqueued_at or datetime.now(timezone.utc),
                 subscription=subscription)


def _outcome(exc: BaseException | None) -> Outcome:
    if exc is None:
        return Outcome("ack")
    if isinstance(exc, RetryAfter):
        return Outcome("retry", exc, exc.seconds)
    if isinstance(exc, DeadLetter):
        return Outcome("dead", exc)
    if isinstance(exc, Release):
        return Outcome("release", exc, exc.after)
    return Outcome("fail", exc)


def _event(e: Event | Any) -> Event:
    return e if isinstance(e, Event) else make_event(e)


async def run_handler(handler: Any, event: Event | Any, conn: Any = None) -> Outcome:
    """Await ``handler(event)`` (or ``handler(event, conn)`` when ``conn`` is
    given) and return its :class:`Outcome`.  ``event`` may be a bare payload."""
    ev = _event(event)
    try:
        if conn is None:
            await handler(ev)
        else:
            await handler(ev, conn)
    except Exception as exc:
        return _outcome(exc)
    return _outcome(None)


def run_handler_sync(handler: Any, event: Event | Any, conn: Any = None) -> Outcome:
    """The sync twin of :func:`run_handler`."""
    ev = _event(event)
    try:
        if conn is None:
            handler(ev)
        else:
            handler(ev, conn)
    except Exception as exc:
        return _outcome(exc)
    return _outcome(None)


async def drain(pool: Any, subscription: str, handler: Any,
                options: ConsumerOptions | None = None, **kwargs: Any) -> Stats:
    """Claim until nothing is ready, handle and settle everything, return the
    counters; raises the fatal errors of a consumer.  ``pool`` is an
    ``AsyncConnectionPool``; options as for ``consume``."""
    opts = make_options(options, {**kwargs, "listen": False})
    engine = Engine(AsyncBackend(pool, subscription, handler, opts.mode == "transaction"),
                    subscription, opts, once=True)
    await engine.run()
    return engine.stats


def drain_sync(pool: Any, subscription: str, handler: Any,
               options: ConsumerOptions | None = None, **kwargs: Any) -> Stats:
    """The sync twin of :func:`drain` (a ``ConnectionPool``, sync handlers)."""
    opts = make_options(options, {**kwargs, "listen": False})
    engine = Engine(SyncBackend(pool, subscription, handler, opts.mode == "transaction",
                                opts.concurrency), subscription, opts, once=True)
    asyncio.run(engine.run())
    return engine.stats
