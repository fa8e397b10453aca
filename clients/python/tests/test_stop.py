from __future__ import annotations

import asyncio
from typing import Any

import outbox_client as ob

from conftest import until


async def test_stop_lets_running_handlers_finish_and_claims_nothing_after(sub: Any,
                                                                          apool: Any) -> None:
    gate = asyncio.Event()

    async def handle(ev: ob.Event) -> None:
        await gate.wait()

    c = ob.consume(apool, sub.name, handle, concurrency=4)
    await c.ready()
    ids = sub.enqueue(4)
    await until(lambda: c.running == 4, "4 handlers running")
    stopping = asyncio.create_task(c.stop(grace=30))
    await until(lambda: c._engine._stopping, "stop begun")
    gate.set()  # they finish within the grace period
    await stopping
    assert c.stats.handled == 4 and c.stats.released == 0
    assert all(sub.status(i)["state"] == "done" for i in ids)
    later = sub.enqueue(2)
    await asyncio.sleep(0.3)
    assert [sub.status(i)["state"] for i in later] == ["ready", "ready"]


async def test_stuck_handler_is_cancelled_and_released_at_the_same_attempt(
        sub: Any, apool: Any) -> None:
    cancelled: list[int] = []
    stubborn: list[int] = []

    async def handle(ev: ob.Event) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(ev.event_id)
            if ev.payload.get("stubborn"):  # ignores its cancellation
                stubborn.append(ev.event_id)
                await asyncio.sleep(3600)
            raise

    c = ob.consume(apool, sub.name, handle, cancel_timeout=0.5)
    await c.ready()
    (a,) = sub.enqueue(1, {"stubborn": False})
    (b,) = sub.enqueue(1, {"stubborn": True})
    await until(lambda: c.running == 2, "2 handlers running")
    await c.stop(grace=0.2)
    assert sorted(cancelled) == sorted([a, b]) and stubborn == [b]
    assert c.stats.released == 2 and c.stats.handled == 0
    rows = sub.admin.execute("SELECT event_id, attempt FROM outbox.claim(%s, 10) "
                             "ORDER BY event_id", (sub.name,)).fetchall()
    assert rows == sorted([(a, 1), (b, 1)])  # no attempt used


async def test_sigterm_stops_after_the_handlers_in_flight(sub: Any, apool: Any) -> None:
    import os
    import signal

    gate = asyncio.Event()

    async def handle(ev: ob.Event) -> None:
        await gate.wait()

    c = ob.consume(apool, sub.name, handle, handle_signals=True, concurrency=2)
    await c.ready()
    (a, b) = sub.enqueue(2)
    await until(lambda: c.running == 2, "2 handlers running")
    os.kill(os.getpid(), signal.SIGTERM)
    await until(lambda: c._engine._stopping, "SIGTERM seen")
    (late,) = sub.enqueue(1)
    gate.set()
    await c.wait()
    assert c.stats.handled == 2 and c.stats.claimed == 2
    assert sub.status(late)["state"] == "ready"
