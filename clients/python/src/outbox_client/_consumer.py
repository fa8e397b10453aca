"""consume(): the async consumer."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Literal, overload

import psycopg

from ._backend import AsyncBackend
from ._engine import Engine
from ._errors import ConsumerError
from ._types import ConsumerOptions, Event, Stats, make_options

Handler = Callable[[Event], Awaitable[Any]]
TxHandler = Callable[[Event, psycopg.AsyncConnection[Any]], Awaitable[Any]]


class Consumer:
    """A running consumer (see :func:`consume`).  Use it as ``async with``, or call
    :meth:`stop`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._task = asyncio.create_task(self._run(), name=f"outbox consumer {engine.sub}")

    async def _run(self) -> None:
        await self._engine.run()

    @property
    def subscription(self) -> str:
        return self._engine.sub

    @property
    def stats(self) -> Stats:
        """The counters (live)."""
        return self._engine.stats

    @property
    def running(self) -> int:
        """Handlers in flight now."""
        return self._engine.running

    @property
    def poll_only(self) -> bool:
        """True when the consumer polls with ``claim(..., wait)`` instead of LISTEN."""
        return self._engine.poll_only

    @property
    def done(self) -> bool:
        return self._task.done()

    async def ready(self) -> None:
        """Wait until the consumer listens (or has settled on poll-only mode);
        raises the consumer's fatal error if it stopped on one first."""
        await asyncio.wait({self._task, asyncio.ensure_future(self._engine.wait_ready())},
                           return_when=asyncio.FIRST_COMPLETED)
        if self._engine.fatal is not None:
            raise self._engine.fatal

    async def stop(self, grace: float | None = None) -> None:
        """Stop: no new claims; running handlers get ``grace`` seconds (default:
        the ``grace`` option), then their cancellation, then their deliveries are
        released at the same attempt; pending acks are flushed.  Does not raise
        the consumer's fatal error (``wait`` does)."""
        self._engine.request_stop(grace)
        try:
            await asyncio.shield(self._task)
        except ConsumerError:
            pass

    async def wait(self) -> None:
        """Wait until the consumer stops; raises its fatal error, if any."""
        await asyncio.shield(self._task)

    async def __aenter__(self) -> "Consumer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@overload
def consume(pool: Any, subscription: str, handler: Handler,
            options: ConsumerOptions | None = None, *, mode: Literal["ack"] = ...,
            **kwargs: Any) -> Consumer: ...


@overload
def consume(pool: Any, subscription: str, handler: TxHandler,
            options: ConsumerOptions | None = None, *, mode: Literal["transaction"],
            **kwargs: Any) -> Consumer: ...


def consume(pool: Any, subscription: str, handler: Any,
            options: ConsumerOptions | None = None, **kwargs: Any) -> Consumer:
    """Start consuming ``subscription`` through ``pool`` (a
    ``psycopg_pool.AsyncConnectionPool``, opened) and return the running
    :class:`Consumer`; call it from a coroutine.

    In ack mode (the default) ``handler(event)`` is awaited for each event;
    in transaction mode (``mode="transaction"``) ``handler(event, conn)`` runs
    inside the claiming transaction, under a savepoint of its own.  Returning
    acks; raising fails (see :class:`RetryAfter`, :class:`DeadLetter`,
    :class:`Release`).  ``options`` and keyword arguments are the fields of
    :class:`ConsumerOptions`.
    """
    opts = make_options(options, kwargs)
    backend = AsyncBackend(pool, subscription, handler, opts.mode == "transaction")
    return Consumer(Engine(backend, subscription, opts, listen_pool=pool))
