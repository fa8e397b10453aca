#!/usr/bin/env node
// Peers of outbox that live in an application process: pg-boss and
// graphile-worker, driven through their own libraries (versions pinned in
// bench/package.json).  Called by bench/run; prints "key=value" lines.
//
//   peers.js setup                          schemas, queues
//   peers.js boss-send   CLIENTS SECONDS    send(), one job per transaction
//   peers.js boss-load   N                  add N jobs to the drain queue (insert())
//   peers.js boss-drain  CLIENTS SECONDS    fetch(batchSize 100) + complete(ids)
//   peers.js gw-drain    CLIENTS SECONDS    a graphile-worker runner, concurrency CLIENTS,
//                                           a no-op task
//
// graphile-worker's enqueue is measured with pgbench calling
// graphile_worker.add_job(), which is what its addJob() runs.
'use strict';

const PgBoss = require('pg-boss');
const { run, runMigrations } = require('graphile-worker');

const db = {
  host: process.env.PGHOST,
  port: Number(process.env.PGPORT),
  user: process.env.PGUSER || 'postgres',
  database: process.env.BENCH_DB || 'bench',
};
const connectionString =
  `postgres:///${db.database}?host=${encodeURIComponent(db.host)}&port=${db.port}&user=${db.user}`;

// The same ~200-byte document as the pgbench scripts.
function payload(i) {
  return {
    order_id: i, customer: `customer-${i}`, status: 'placed', currency: 'EUR', total: 123.45,
    lines: [{ sku: 'SKU-10001', qty: 2, price: 19.9 }, { sku: 'SKU-20002', qty: 1, price: 83.65 }],
    channel: 'web',
  };
}

const SEND_Q = 'bench_send';
const DRAIN_Q = 'bench_drain';

function boss(max) {
  const b = new PgBoss({
    ...db, max, supervise: false, schedule: false, migrate: false,
    application_name: 'bench_pgboss',
  });
  b.on('error', (e) => { console.error('pg-boss error:', e.message); });
  return b;
}

async function warm(b, n) {
  // open the pool's connections before the clock starts
  await Promise.all(Array.from({ length: n }, () => b.getDb().executeSql('SELECT 1', [])));
}

function now() { return Number(process.hrtime.bigint()) / 1e9; }

async function setup() {
  const b = new PgBoss({ ...db, supervise: false, schedule: false, max: 2 });
  b.on('error', (e) => { console.error('pg-boss error:', e.message); });
  await b.start();
  for (const q of [SEND_Q, DRAIN_Q]) {
    if (!(await b.getQueue(q))) await b.createQueue(q);
  }
  await b.stop({ graceful: false, wait: true });
  await runMigrations({ connectionString });
  console.log('setup=ok');
}

async function bossSend(clients, seconds) {
  const b = boss(clients + 1);
  await b.start();
  await warm(b, clients);
  let n = 0;
  let i = 0;
  const t0 = now();
  const end = t0 + seconds;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (now() < end) {
      await b.send(SEND_Q, payload(i++));
      n++;
    }
  }));
  const t = now() - t0;
  await b.stop({ graceful: false, wait: true });
  console.log(`events=${n}`);
  console.log(`seconds=${t.toFixed(3)}`);
  console.log(`rate=${(n / t).toFixed(1)}`);
}

async function bossLoad(total) {
  const b = boss(2);
  await b.start();
  for (let done = 0; done < total;) {
    const k = Math.min(1000, total - done);
    await b.insert(Array.from({ length: k }, (_, j) => ({ name: DRAIN_Q, data: payload(done + j) })));
    done += k;
  }
  await b.stop({ graceful: false, wait: true });
  console.log(`loaded=${total}`);
}

async function bossDrain(clients, seconds) {
  const b = boss(clients + 1);
  await b.start();
  await warm(b, clients);
  let n = 0;
  let short = 0;
  const t0 = now();
  const end = t0 + seconds;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (now() < end) {
      const jobs = await b.fetch(DRAIN_Q, { batchSize: 100 });
      if (!jobs || jobs.length === 0) { short++; continue; }
      if (jobs.length < 100) short++;
      await b.complete(DRAIN_Q, jobs.map((j) => j.id));
      n += jobs.length;
    }
  }));
  const t = now() - t0;
  await b.stop({ graceful: false, wait: true });
  console.log(`events=${n}`);
  console.log(`seconds=${t.toFixed(3)}`);
  console.log(`rate=${(n / t).toFixed(1)}`);
  console.log(`short_batches=${short}`);
}

async function gwDrain(clients, seconds) {
  let n = 0;
  const runner = await run({
    connectionString,
    concurrency: clients,
    maxPoolSize: clients + 2,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: new (require('graphile-worker').Logger)(() => () => {}),
    taskList: { bench_drain: async () => { n++; } },
  });
  // let the runner connect and pick up its first jobs, then time a window
  await new Promise((r) => setTimeout(r, 500));
  const n0 = n;
  const t0 = now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const n1 = n;
  const t = now() - t0;
  await runner.stop();
  console.log(`events=${n1 - n0}`);
  console.log(`seconds=${t.toFixed(3)}`);
  console.log(`rate=${((n1 - n0) / t).toFixed(1)}`);
}

async function main() {
  const [cmd, a, b] = process.argv.slice(2);
  switch (cmd) {
    case 'setup': return setup();
    case 'boss-send': return bossSend(Number(a), Number(b));
    case 'boss-load': return bossLoad(Number(a));
    case 'boss-drain': return bossDrain(Number(a), Number(b));
    case 'gw-drain': return gwDrain(Number(a), Number(b));
    default:
      console.error('usage: peers.js setup|boss-send|boss-load|boss-drain|gw-drain ...');
      process.exit(2);
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
