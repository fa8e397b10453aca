"""The sync twin: the same consumer for ``psycopg_pool.ConnectionPool`` and plain
functions as handlers.

The consumer's loop runs on an event loop in a background thread; handlers run
in a pool of ``concurrency`` threads.  A thread cannot be interrupted, so the
cancellation signal of a sync handler is ``event.cancelled`` (a
``threading.Event``): check it in long work.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any, Callable, Literal, overload

import psycopg

from ._backend import SyncBackend
from ._engine import Engine
from ._produce import enqueue_many_sync as enqueue_many
from ._produce import enqueue_sync as enqueue
from ._types import ConsumerOptions, Event, Stats, make_options

__all__ = ["Consumer", "consume", "enqueue", "enqueue_many"]

SyncHandler = Callable[[Event], Any]
SyncTxHandler = Callable[[Event, psycopg.Connection[Any]], Any]


class Consumer:
    """A running sync consumer (see :func:`consume`); a context manager."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        engine._on_ready = self._ready.set
        self._thread = threading.Thread(target=self._main, name=f"outbox consumer {engine.sub}",
                                        daemon=True)
        self._thread.start()

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            await self._engine.run()

        try:
            asyncio.run(go())
        except BaseException as exc:  # kept for wait()
            self._error = exc
        finally:
            self._ready.set()

    @property
    def subscription(self) -> str:
        return self._engine.sub

    @property
    def stats(self) -> Stats:
        return self._engine.stats

    @property
    def running(self) -> int:
        return self._engine.running

    @property
    def poll_only(self) -> bool:
        return self._engine.poll_only

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def ready(self, timeout: float | None = None) -> bool:
        """Block until the consumer listens (or settled on poll-only mode); raises
        its fatal error if it stopped on one.  False on timeout."""
        ok = self._ready.wait(timeout)
        if self._engine.fatal is not None:
            raise self._engine.fatal
        return ok

    def stop(self, grace: float | None = None, timeout: float | None = None) -> None:
        """Stop as the async ``Consumer.stop`` does, and block until stopped (or
        ``timeout``)."""
        self._request_stop(grace)
        self._thread.join(timeout)

    def _request_stop(self, grace: float | None = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._engine.request_stop, grace)
                return
            except RuntimeError:
                pass
        self._engine.request_stop(grace)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the consumer stops; raises its fatal error, if any."""
        self._thread.join(timeout)
        if self._error is not None and not self._thread.is_alive():
            raise self._error

    def run_until_signal(self) -> None:
        """Block until SIGTERM or SIGINT (main thread only), then stop."""
        received = threading.Event()
        old = {s: signal.signal(s, lambda *_: received.set())
               for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not received.wait(0.5):
                if self.done:
                    break
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self.stop()
        self.wait()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@overload
def consume(pool: Any, subscription: str, handler: SyncHandler,
            options: ConsumerOptions | None = None, *, mode: Literal["ack"] = ...,
            **kwargs: Any) -> Consumer: ...


@overload
def consume(pool: Any, subscription: str, handler: SyncTxHandler,
            options: ConsumerOptions | None = None, *, mode: Literal["transaction"],
            **kwargs: Any) -> Consumer: ...


def consume(pool: Any, subscription: str, handler: Any,
            options: ConsumerOptions | None = None, **kwargs: Any) -> Consumer:
    """Start consuming with a ``psycopg_pool.ConnectionPool`` (opened) and sync
    handlers: ``handler(event)``, or ``handler(event, conn)`` in transaction
    mode.  Options as for :func:`outbox_client.consume`; ``handle_signals`` is
    not available here (use :meth:`Consumer.run_until_signal`)."""
    opts = make_options(options, kwargs)
    if opts.handle_signals:
        raise ValueError("handle_signals needs the main thread's event loop; use "
                         "Consumer.run_until_signal() with the sync consumer")
    backend = SyncBackend(pool, subscription, handler, opts.mode == "transaction",
                          opts.concurrency)
    return Consumer(Engine(backend, subscription, opts, listen_pool=pool))
