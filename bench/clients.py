"""End to end through the Python client (issue 13): outbox-client
(clients/python, async) against procrastinate, each with a no-op handler, on
one database.  Called by bench/clients.sh; prints "key=value" lines.

    clients.py setup
    clients.py drain   SYSTEM N CONCURRENCY       enqueue N jobs in batches of
                       100 (each system's own batch call), then time its
                       consumer handling and settling all of them
    clients.py latency SYSTEM RATE SECONDS CONCURRENCY
                       a producer process enqueues RATE jobs/s, one per
                       transaction, while the consumer runs in this one;
                       commit -> handler p50/p99

SYSTEM: outbox | procrastinate.  outbox-client runs with concurrency and
batch; procrastinate's worker with the same concurrency, LISTEN/NOTIFY on.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from typing import Any, Callable

import psycopg
import psycopg_pool
import procrastinate

import outbox_client as ob

SUB = "cb_py"
QUEUE = "bench_clients"
CONNINFO = "dbname={} host={} port={} user={}".format(
    os.environ.get("BENCH_DB", "bench"), os.environ["PGHOST"], os.environ["PGPORT"],
    os.environ.get("PGUSER", "postgres"))

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=CONNINFO))
on_job: Callable[[dict[str, Any]], None] = lambda doc: None


@app.task(name="bench_noop", queue=QUEUE)
async def noop(doc: dict[str, Any]) -> None:
    on_job(doc)


def payload(seq: int) -> dict[str, Any]:
    """The ~200-byte document of the other benchmarks."""
    return {"seq": seq, "order_id": seq, "customer": f"customer-{seq}", "status": "placed",
            "currency": "EUR", "total": 123.45,
            "lines": [{"sku": "SKU-10001", "qty": 2, "price": 19.9},
                      {"sku": "SKU-20002", "qty": 1, "price": 83.65}],
            "channel": "web"}


async def setup() -> None:
    async with await psycopg.AsyncConnection.connect(CONNINFO, autocommit=True) as conn:
        await conn.execute("SELECT outbox.subscribe(%s, ARRAY[%s])", (SUB, SUB))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
    print("setup=ok")


async def load(system: str, n: int) -> float:
    t0 = time.perf_counter()
    if system == "outbox":
        async with await psycopg.AsyncConnection.connect(CONNINFO, autocommit=True) as conn:
            for i in range(0, n, 100):
                await ob.enqueue_many(conn, SUB, [payload(j) for j in range(i, min(n, i + 100))])
    else:
        async with app.open_async():
            for i in range(0, n, 100):
                await noop.batch_defer_async(*[{"doc": payload(j)}
                                               for j in range(i, min(n, i + 100))])
    return time.perf_counter() - t0


async def drain(system: str, n: int, concurrency: int) -> None:
    global on_job
    load_seconds = await load(system, n)
    handled = 0
    done = asyncio.Event()

    def count(doc: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            done.set()

    on_job = count
    t0 = time.perf_counter()
    if system == "outbox":
        async with psycopg_pool.AsyncConnectionPool(CONNINFO, min_size=concurrency + 2,
                                                    max_size=concurrency + 4, open=False) as pool:
            async def handler(ev: ob.Event) -> None:
                count(ev.payload)

            c = ob.consume(pool, SUB, handler, concurrency=concurrency, batch_size=100)
            await done.wait()
            t = time.perf_counter() - t0
            await c.stop()
    else:
        async with app.open_async():
            # wait=False: the worker stops once the queue is empty
            await app.run_worker_async(queues=[QUEUE], concurrency=concurrency, wait=False,
                                       install_signal_handlers=False)
        t = time.perf_counter() - t0
    print(f"jobs={n}")
    print(f"enqueue_seconds={load_seconds:.3f}")
    print(f"enqueue_rate={n / load_seconds:.1f}")
    print(f"seconds={t:.3f}")
    print(f"rate={n / t:.1f}")
    print(f"handled={handled}")


def pct(v: list[float], p: float) -> float:
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")


def produce(system: str, rate: float, total: int, go: Any, out: Any) -> None:
    """The producer, in a process of its own as an application would be: one job
    per transaction, evenly spaced; sends back when each commit returned."""
    async def run() -> None:
        committed: dict[int, float] = {}
        go.wait()
        async with await psycopg.AsyncConnection.connect(CONNINFO, autocommit=True) as conn:
            async with app.open_async():
                start = time.monotonic()
                for seq in range(total):
                    delay = start + seq / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if system == "outbox":
                        await ob.enqueue(conn, SUB, payload(seq))
                    else:
                        await noop.defer_async(doc=payload(seq))
                    committed[seq] = time.monotonic()
                produced = time.monotonic() - start
        out.put((committed, produced))

    asyncio.run(run())


async def latency(system: str, rate: float, seconds: float, concurrency: int) -> None:
    """Commit -> handler latency.  time.monotonic() is CLOCK_MONOTONIC, one
    clock for every process of the machine, so the producer's commit times and
    the consumer's handler times compare directly."""
    global on_job
    total = round(rate * seconds)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    producer = ctx.Process(target=produce, args=(system, rate, total, go, out))
    producer.start()
    seen_at: dict[int, float] = {}

    def seen(doc: dict[str, Any]) -> None:
        seen_at.setdefault(doc["seq"], time.monotonic())

    on_job = seen
    async with psycopg_pool.AsyncConnectionPool(CONNINFO, min_size=concurrency + 2,
                                                max_size=concurrency + 4, open=False) as pool:
        async with app.open_async():
            if system == "outbox":
                async def handler(ev: ob.Event) -> None:
                    seen(ev.payload)

                c = ob.consume(pool, SUB, handler, concurrency=concurrency, batch_size=100)
                await c.ready()
            else:
                worker = asyncio.create_task(app.run_worker_async(
                    queues=[QUEUE], concurrency=concurrency, wait=True,
                    install_signal_handlers=False))
                await asyncio.sleep(1)
            go.set()
            committed, produced = await asyncio.get_running_loop().run_in_executor(None, out.get)
            producer.join()
            end = time.monotonic() + 10
            while len(seen_at) < total and time.monotonic() < end:
                await asyncio.sleep(0.02)
            if system == "outbox":
                await c.stop()
            else:
                worker.cancel()
                try:
                    await worker
                except (asyncio.CancelledError, Exception):
                    pass
    lat = sorted(max(0.0, (seen_at[s] - t) * 1000) for s, t in committed.items()
                 if s in seen_at)
    print(f"jobs={total}")
    print(f"handled={len(seen_at)}")
    print(f"produce_rate={total / produced:.1f}")
    print(f"p50_ms={pct(lat, 0.5):.3f}")
    print(f"p99_ms={pct(lat, 0.99):.3f}")
    print(f"max_ms={(lat[-1] if lat else float('nan')):.3f}")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        asyncio.run(setup())
    elif cmd == "drain":
        asyncio.run(drain(args[0], int(args[1]), int(args[2])))
    elif cmd == "latency":
        asyncio.run(latency(args[0], float(args[1]), float(args[2]), int(args[3])))
    else:
        sys.exit("usage: clients.py setup | drain SYSTEM N CONCURRENCY | "
                 "latency SYSTEM RATE SECONDS CONCURRENCY")


if __name__ == "__main__":
    main()
