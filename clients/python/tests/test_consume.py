from __future__ import annotations

import asyncio
from typing import Any

import outbox_client as ob

from conftest import until


async def test_handles_every_event_once_and_acks(sub: Any, apool: Any) -> None:
    seen: list[int] = []

    async def handle(ev: ob.Event) -> None:
        seen.append(ev.payload["i"])

    async with ob.consume(apool, sub.name, handle, poll_interval=3600) as c:
        await c.ready()
        assert not c.poll_only
        ids = sub.enqueue(50)
        await until(lambda: c.stats.handled == 50, "50 acks")
    assert sorted(seen) == list(range(50))
    assert c.stats.claimed == 50 and c.stats.failed == 0
    assert all(sub.status(i)["state"] == "done" for i in ids)


async def test_outcomes_fail_retry_after_dead_release(make_sub: Any, apool: Any) -> None:
    sub = make_sub(backoff_base="10 ms", backoff_max="20 ms")
    calls: dict[str, list[int]] = {}
    failed_hook: list[tuple[str, str | None]] = []

    async def handle(ev: ob.Event) -> None:
        kind = ev.payload["kind"]
        calls.setdefault(kind, []).append(ev.attempt)
        n = len(calls[kind])
        if kind == "flaky" and n <= 2:
            raise RuntimeError(f"flaky {n}")
        if kind == "later" and n == 1:
            raise ob.RetryAfter(0.1, "come back later")
        if kind == "poison":
            raise ob.DeadLetter("cannot parse")
        if kind == "notyet" and n == 1:
            raise ob.Release()

    hooks = ob.Hooks(on_failed=lambda ev, exc, state: failed_hook.append(
        (ev.payload["kind"], state)))
    ids = {}
    async with ob.consume(apool, sub.name, handle, poll_interval=1, hooks=hooks) as c:
        await c.ready()
        for kind in ("flaky", "later", "poison", "notyet"):
            ids[kind] = sub.enqueue(1, {"kind": kind})[0]
        await until(lambda: c.stats.handled == 3 and c.stats.dead == 1, "3 acks and 1 dead")
    assert calls == {"flaky": [1, 2, 3], "later": [1, 2], "poison": [1], "notyet": [1, 1]}
    assert sub.status(ids["flaky"])["state"] == "done"
    assert sub.status(ids["flaky"])["last_error"] == "RuntimeError: flaky 2"
    assert sub.status(ids["later"])["last_error"] == "come back later"
    dead = sub.status(ids["poison"])
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 1, "cannot parse")
    assert c.stats.failed == 3 and c.stats.released == 1 and c.stats.stale_settlements == 0
    assert sorted(failed_hook) == [("flaky", "scheduled"), ("flaky", "scheduled"),
                                   ("later", "scheduled"), ("poison", "dead")]


async def test_dead_lettered_once_at_max_attempts(make_sub: Any, apool: Any) -> None:
    sub = make_sub(max_attempts=3, backoff_base="10 ms", backoff_max="20 ms")
    attempts: list[int] = []

    async def handle(ev: ob.Event) -> None:
        attempts.append(ev.attempt)
        raise ValueError("always")

    async with ob.consume(apool, sub.name, handle, poll_interval=1) as c:
        await c.ready()
        (eid,) = sub.enqueue(1)
        await until(lambda: c.stats.dead == 1, "dead letter")
    assert attempts == [1, 2, 3]
    assert c.stats.failed == 2 and c.stats.handled == 0
    assert sub.sql("SELECT count(*) FROM outbox.dead_letters WHERE subscription = %s "
                   "AND event_id = %s", sub.name, eid) == 1


async def test_concurrency_cap_and_no_prefetch(sub: Any, apool: Any) -> None:
    current = peak = 0
    over: list[int] = []
    box: dict[str, Any] = {}

    async def handle(ev: ob.Event) -> None:
        nonlocal current, peak
        current += 1
        peak = max(peak, current)
        await asyncio.sleep(0.05)
        current -= 1

    def claimed(events: Any) -> None:
        # called before the claimed handlers start: they must fit in the free slots
        if len(events) + box["c"].running > 3:
            over.append(len(events) + box["c"].running)

    c = ob.consume(apool, sub.name, handle, concurrency=3, batch_size=100,
                   hooks=ob.Hooks(on_claimed=claimed))
    box["c"] = c
    async with c:
        await c.ready()
        sub.enqueue(20)
        await until(lambda: c.stats.handled == 20, "20 acks")
    assert peak == 3 and over == []
    assert c.stats.claimed == 20


async def test_single_statements_run_outside_a_transaction_block(apool: Any) -> None:
    # A pool left at psycopg's default (autocommit off) would wrap each claim
    # and ack in BEGIN ... COMMIT: three round trips instead of one.  In a
    # statement of its own, now() is that statement's start.
    from outbox_client._backend import AsyncBackend

    async def nothing(ev: ob.Event) -> None:
        pass

    b = AsyncBackend(apool, "unused", nothing, False)
    assert await b._one("SELECT now() = statement_timestamp()", ()) is True
    async with apool.connection() as conn:
        assert conn.autocommit is False  # the pool's own setting is back
