#!/usr/bin/env node
// End to end through the client libraries (issue 13): the official
// TypeScript client (clients/node, built) against pg-boss work() and
// graphile-worker, each with a no-op handler, on one database.  Called by
// bench/clients.sh; prints "key=value" lines.
//
//   clients.js setup
//   clients.js drain   SYSTEM N CONCURRENCY   enqueue N jobs in batches of
//                      100 (each system's own batch call), then time its
//                      consumer handling and settling all of them
//   clients.js latency SYSTEM RATE SECONDS CONCURRENCY
//                      a producer process enqueues RATE jobs/s, one per
//                      transaction, while the consumer runs in this one;
//                      commit -> handler p50/p99
//
// SYSTEM: outbox | pgboss | graphile.  Each consumer runs as its README
// recommends for speed: outbox-client with concurrency and batch; pg-boss
// work() with batches of 100 and its shortest polling interval (0.5 s),
// registered CONCURRENCY times (each work() is one polling loop that takes
// a batch at a time, and waits for the interval after a batch); graphile-
// worker with its concurrency (it LISTENs for new jobs).
'use strict';

const path = require('path');
const { fork } = require('child_process');
const pg = require('pg');
const PgBoss = require('pg-boss');
const { run, runMigrations, Logger } = require('graphile-worker');
const outbox = require(path.join(__dirname, '..', 'clients', 'node', 'dist', 'cjs', 'index.js'));

const db = {
  host: process.env.PGHOST,
  port: Number(process.env.PGPORT),
  user: process.env.PGUSER || 'postgres',
  database: process.env.BENCH_DB || 'bench',
};
const connectionString =
  `postgres:///${db.database}?host=${encodeURIComponent(db.host)}&port=${db.port}&user=${db.user}`;
const SUB = 'cb';
const QUEUE = 'bench_clients';
const TASK = 'bench_clients';
const quiet = new Logger(() => () => {});

const hr = () => process.hrtime.bigint();
const secs = (ns) => Number(ns) / 1e9;

// the ~200-byte document of the other benchmarks
function payload(seq) {
  return {
    seq, order_id: seq, customer: `customer-${seq}`, status: 'placed', currency: 'EUR', total: 123.45,
    lines: [{ sku: 'SKU-10001', qty: 2, price: 19.9 }, { sku: 'SKU-20002', qty: 1, price: 83.65 }],
    channel: 'web',
  };
}

function newPool(max) {
  const pool = new pg.Pool({ ...db, max, application_name: 'bench_clients' });
  pool.on('error', () => {});
  return pool;
}

function newBoss(max) {
  const b = new PgBoss({ ...db, max, supervise: false, schedule: false, migrate: false,
    application_name: 'bench_clients_pgboss' });
  b.on('error', (e) => { console.error('pg-boss error:', e.message); });
  return b;
}

async function setup() {
  const pool = newPool(1);
  await pool.query(`SELECT outbox.subscribe('${SUB}', ARRAY['${SUB}'])`);
  await pool.end();
  const b = new PgBoss({ ...db, supervise: false, schedule: false, max: 2 });
  b.on('error', (e) => { console.error('pg-boss error:', e.message); });
  await b.start();
  if (!(await b.getQueue(QUEUE))) await b.createQueue(QUEUE);
  await b.stop({ graceful: false, wait: true });
  await runMigrations({ connectionString, logger: quiet });
  console.log('setup=ok');
}

// Enqueue N jobs in batches of 100, each batch one transaction.
async function load(system, n) {
  const t0 = hr();
  if (system === 'pgboss') {
    const b = newBoss(2);
    await b.start();
    for (let i = 0; i < n; i += 100) {
      const k = Math.min(100, n - i);
      await b.insert(Array.from({ length: k }, (_, j) => ({ name: QUEUE, data: payload(i + j) })));
    }
    await b.stop({ graceful: false, wait: true });
  } else {
    const pool = newPool(1);
    for (let i = 0; i < n; i += 100) {
      const k = Math.min(100, n - i);
      const docs = Array.from({ length: k }, (_, j) => payload(i + j));
      if (system === 'outbox') {
        await outbox.enqueueMany(pool, SUB, docs.map((p) => ({ payload: p })));
      } else {
        await pool.query(
          `SELECT graphile_worker.add_jobs(array_agg(ROW('${TASK}', p::json, NULL, NULL, NULL, NULL, NULL, NULL)::graphile_worker.job_spec))
             FROM jsonb_array_elements($1::jsonb) p`, [JSON.stringify(docs)]);
      }
    }
    await pool.end();
  }
  return secs(hr() - t0);
}

// Start a consumer of SYSTEM calling onJob(payload) for each job; returns
// an async stop function.
async function startConsumer(system, concurrency, onJob) {
  if (system === 'outbox') {
    const pool = newPool(concurrency + 4);
    const c = outbox.consume(pool, SUB, async (ev) => { onJob(ev.payload); },
      { concurrency, batchSize: 100 });
    await c.ready;
    return async () => { await c.stop({ graceMs: 5000 }); await pool.end(); };
  }
  if (system === 'pgboss') {
    const workers = concurrency;
    const b = newBoss(workers + 4);
    await b.start();
    for (let w = 0; w < workers; w++) {
      await b.work(QUEUE, { batchSize: 100, pollingIntervalSeconds: 0.5 },
        async (jobs) => { for (const j of jobs) onJob(j.data); });
    }
    return async () => { await b.stop({ graceful: true, wait: true, timeout: 5000 }); };
  }
  const runner = await run({
    connectionString, concurrency, maxPoolSize: concurrency + 2, noHandleSignals: true,
    pollInterval: 1000, logger: quiet,
    taskList: { [TASK]: async (p) => { onJob(p); } },
  });
  return async () => { await runner.stop(); };
}

async function drain(system, n, concurrency) {
  const loadSeconds = await load(system, n);
  let handled = 0;
  let done;
  const all = new Promise((r) => { done = r; });
  const t0 = hr();
  const stop = await startConsumer(system, concurrency, () => { if (++handled === n) done(); });
  await all;
  const t = secs(hr() - t0);
  await stop();
  console.log(`jobs=${n}`);
  console.log(`enqueue_seconds=${loadSeconds.toFixed(3)}`);
  console.log(`enqueue_rate=${(n / loadSeconds).toFixed(1)}`);
  console.log(`seconds=${t.toFixed(3)}`);
  console.log(`rate=${(n / t).toFixed(1)}`);
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

// The producer, in a process of its own as an application would be: one job
// per transaction, evenly spaced; on 'go' it starts, and it sends back when
// each commit returned.
async function produce(system, rate, total) {
  await new Promise((r) => process.once('message', r));
  const pool = newPool(2);
  const b = system === 'pgboss' ? newBoss(2) : null;
  if (b) await b.start();
  const committed = [];
  const start = hr();
  for (let seq = 0; seq < total; seq++) {
    const due = start + BigInt(Math.round((seq / rate) * 1e9));
    const wait = Number(due - hr()) / 1e6;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (system === 'outbox') await outbox.enqueue(pool, SUB, payload(seq));
    else if (system === 'pgboss') await b.send(QUEUE, payload(seq));
    else await pool.query('SELECT graphile_worker.add_job($1, $2::json)', [TASK, JSON.stringify(payload(seq))]);
    committed.push(String(hr()));
  }
  const produced = secs(hr() - start);
  if (b) await b.stop({ graceful: false, wait: true });
  await pool.end();
  await new Promise((r) => process.send({ committed, produced }, r));
}

// Commit -> handler latency.  process.hrtime is CLOCK_MONOTONIC on Linux, one
// clock for every process of the machine, so the producer's commit times and
// the consumer's handler times compare directly.
async function latency(system, rate, seconds, concurrency) {
  const total = Math.round(rate * seconds);
  const seenAt = new Map();	// seq -> hrtime when its handler ran
  const stop = await startConsumer(system, concurrency, (p) => {
    if (!seenAt.has(p.seq)) seenAt.set(p.seq, hr());
  });
  const child = fork(__filename, ['produce', system, String(rate), String(total)]);
  const result = new Promise((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`producer exited with ${code}`)));
  });
  child.send('go');
  const { committed, produced } = await result;
  // let the last ones arrive (pg-boss polls every 0.5 s)
  const deadline = hr() + 10n * 1000000000n;
  while (seenAt.size < total && hr() < deadline) await new Promise((r) => setTimeout(r, 20));
  await stop();
  const lat = [];
  committed.forEach((c, seq) => {
    const t = seenAt.get(seq);
    if (t !== undefined) lat.push(Math.max(0, secs(t - BigInt(c)) * 1000));
  });
  lat.sort((x, y) => x - y);
  console.log(`jobs=${total}`);
  console.log(`handled=${seenAt.size}`);
  console.log(`produce_rate=${(total / produced).toFixed(1)}`);
  console.log(`p50_ms=${pct(lat, 0.5).toFixed(3)}`);
  console.log(`p99_ms=${pct(lat, 0.99).toFixed(3)}`);
  console.log(`max_ms=${(lat.length ? lat[lat.length - 1] : NaN).toFixed(3)}`);
}

async function main() {
  const [cmd, system, a, b, c] = process.argv.slice(2);
  switch (cmd) {
    case 'setup': return setup();
    case 'drain': return drain(system, Number(a), Number(b));
    case 'latency': return latency(system, Number(a), Number(b), Number(c));
    case 'produce': return produce(system, Number(a), Number(b));
    default:
      console.error('usage: clients.js setup | drain SYSTEM N CONCURRENCY | latency SYSTEM RATE SECONDS CONCURRENCY');
      process.exit(2);
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
