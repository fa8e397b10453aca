"""The consumer loop, shared by the async API and its sync twin.

One asyncio task claims (only as many deliveries as there are free handler
slots), one keeps a dedicated LISTEN connection, one extends the leases of
running handlers every third of the lease, one flushes acks in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Union

import psycopg
from psycopg import sql

from ._backend import (AsyncBackend, Settlement, SyncBackend, TxRecord, listen_target,
                       settlement)
from ._errors import (ConsumerError, DeadLetter, PermissionDenied, Release, RetryAfter,
                      SchemaMismatch, SubscriptionNotFound)
from ._types import ConsumerOptions, Event, Stats

Backend = Union[AsyncBackend, SyncBackend]

# SQLSTATEs retried with backoff, besides classes 08 (connection), 53 (resources)
# and 58 (system errors).
TRANSIENT_STATES = frozenset({"57P01", "57P02", "57P03", "25006", "40001", "40P01", "57014",
                              "55000"})


class _Running:
    """A handler in flight (ack mode)."""

    __slots__ = ("event", "task", "lease_until", "phase", "cancel_reason", "settled")

    def __init__(self, event: Event, lease_until: float) -> None:
        self.event = event
        self.task: asyncio.Task[None] | None = None
        self.lease_until = lease_until
        self.phase = "handler"  # then "settle"
        self.cancel_reason: str | None = None  # "lease" or "stop"
        self.settled = False


class _TxWorker:
    """A transaction of transaction mode in flight."""

    __slots__ = ("task", "events", "done")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.events: list[Event] = []
        self.done = 0


class Engine:
    def __init__(self, backend: Backend, subscription: str, options: ConsumerOptions, *,
                 listen_pool: Any = None, once: bool = False,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.b = backend
        self.sub = subscription
        self.o = options
        self.stats = Stats()
        self.log = options.logger or logging.getLogger("outbox_client")
        self._listen_pool = listen_pool
        self._once = once
        self._on_ready = on_ready
        self._tx = options.mode == "transaction"
        self._lease = timedelta(seconds=options.lease)
        self._running: dict[int, _Running] = {}
        self._workers: set[_TxWorker] = set()
        self._pending_acks: list[tuple[Event, float]] = []
        self._need_claim = True
        self._stopping = False
        self._grace = options.grace
        self.poll_only = options.listen is False or once
        self._claim_wait = False
        self._fatal: ConsumerError | None = None
        self._warned_poll_only = False
        self._notifications = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._listener_task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._ack_kick: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None

    # -- control ----------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running) + sum(1 for w in self._workers if w.events)

    @property
    def fatal(self) -> ConsumerError | None:
        return self._fatal

    def request_stop(self, grace: float | None = None) -> None:
        if grace is not None:
            self._grace = grace
        self._stopping = True
        if self._kick is not None:
            self._kick.set()

    async def wait_ready(self) -> None:
        assert self._ready is not None
        await self._ready.wait()

    def _set_ready(self) -> None:
        assert self._ready is not None
        if not self._ready.is_set():
            self._ready.set()
            if self._on_ready is not None:
                self._on_ready()

    def _hook(self, name: str, *args: Any) -> None:
        fn = getattr(self.o.hooks, name)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.log.exception("outbox consumer %s: hook %s raised", self.sub, name)

    def _fail_fatal(self, err: ConsumerError) -> None:
        if self._fatal is None:
            self._fatal = err
            self.log.error("outbox consumer %s stops: %s", self.sub, err)
        self.request_stop()

    def _classify(self, exc: BaseException) -> ConsumerError | None:
        """None for a transient error (retry with backoff), else the fatal error."""
        if isinstance(exc, ConsumerError):
            return exc
        if isinstance(exc, (asyncio.TimeoutError, OSError)):
            return None
        err: ConsumerError
        if isinstance(exc, psycopg.Error):
            st = exc.sqlstate
            if st == "42704":
                err = SubscriptionNotFound(f"subscription {self.sub!r} does not exist: {exc}",
                                           subscription=self.sub, sqlstate=st)
            elif st == "42501":
                err = PermissionDenied(
                    f"no consume grant for subscription {self.sub!r}: {exc} "
                    f"(the owner runs outbox.grant_consume(role, {self.sub!r}))",
                    subscription=self.sub, sqlstate=st)
            elif st in ("42883", "3F000"):
                err = SchemaMismatch(
                    f"outbox extension missing or too old: {exc} (CREATE EXTENSION outbox, or "
                    "ALTER EXTENSION outbox UPDATE)", subscription=self.sub, sqlstate=st)
            elif st is None:
                if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                    return None
                err = ConsumerError(f"unexpected error: {exc}", subscription=self.sub)
            elif st[:2] in ("08", "53", "58") or st in TRANSIENT_STATES:
                return None
            else:
                err = ConsumerError(f"unexpected database error {st}: {exc}",
                                    subscription=self.sub, sqlstate=st)
        else:
            err = ConsumerError(f"unexpected error: {exc!r}", subscription=self.sub)
        err.__cause__ = exc
        return err

    def _delay(self, n: int) -> float:
        """Full jitter: uniform in [min, min(max, min * 2^n)]."""
        cap = min(self.o.reconnect_max, self.o.reconnect_min * (2 ** min(n, 30)))
        return random.uniform(self.o.reconnect_min, max(self.o.reconnect_min, cap))

    async def _retrying(self, what: str, fn: Callable[[], Any],
                        give_up_at: float | None = None) -> Any:
        """Run fn until it succeeds; transient errors back off, fatal ones raise."""
        n = 0
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = self._classify(exc)
                if err is not None:
                    raise err from exc
                self.stats.transient_errors += 1
                delay = self._delay(n)
                n += 1
                if give_up_at is not None and time.monotonic() + delay > give_up_at:
                    raise
                self.log.warning("outbox consumer %s: %s failed (%s), retrying in %.2f s",
                                 self.sub, what, exc, delay)
                await asyncio.sleep(delay)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        assert self._kick is not None
        end = time.monotonic() + seconds
        while not self._stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._kick.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), left)

    # -- main -------------------------------------------------------------

    async def run(self) -> None:
        self._kick = asyncio.Event()
        self._ack_kick = asyncio.Event()
        self._ready = asyncio.Event()
        self._finished = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals: list[signal.Signals] = []
        if self.o.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.request_stop)
                    signals.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    self.log.warning("outbox consumer %s: cannot handle signal %s here",
                                     self.sub, sig)
        try:
            try:
                has_11, self._claim_wait = await self._retrying("schema check", self.b.schema)
                if not has_11:
                    raise SchemaMismatch(
                        "outbox extension 1.1 not found in this database: run "
                        "CREATE EXTENSION outbox, or ALTER EXTENSION outbox UPDATE",
                        subscription=self.sub)
                if self.poll_only:
                    if self.o.listen is False and not self._once:
                        self._enter_poll_only("listen=False", warn=False)
                    self._set_ready()
                else:
                    self._listener_task = asyncio.create_task(self._listener())
                    self._tasks.append(self._listener_task)
                if not self._tx:
                    self._tasks.append(asyncio.create_task(self._extender()))
                if not self._tx:
                    self._tasks.append(asyncio.create_task(self._flusher()))
                await self._main_loop()
            except ConsumerError as err:
                self._fail_fatal(err)
            except Exception as exc:  # a bug: stop cleanly all the same
                bug = ConsumerError(f"unexpected error: {exc!r}", subscription=self.sub)
                bug.__cause__ = exc
                self._fail_fatal(bug)
            finally:
                await self._shutdown()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._set_ready()
            self._finished.set()
        if self._fatal is not None:
            raise self._fatal

    def _free(self) -> int:
        if self._tx:
            return self.o.concurrency - len(self._workers)
        return self.o.concurrency - len(self._running)

    def _idle(self) -> bool:
        return not self._running and not self._workers

    async def _main_loop(self) -> None:
        assert self._kick is not None
        errors = 0
        next_poll = time.monotonic() + self._poll_period()
        while not self._stopping:
            self._kick.clear()
            free = self._free()
            if self._need_claim and free > 0:
                self._need_claim = False
                if self._tx:
                    self._spawn_tx()
                    continue
                n = min(free, self.o.batch_size)
                t0 = time.monotonic()
                try:
                    events = await self.b.claim(n, self._lease, None)
                except Exception as exc:
                    err = self._classify(exc)
                    if err is not None:
                        raise err from exc
                    self.stats.transient_errors += 1
                    self._need_claim = True
                    delay = self._delay(errors)
                    errors += 1
                    self.log.warning("outbox consumer %s: claim failed (%s), retrying in %.2f s",
                                     self.sub, exc, delay)
                    await self._sleep_unless_stopping(delay)
                    continue
                errors = 0
                self._start(events, t0)
                if len(events) == n:
                    self._need_claim = True
                continue
            if self._once:
                if not self._need_claim and self._idle():
                    return
            elif self.poll_only and self._claim_wait and not self._tx and free > 0:
                await self._waiting_claim(min(free, self.o.batch_size))
                next_poll = time.monotonic() + self._poll_period()
                continue
            now = time.monotonic()
            if now >= next_poll:
                self._need_claim = True
                next_poll = now + self._poll_period()
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), next_poll - now)

    def _poll_period(self) -> float:
        if self.poll_only and not self._once:
            return self.o.poll_only_interval
        return self.o.poll_interval

    async def _waiting_claim(self, n: int) -> None:
        """Poll-only mode: claim(..., wait) until something comes, or stop."""
        assert self._kick is not None
        t0 = time.monotonic()
        task = asyncio.create_task(
            self.b.claim(n, self._lease, timedelta(seconds=self.o.poll_only_wait)))
        while not task.done():
            kick = asyncio.create_task(self._kick.wait())
            await asyncio.wait({task, kick}, return_when=asyncio.FIRST_COMPLETED)
            kick.cancel()
            self._kick.clear()
            if self._stopping and self.b.cancellable:
                task.cancel()
                break
        try:
            events = await task
        except asyncio.CancelledError:
            return  # our own cancel: the claim's transaction rolled back
        except Exception as exc:
            err = self._classify(exc)
            if err is not None:
                raise err from exc
            self.stats.transient_errors += 1
            self.log.warning("outbox consumer %s: waiting claim failed (%s)", self.sub, exc)
            await self._sleep_unless_stopping(self._delay(0))
            return
        if self._stopping:
            for ev in events:
                await self._release(ev)
            return
        self._start(events, t0)
        if len(events) == n:
            self._need_claim = True

    def _enter_poll_only(self, reason: str, warn: bool = True) -> None:
        self.poll_only = True
        if warn and not self._warned_poll_only:
            self._warned_poll_only = True
            how = ("claim(..., wait)" if self._claim_wait else
                   f"a poll every {self.o.poll_only_interval} s (outbox.claim has no wait "
                   "argument in this database)")
            self.log.warning("outbox consumer %s: LISTEN cannot work here (%s); polling with %s",
                             self.sub, reason, how)
        self._hook("on_poll_only", reason)
        self._set_ready()
        self._need_claim = True
        if self._kick is not None:
            self._kick.set()

    # -- ack mode handlers ------------------------------------------------

    def _start(self, events: list[Event], t_claim: float) -> None:
        if not events:
            return
        self.stats.claimed += len(events)
        self._hook("on_claimed", events)
        for ev in events:
            r = _Running(ev, t_claim + self.o.lease)
            self._running[ev.event_id] = r
            r.task = asyncio.create_task(self._handle(r))

    def _note_start(self, ev: Event) -> None:
        lag = max(0.0, (datetime.now(timezone.utc) - ev.enqueued_at).total_seconds())
        self.stats.lag_last = lag
        if lag > self.stats.lag_max:
            self.stats.lag_max = lag
        self._hook("on_start", ev, lag)

    async def _handle(self, r: _Running) -> None:
        ev = r.event
        self._note_start(ev)
        t0 = time.monotonic()
        outcome: BaseException | None = None
        cancelled = False
        try:
            await self.b.run_handler(ev)
        except asyncio.CancelledError as exc:
            if r.cancel_reason is None:
                raise
            cancelled = True
            outcome = exc
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
        except Exception as exc:
            outcome = exc
        r.phase = "settle"
        duration = time.monotonic() - t0
        try:
            if r.cancel_reason == "stop":
                await self._release_running(r)
            elif r.cancel_reason == "lease":
                # The delivery may be someone else's now: never ack it; a fail or
                # release is fenced by the attempt and comes back NULL.
                if cancelled or outcome is None:
                    self.stats.stale_settlements += 1
                else:
                    await self._settle(ev, outcome, lease_known_lost=True)
            elif outcome is None:
                self._pending_acks.append((ev, duration))
                assert self._ack_kick is not None
                self._ack_kick.set()
            else:
                await self._settle(ev, outcome)
        except ConsumerError as err:
            self._fail_fatal(err)
        except Exception:
            self.log.exception("outbox consumer %s: settling event %s failed", self.sub,
                               ev.event_id)
        finally:
            self._running.pop(ev.event_id, None)
            if self._kick is not None:
                self._kick.set()

    def _count_outcome(self, ev: Event, outcome: BaseException, state: str | None,
                       lease_known_lost: bool = False) -> None:
        if state is None:
            self.stats.stale_settlements += 1
            if not lease_known_lost:
                self.stats.leases_lost += 1
                self._hook("on_lease_lost", ev)
            self.log.warning("outbox consumer %s: event %s attempt %s was no longer leased to "
                             "this consumer; its %s had no effect", self.sub, ev.event_id,
                             ev.attempt, "release" if isinstance(outcome, Release) else "fail")
            return
        if isinstance(outcome, Release):
            self.stats.released += 1
            self._hook("on_released", ev)
            if state == "ready":
                self._on_notify()  # claimable again now
            return
        if state == "dead":
            self.stats.dead += 1
        else:
            self.stats.failed += 1
        if not isinstance(outcome, (RetryAfter, DeadLetter)):
            self.log.warning("outbox consumer %s: handler failed on event %s attempt %s (%s)",
                             self.sub, ev.event_id, ev.attempt, state,
                             exc_info=(type(outcome), outcome, outcome.__traceback__))
        self._hook("on_failed", ev, outcome, state)

    async def _settle(self, ev: Event, outcome: BaseException,
                      lease_known_lost: bool = False) -> None:
        s: Settlement = settlement(ev, outcome)
        state = await self._retrying("fail/release", lambda: self.b.settle(s))
        self._count_outcome(ev, outcome, state, lease_known_lost)

    async def _release(self, ev: Event, give_up_at: float | None = None) -> None:
        """Give a delivery back at the same attempt (stopping)."""
        s = settlement(ev, Release())
        try:
            state = await self._retrying("release", lambda: self.b.settle(s), give_up_at)
        except ConsumerError:
            raise
        except Exception as exc:
            self.log.warning("outbox consumer %s: could not release event %s (%s); its lease "
                             "will run out", self.sub, ev.event_id, exc)
            return
        if state is None:
            self.stats.stale_settlements += 1
        else:
            self.stats.released += 1
            self._hook("on_released", ev)

    async def _release_running(self, r: _Running) -> None:
        if r.settled:
            return
        r.settled = True
        await self._release(r.event, time.monotonic() + max(5.0, self.o.cancel_timeout))

    def _lost(self, r: _Running, why: str) -> None:
        if r.phase != "handler" or r.cancel_reason is not None:
            return
        r.cancel_reason = "lease"
        self.stats.leases_lost += 1
        self.log.warning("outbox consumer %s: lease of event %s attempt %s lost (%s); "
                         "cancelling its handler", self.sub, r.event.event_id, r.event.attempt,
                         why)
        self._hook("on_lease_lost", r.event)
        r.event.cancelled.set()
        if r.task is not None:
            r.task.cancel()

    async def _extender(self) -> None:
        period = self.o.lease / 3
        while True:
            await asyncio.sleep(period)
            cands = [r for r in self._running.values()
                     if r.phase == "handler" and r.cancel_reason is None]
            if not cands:
                continue
            t0 = time.monotonic()
            try:
                kept = await asyncio.wait_for(
                    self.b.extend([r.event.event_id for r in cands],
                                  [r.event.attempt for r in cands], self._lease), period)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = self._classify(exc)
                if err is not None:
                    self._fail_fatal(err)
                    return
                self.stats.transient_errors += 1
                self.log.warning("outbox consumer %s: extend_lease failed (%s)", self.sub, exc)
            else:
                for r in cands:
                    if r.event.event_id in kept:
                        r.lease_until = t0 + self.o.lease
                    else:
                        self._lost(r, "extend_lease did not extend it")
            now = time.monotonic()
            for r in cands:
                if now + period >= r.lease_until:
                    self._lost(r, "lease could not be extended in time")

    async def _flusher(self) -> None:
        assert self._ack_kick is not None
        while True:
            await self._ack_kick.wait()
            self._ack_kick.clear()
            try:
                await self._flush()
            except ConsumerError as err:
                self._fail_fatal(err)
                return

    async def _flush(self, give_up_at: float | None = None) -> None:
        while self._pending_acks:
            batch = self._pending_acks[: self.o.ack_batch]
            ids = [ev.event_id for ev, _ in batch]
            await self._retrying("ack", lambda: self.b.ack(ids), give_up_at)
            del self._pending_acks[: len(batch)]
            for ev, duration in batch:
                self.stats.handled += 1
                self._hook("on_handled", ev, duration)

    # -- transaction mode ------------------------------------------------

    def _spawn_tx(self) -> None:
        w = _TxWorker()
        self._workers.add(w)
        w.task = asyncio.create_task(self._tx_work(w))

    async def _tx_work(self, w: _TxWorker) -> None:
        n = self.o.tx_batch_size

        def on_claimed(events: list[Event]) -> None:
            w.events = events
            if events:
                self.stats.claimed += len(events)
                self._hook("on_claimed", events)
            if len(events) == n:
                self._need_claim = True
                assert self._kick is not None
                self._kick.set()

        records: list[TxRecord] = []
        try:
            records = await self.b.tx_batch(n, self._lease, on_claimed, self._note_start)
        except asyncio.CancelledError:
            # Stopping: the transaction rolled back, so its claims never happened
            # and every event is claimable again at the same attempt.
            self.stats.released += len(w.events)
            for ev in w.events:
                self._hook("on_released", ev)
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
        except Exception as exc:
            err = self._classify(exc)
            if err is not None:
                self._fail_fatal(err)
            else:
                self.stats.transient_errors += 1
                self._need_claim = True
                delay = self._delay(0)
                self.log.warning("outbox consumer %s: transaction rolled back (%s), "
                                 "retrying in %.2f s", self.sub, exc, delay)
                await asyncio.sleep(delay)
        finally:
            self._workers.discard(w)
            if self._kick is not None:
                self._kick.set()
        for ev, outcome, state, duration in records:
            if outcome is None:
                self.stats.handled += 1
                self._hook("on_handled", ev, duration)
            else:
                self._count_outcome(ev, outcome, state)

    # -- listening --------------------------------------------------------

    def _on_notify(self, _n: Any = None) -> None:
        self._notifications += 1
        self._need_claim = True
        if self._kick is not None:
            self._kick.set()

    async def _listener(self) -> None:
        attempt = 0
        probed = self.o.listen is True
        conninfo, kwargs = listen_target(self._listen_pool, self.o.listen_conninfo)
        kwargs = {**kwargs, "autocommit": True}
        kwargs.setdefault("application_name", "outbox-client listener")
        while not self._stopping:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(conninfo, **kwargs),
                    self.o.heartbeat + 10)
                cur = await conn.execute("SELECT outbox.channel(%s)", (self.sub,))
                row = await cur.fetchone()
                assert row is not None
                channel: str = row[0]
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if not await self._listening(conn, channel):
                    self._enter_poll_only("LISTEN did not register: pg_listening_channels() "
                                          "does not show the channel")
                    return
                if not probed:
                    if not await self._probe(conn, channel):
                        self._enter_poll_only(
                            f"no notification came back within {self.o.probe_timeout} s "
                            "(a pooler in transaction mode?)")
                        return
                    probed = True
                if attempt:
                    self.stats.reconnects += 1
                attempt = 0
                self._set_ready()
                self._on_notify()  # drain after every (re)connect
                while not self._stopping:
                    async for _n in conn.notifies(timeout=self.o.heartbeat):
                        self._on_notify()
                    if not await asyncio.wait_for(self._listening(conn, channel),
                                                  self.o.heartbeat):
                        raise psycopg.OperationalError("the LISTEN registration is gone")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = self._classify(exc)
                if err is not None:
                    self._fail_fatal(err)
                    return
                delay = self._delay(attempt)
                attempt += 1
                self.stats.transient_errors += 1
                self.log.warning("outbox consumer %s: LISTEN connection lost (%s); "
                                 "reconnecting in %.2f s", self.sub, exc, delay)
                self._hook("on_reconnect", exc, delay)
                # Claims go on through the pool; a poll covers the gap.
                self._on_notify()
                await self._sleep_unless_stopping(delay)
            finally:
                if conn is not None:
                    await self._close(conn)

    async def _listening(self, conn: psycopg.AsyncConnection[Any], channel: str) -> bool:
        cur = await conn.execute("SELECT EXISTS (SELECT FROM pg_listening_channels() c WHERE c = %s::text)", (channel,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _probe(self, conn: psycopg.AsyncConnection[Any], channel: str) -> bool:
        """A notification sent through the pool must reach the LISTEN connection."""
        await self._retrying("notification probe", lambda: self.b.probe(channel))
        async for _n in conn.notifies(timeout=self.o.probe_timeout, stop_after=1):
            self._on_notify()
            return True
        return False

    async def _close(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    # -- stopping ---------------------------------------------------------

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._listener_task is not None:
            self._listener_task.cancel()
        # 1. Running handlers get the grace period.
        inflight = self._inflight()
        if inflight:
            self.log.info("outbox consumer %s: stopping, %d handler(s) in flight, grace %.1f s",
                          self.sub, len(inflight), self._grace)
            await asyncio.wait(inflight, timeout=self._grace)
        # 2. Then their cancellation signal.
        for r in list(self._running.values()):
            if r.phase == "handler" and r.cancel_reason is None:
                r.cancel_reason = "stop"
                r.event.cancelled.set()
                # A sync handler's thread cannot be interrupted: cancelling its
                # task would release the delivery at once while the thread still
                # runs; it gets cancel_timeout to see event.cancelled and end.
                if r.task is not None and self.b.cancellable:
                    r.task.cancel()
        for w in list(self._workers):
            for ev in w.events:
                ev.cancelled.set()
            if self.b.cancellable and w.task is not None:
                w.task.cancel()
        inflight = self._inflight()
        if inflight:
            await asyncio.wait(inflight, timeout=self.o.cancel_timeout)
        # 3. Whatever is still unsettled goes back at the same attempt.
        for r in list(self._running.values()):
            if r.phase == "handler":
                r.cancel_reason = "stop"
                try:
                    await self._release_running(r)
                except ConsumerError as err:
                    self._fail_fatal(err)
        # 4. Pending acks are flushed; the helpers stop.
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        try:
            await self._flush(time.monotonic() + max(5.0, self.o.cancel_timeout))
        except ConsumerError as err:
            self._fail_fatal(err)
        except Exception as exc:
            self.log.warning("outbox consumer %s: %d ack(s) could not be flushed (%s); those "
                             "events will be delivered again", self.sub,
                             len(self._pending_acks), exc)
        await self.b.close()

    def _inflight(self) -> set[asyncio.Task[None]]:
        tasks = {r.task for r in self._running.values() if r.task is not None}
        tasks |= {w.task for w in self._workers if w.task is not None}
        return {t for t in tasks if not t.done()}
