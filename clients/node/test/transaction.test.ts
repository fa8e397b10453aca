import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import pg from 'pg';

import { consume, deadLetter, enqueueMany, release } from 'outbox-client';

import { admin, cleanup, newPool, status, subscription, uniq, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-tx' });
const table = uniq('effects');
before(async () => {
  await admin.query(`CREATE TABLE ${table} (event_id bigint, attempt int)`);
});
after(async () => {
  await pool.end();
  await admin.query(`DROP TABLE ${table}`);
  await cleanup();
});

async function rows(): Promise<[string, number][]> {
  const r = await admin.query(`SELECT event_id::text AS id, attempt FROM ${table} ORDER BY event_id, attempt`);
  return r.rows.map((x) => [x.id, x.attempt]);
}

test('transaction mode: each effect commits once with its ack; a handler that writes then throws leaves no row', async () => {
  const { sub, topic } = await subscription('t_once');
  const calls: string[] = [];
  const consumer = consume<{ n: number }>(pool, sub, async (event, _signal, tx) => {
    calls.push(`${event.payload.n}:${event.attempt}`);
    await tx.query(`INSERT INTO ${table} VALUES ($1, $2)`, [event.eventId, event.attempt]);
    if (event.payload.n === 3 && event.attempt === 1) throw new Error('after writing');
  }, { mode: 'transaction', concurrency: 2, batchSize: 4 });
  await consumer.ready;
  const ids = await enqueueMany(pool, topic, Array.from({ length: 8 }, (_, n) => ({ payload: { n } })));
  await waitFor('8 handled', () => consumer.counters.handled === 8);
  await consumer.stop();
  // The failed attempt's row was rolled back to its savepoint; the attempt was counted.
  assert.deepEqual(await rows().then((r) => r.filter(([id]) => ids.includes(id))), ids.map((id, n) => [id, n === 3 ? 2 : 1]));
  assert.equal(consumer.counters.failed, 1);
  assert.deepEqual(calls.filter((c) => c.startsWith('3:')), ['3:1', '3:2']);
  assert.deepEqual((await status(sub, ids[3]!))?.attempts, 2);
});

test('transaction mode: a poison event is retried with backoff and dead-lettered, never looped', async () => {
  const { sub, topic } = await subscription('t_poison', { maxAttempts: 3 });
  let calls = 0;
  const consumer = consume(pool, sub, async (event, _signal, tx) => {
    calls++;
    await tx.query(`INSERT INTO ${table} VALUES ($1, $2)`, [event.eventId, event.attempt]);
    await tx.query('SELECT 1/0'); // the transaction is in error: rolled back to the savepoint
  }, { mode: 'transaction' });
  consumer.on('warning', (m) => assert.fail(m));
  await consumer.ready;
  const [id] = await enqueueMany(pool, topic, [{ payload: {} }]);
  await waitFor('dead', () => consumer.counters.dead === 1);
  await consumer.stop();
  assert.equal(calls, 3);
  assert.deepEqual(await rows().then((r) => r.filter(([e]) => e === id)), []);
  const st = await status(sub, id!);
  assert.deepEqual([st?.state, st?.attempts, st?.last_error], ['dead', 3, 'division by zero']);
});

test('transaction mode: deadLetter and release outcomes settle in the transaction', async () => {
  const { sub, topic } = await subscription('t_outcomes');
  const seen: string[] = [];
  const consumer = consume<{ what: string }>(pool, sub, (event) => {
    seen.push(`${event.payload.what}:${event.attempt}`);
    if (event.payload.what === 'dead') return deadLetter('never');
    if (event.payload.what === 'release' && seen.filter((s) => s.startsWith('release')).length === 1) return release();
  }, { mode: 'transaction' });
  await consumer.ready;
  const [d] = await enqueueMany(pool, topic, [{ payload: { what: 'dead' } }, { payload: { what: 'release' } }]);
  await waitFor('settled', () => consumer.counters.dead === 1 && consumer.counters.handled === 1);
  await consumer.stop();
  assert.equal(consumer.counters.released, 1);
  assert.deepEqual(seen.filter((s) => s.startsWith('release')), ['release:1', 'release:1']);
  assert.equal((await status(sub, d!))?.last_error, 'never');
});

test('transaction mode: stop with a stuck handler rolls back, the delivery keeps its attempt', async () => {
  const { sub, topic } = await subscription('t_stop');
  let calls = 0;
  const consumer = consume(pool, sub, async (event, _signal, tx) => {
    calls++;
    await tx.query(`INSERT INTO ${table} VALUES ($1, $2)`, [event.eventId, event.attempt]);
    await new Promise(() => {});
  }, { mode: 'transaction', abortGraceMs: 50 });
  await consumer.ready;
  const [id] = await enqueueMany(pool, topic, [{ payload: {} }]);
  await waitFor('running', () => calls === 1);
  await consumer.stop({ graceMs: 50 });
  assert.equal(consumer.counters.released, 1);
  await waitFor('rolled back', async () => (await status(sub, id!))?.state === 'ready');
  assert.deepEqual(await rows().then((r) => r.filter(([e]) => e === id)), []);
  const r = await admin.query('SELECT attempt FROM outbox.claim($1)', [sub]);
  assert.deepEqual(r.rows, [{ attempt: 1 }]);
});

test('transaction mode: a connection that breaks mid-transaction, and errors after, never crash the process', async () => {
  const { sub, topic } = await subscription('t_broken');
  let first = true;
  const attempts: number[] = [];
  const warnings: string[] = [];
  const consumer = consume(pool, sub, async (event, _signal, tx) => {
    attempts.push(event.attempt);
    if (!first) return;
    first = false;
    const client = tx as pg.PoolClient;
    const { rows: [me] } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    await admin.query('SELECT pg_terminate_backend($1)', [me!.pid]);
    await waitFor('the connection to break', () => !(client as unknown as { _queryable: boolean })._queryable);
    // A broken socket can report one more error later (a server crash
    // gives "terminated", then ECONNRESET); here it comes while the
    // consumer rolls back.  An emitter without an 'error' listener at that
    // moment would throw it out of the process.
    const query = client.query.bind(client) as (...a: unknown[]) => unknown;
    (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...a: unknown[]) => {
      if (a[0] === 'ROLLBACK') process.nextTick(() => client.emit('error', new Error('ECONNRESET, late')));
      return query(...a);
    };
  }, { mode: 'transaction' });
  consumer.on('warning', (m) => warnings.push(m));
  await consumer.ready;
  const [id] = await enqueueMany(pool, topic, [{ payload: {} }]);
  // Rolled back, so claimable again at once and at the same attempt: the
  // consumer retries after a short backoff (no notification says so).
  await waitFor('handled after the broken transaction', () => consumer.counters.handled === 1, 5_000);
  await consumer.stop();
  assert.ok(warnings.some((w) => w.includes('rolled back')), warnings.join('\n'));
  assert.deepEqual(attempts, [1, 1]);
  assert.equal((await status(sub, id!))?.state, 'done');
});

test('transaction mode: a deferred constraint a handler violates fails that event, not the batch, and never loops', async () => {
  const { sub, topic } = await subscription('t_deferred', { maxAttempts: 3 });
  const parent = uniq('parent');
  const child = uniq('child');
  await admin.query(`CREATE TABLE ${parent} (id int PRIMARY KEY)`);
  await admin.query(`CREATE TABLE ${child} (event_id bigint, parent int REFERENCES ${parent} DEFERRABLE INITIALLY DEFERRED)`);
  await admin.query(`INSERT INTO ${parent} VALUES (1)`);
  try {
    const consumer = consume<{ parent: number }>(pool, sub, async (event, _signal, tx) => {
      // Deferral still works inside one handler: the row comes before its parent.
      await tx.query(`INSERT INTO ${child} VALUES ($1, $2)`, [event.eventId, event.payload.parent]);
      if (event.payload.parent === 2) await tx.query(`INSERT INTO ${parent} VALUES (2)`);
    }, { mode: 'transaction', batchSize: 10 });
    await consumer.ready;
    const ids = await enqueueMany(pool, topic, [1, 99, 2, 1].map((p) => ({ payload: { parent: p } })));
    await waitFor('3 handled and 1 dead', () => consumer.counters.handled === 3 && consumer.counters.dead === 1, 15_000);
    await consumer.stop();
    const r = await admin.query(`SELECT event_id::text AS id FROM ${child} ORDER BY event_id`);
    assert.deepEqual(r.rows.map((x) => x.id), [ids[0], ids[2], ids[3]]);
    const st = await status(sub, ids[1]!);
    assert.equal(st?.state, 'dead');
    assert.equal(st?.attempts, 3);
    assert.match(st?.last_error ?? '', /foreign key/);
  } finally {
    await admin.query(`DROP TABLE ${child}, ${parent}`);
  }
});
