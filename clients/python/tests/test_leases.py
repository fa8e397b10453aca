from __future__ import annotations

import asyncio
from typing import Any

import outbox_client as ob

from conftest import until


async def test_handler_running_three_leases_keeps_its_one_attempt(sub: Any, apool: Any) -> None:
    attempts: list[int] = []
    leases: list[Any] = []

    async def handle(ev: ob.Event) -> None:
        attempts.append(ev.attempt)
        for _ in range(7):  # 3.5 s, 3.5 leases
            await asyncio.sleep(0.5)
            leases.append(sub.status(ev.event_id)["lease_until"])

    async with ob.consume(apool, sub.name, handle, lease=1.0) as c:
        await c.ready()
        (eid,) = sub.enqueue(1)
        await until(lambda: c.stats.handled == 1, "the ack")
    # without extension the worker returns the lease within lease + 2 s and it
    # is delivered again, at attempt 2
    assert attempts == [1]
    assert sub.status(eid)["attempts"] == 1
    assert len(set(leases)) >= 3  # the lease moved forward
    assert c.stats.leases_lost == 0


async def test_lost_lease_cancels_handler_and_stale_fail_is_counted(sub: Any,
                                                                    apool: Any) -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def handle(ev: ob.Event) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(ev.event_id)
            raise ValueError("too late")  # its fail is fenced by attempt 1: no effect

    lost: list[int] = []
    async with ob.consume(apool, sub.name, handle, lease=1.5, concurrency=1,
                          hooks=ob.Hooks(on_lease_lost=lambda ev: lost.append(ev.event_id))
                          ) as c:
        await c.ready()
        (eid,) = sub.enqueue(1)
        await asyncio.wait_for(started.wait(), 20)
        # someone else gets the delivery: attempt 1 fails, attempt 2 is claimed
        assert sub.sql("SELECT outbox.fail(%s, %s, retry_in => '0', attempt => 1)",
                       sub.name, eid) == "scheduled"
        assert sub.sql("SELECT attempt FROM outbox.claim(%s, 1)", sub.name) == 2
        await until(lambda: c.stats.stale_settlements == 1, "the stale settlement")
        assert not c.done  # nothing thrown at the user
    assert cancelled == [eid] and lost == [eid]
    assert c.stats.leases_lost == 1 and c.stats.failed == 0
    st = sub.status(eid)
    assert (st["state"], st["attempts"]) == ("leased", 2)
    assert st["last_error"] != "ValueError: too late"
