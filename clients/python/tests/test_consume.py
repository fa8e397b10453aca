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
