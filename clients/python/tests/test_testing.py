from __future__ import annotations

from typing import Any

import outbox_client as ob
from outbox_client import testing


async def test_run_handler_reports_each_outcome() -> None:
    async def handle(ev: ob.Event) -> None:
        what = ev.payload
        if what == "retry":
            raise ob.RetryAfter(7)
        if what == "dead":
            raise ob.DeadLetter("no")
        if what == "release":
            raise ob.Release(after=2)
        if what == "boom":
            raise KeyError("x")

    assert (await testing.run_handler(handle, "ok")).action == "ack"
    r = await testing.run_handler(handle, "retry")
    assert (r.action, r.retry_in) == ("retry", 7)
    assert (await testing.run_handler(handle, "dead")).action == "dead"
    r = await testing.run_handler(handle, testing.make_event("release", attempt=3))
    assert (r.action, r.retry_in) == ("release", 2)
    r = await testing.run_handler(handle, "boom")
    assert r.action == "fail" and isinstance(r.error, KeyError)
    assert testing.run_handler_sync(lambda ev: None, {"a": 1}).action == "ack"


async def test_drain_handles_what_is_ready_once(sub: Any, apool: Any) -> None:
    seen: list[int] = []

    async def handle(ev: ob.Event) -> None:
        seen.append(ev.payload["i"])
        if ev.payload["i"] == 0:
            raise ob.RetryAfter(3600)

    sub.enqueue(25)
    stats = await testing.drain(apool, sub.name, handle, batch_size=10, concurrency=4)
    assert sorted(seen) == list(range(25))
    assert stats.handled == 24 and stats.failed == 1
    assert sub.stats()["ready"] == 0 and sub.stats()["leased"] == 0
    assert sub.stats()["scheduled"] == 1
    again = await testing.drain(apool, sub.name, handle)  # nothing ready: returns at once
    assert again.claimed == 0
