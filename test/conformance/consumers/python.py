#!/usr/bin/env python3
"""Conformance consumer for clients/python (outbox_client): the async API, or
with --api sync the sync twin (outbox_client.sync, handlers in threads).

The protocol (command line, payload-driven handler, JSON lines on stdout) is
test/conformance/README.md.  SIGTERM is the library's own graceful stop
(async: handle_signals=True; sync: Consumer.run_until_signal()).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import psycopg
import psycopg_pool

import outbox_client as ob

LANG = "python"


_out_lock = threading.Lock()


def out(ev: str, **kw: Any) -> None:
    kw = {"ev": ev, **kw, "t": time.time()}
    with _out_lock:
        sys.stdout.write(json.dumps(kw, default=str) + "\n")
        sys.stdout.flush()


class _Lines(logging.Handler):
    """The library's warnings become `warning` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            out("warning", msg=record.getMessage())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--subscription", required=True)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--mode", choices=("ack", "transaction"), default="ack")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lease", type=float, default=30.0)
    p.add_argument("--grace", type=float, default=25.0)
    p.add_argument("--cancel-grace", type=float, default=2.0)
    p.add_argument("--poll-interval", type=float, default=30.0)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--poll-wait", type=float, default=5.0)
    p.add_argument("--listen", choices=("auto", "false"), default="auto")
    p.add_argument("--pooler", action="store_true")
    p.add_argument("--api", choices=("async", "sync"), default="async")
    return p.parse_args()


class State:
    running = 0
    max_running = 0
    keys: dict[str, int] = {}


def ev_fields(ev: ob.Event) -> dict[str, Any]:
    p = ev.payload if isinstance(ev.payload, dict) else {}
    return {"id": ev.event_id, "attempt": ev.attempt, "key": ev.key, "seq": p.get("seq")}


STATE_SQL = "SELECT state FROM outbox.event_status(%s) WHERE subscription = %s"


async def delivery_state(ev: ob.Event) -> str | None:
    """The handler's own view of its delivery, through a connection of its own."""
    async with await psycopg.AsyncConnection.connect(ARGS.dsn, autocommit=True) as conn:
        cur = await conn.execute(STATE_SQL, (ev.event_id, ev.subscription))
        row = await cur.fetchone()
        return None if row is None else row[0]


async def sleep(ev: ob.Event, seconds: float, ignore_cancel: bool, cleanup_ms: int = 0) -> None:
    """Sleep; a cancellation ends it (reported), unless ignore_cancel; with
    cleanup_ms the handler takes that long after its cancellation and reports
    its delivery's state then (`ended`)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    seen = False
    while True:
        left = end - loop.time()
        if left <= 0:
            return
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            if not ignore_cancel:
                out("cancelled", **ev_fields(ev), ignored=False)
                if cleanup_ms:
                    await asyncio.sleep(cleanup_ms / 1000.0)
                    out("ended", **ev_fields(ev), state=await delivery_state(ev))
                raise
            if not seen:
                out("cancelled", **ev_fields(ev), ignored=True)
            seen = True
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


def make_handler(args: argparse.Namespace) -> Any:
    async def behave(ev: ob.Event, conn: Any = None) -> None:
        p = ev.payload if isinstance(ev.payload, dict) else {}
        State.running += 1
        State.max_running = max(State.max_running, State.running)
        key_check = bool(p.get("key_check")) and ev.key is not None
        if key_check:
            if State.keys.get(ev.key, 0) > 0:
                out("violation", what="two handlers of one key at once", **ev_fields(ev))
            State.keys[ev.key] = State.keys.get(ev.key, 0) + 1
        out("start", **ev_fields(ev), running=State.running)
        try:
            if p.get("sleep_ms"):
                await sleep(ev, p["sleep_ms"] / 1000.0, bool(p.get("ignore_cancel")),
                            int(p.get("cleanup_ms", 0)))
            if conn is not None and not p.get("no_write"):
                await conn.execute(
                    "INSERT INTO conformance_writes (event_id, attempt) VALUES (%s, %s)",
                    (ev.event_id, ev.attempt))
            if p.get("write_then_throw"):
                raise RuntimeError("wrote, then threw")
            if ev.attempt <= int(p.get("fail_attempts", 0)):
                raise RuntimeError(f"failing attempt {ev.attempt}")
            outcome = p.get("outcome")
            if outcome == "dead":
                out("outcome", kind="dead", **ev_fields(ev))
                raise ob.DeadLetter("the payload asked for it")
            if outcome == "release":
                out("outcome", kind="release", **ev_fields(ev))
                raise ob.Release()
            if isinstance(outcome, str) and outcome.startswith("retry_ms:"):
                out("outcome", kind="retry", **ev_fields(ev))
                raise ob.RetryAfter(int(outcome.split(":", 1)[1]) / 1000.0)
            out("handled", **ev_fields(ev))
        except ob.HandlerOutcome:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            out("threw", **ev_fields(ev), error=str(exc))
            raise
        finally:
            State.running -= 1
            if key_check:
                State.keys[ev.key] -= 1

    if args.mode == "transaction":
        return behave

    async def ack_handler(ev: ob.Event) -> None:
        await behave(ev)

    return ack_handler


class _Cancelled(Exception):
    """A sync handler's way to end on its cancellation (event.cancelled)."""


def make_sync_handler(args: argparse.Namespace) -> Any:
    lock = threading.Lock()

    def behave(ev: ob.Event, conn: Any = None) -> None:
        p = ev.payload if isinstance(ev.payload, dict) else {}
        key_check = bool(p.get("key_check")) and ev.key is not None
        with lock:
            State.running += 1
            State.max_running = max(State.max_running, State.running)
            running = State.running
            if key_check:
                if State.keys.get(ev.key, 0) > 0:
                    out("violation", what="two handlers of one key at once", **ev_fields(ev))
                State.keys[ev.key] = State.keys.get(ev.key, 0) + 1
        out("start", **ev_fields(ev), running=running)
        try:
            if p.get("sleep_ms"):
                end = time.monotonic() + p["sleep_ms"] / 1000.0
                if ev.cancelled.wait(p["sleep_ms"] / 1000.0):
                    ignore = bool(p.get("ignore_cancel"))
                    out("cancelled", **ev_fields(ev), ignored=ignore)
                    if not ignore:
                        if p.get("cleanup_ms"):
                            time.sleep(p["cleanup_ms"] / 1000.0)
                            with psycopg.connect(ARGS.dsn, autocommit=True) as c:
                                row = c.execute(STATE_SQL, (ev.event_id, ev.subscription)).fetchone()
                            out("ended", **ev_fields(ev), state=None if row is None else row[0])
                        raise _Cancelled("cancelled")
                    time.sleep(max(0.0, end - time.monotonic()))
            if conn is not None and not p.get("no_write"):
                conn.execute("INSERT INTO conformance_writes (event_id, attempt) VALUES (%s, %s)",
                             (ev.event_id, ev.attempt))
            if p.get("write_then_throw"):
                raise RuntimeError("wrote, then threw")
            if ev.attempt <= int(p.get("fail_attempts", 0)):
                raise RuntimeError(f"failing attempt {ev.attempt}")
            outcome = p.get("outcome")
            if outcome == "dead":
                out("outcome", kind="dead", **ev_fields(ev))
                raise ob.DeadLetter("the payload asked for it")
            if outcome == "release":
                out("outcome", kind="release", **ev_fields(ev))
                raise ob.Release()
            if isinstance(outcome, str) and outcome.startswith("retry_ms:"):
                out("outcome", kind="retry", **ev_fields(ev))
                raise ob.RetryAfter(int(outcome.split(":", 1)[1]) / 1000.0)
            out("handled", **ev_fields(ev))
        except (ob.HandlerOutcome, _Cancelled):
            raise
        except Exception as exc:
            out("threw", **ev_fields(ev), error=str(exc))
            raise
        finally:
            with lock:
                State.running -= 1
                if key_check:
                    State.keys[ev.key] -= 1

    if args.mode == "transaction":
        return behave
    return lambda ev: behave(ev)


def fatal_kind(err: BaseException) -> str:
    if isinstance(err, ob.SubscriptionNotFound):
        return "unknown_subscription"
    if isinstance(err, ob.PermissionDenied):
        return "permission_denied"
    if isinstance(err, ob.SchemaMismatch):
        return "schema"
    return "other"


def setup(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pool's connection arguments and the consumer's options."""
    log = logging.getLogger("outbox_client")
    log.setLevel(logging.INFO)
    log.addHandler(_Lines())
    log.propagate = False
    kwargs: dict[str, Any] = {}
    if args.pooler:
        kwargs["prepare_threshold"] = None  # what psycopg's docs ask for behind PgBouncer
    hooks = ob.Hooks(
        on_reconnect=lambda exc, delay: out("reconnect", error=str(exc)),
        on_lease_lost=lambda ev: out("lease_lost", **ev_fields(ev)),
        on_poll_only=lambda reason: out("poll_only", reason=reason),
    )
    opts: dict[str, Any] = dict(
        mode=args.mode, concurrency=args.concurrency, lease=args.lease, grace=args.grace,
        cancel_timeout=args.cancel_grace, poll_interval=args.poll_interval,
        heartbeat=args.heartbeat, poll_only_wait=args.poll_wait,
        listen=False if args.listen == "false" else None, hooks=hooks)
    if args.batch is not None:
        opts["tx_batch_size" if args.mode == "transaction" else "batch_size"] = args.batch
    return kwargs, opts


def finish(consumer: Any, code: int) -> None:
    s = consumer.stats
    out("exit", code=code, max_running=State.max_running, counters={
        "claimed": s.claimed, "handled": s.handled, "failed": s.failed, "dead": s.dead,
        "released": s.released, "leases_lost": s.leases_lost,
        "stale_settlements": s.stale_settlements, "reconnects": s.reconnects}, raw=s.as_dict())


def fatal(err: ob.ConsumerError) -> int:
    out("fatal", kind=fatal_kind(err), error=type(err).__name__, sqlstate=err.sqlstate,
        msg=str(err))
    return 3


def main_sync(args: argparse.Namespace) -> None:
    from outbox_client import sync as obs

    kwargs, opts = setup(args)
    pool = psycopg_pool.ConnectionPool(args.dsn, min_size=1, max_size=args.concurrency + 4,
                                       kwargs=kwargs, open=True)
    consumer = obs.consume(pool, args.subscription, make_sync_handler(args), **opts)
    code = 0
    try:
        consumer.ready()
        out("ready", lang=LANG + "-sync", poll_only=consumer.poll_only, pid=os.getpid())
        consumer.run_until_signal()
    except ob.ConsumerError as err:
        code = fatal(err)
    finish(consumer, code)
    sys.stdout.flush()
    os._exit(code)


async def main(args: argparse.Namespace) -> None:
    kwargs, opts = setup(args)
    pool = psycopg_pool.AsyncConnectionPool(args.dsn, min_size=1, max_size=args.concurrency + 4,
                                            kwargs=kwargs, open=False)
    await pool.open()
    opts["handle_signals"] = True
    consumer = ob.consume(pool, args.subscription, make_handler(args), **opts)
    code = 0
    try:
        await consumer.ready()
        out("ready", lang=LANG, poll_only=consumer.poll_only, pid=os.getpid())
        await consumer.wait()
    except ob.ConsumerError as err:
        code = fatal(err)
    finish(consumer, code)
    try:
        await asyncio.wait_for(pool.close(), 5)
    except Exception:
        pass
    # os._exit: a handler that ignores its cancellation must not keep the
    # process alive after the consumer stopped (the runner checks the exit).
    sys.stdout.flush()
    os._exit(code)


ARGS: argparse.Namespace

if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.api == "sync":
        main_sync(ARGS)
    else:
        asyncio.run(main(ARGS))
