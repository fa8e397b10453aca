import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { ConsumerStoppedError, consume, enqueue, enqueueMany } from 'outbox-client';

import { admin, cleanup, gate, newPool, sleep, status, subscription, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-stop' });
after(async () => {
  await pool.end();
  await cleanup();
});

test('stop() with handlers in flight: they finish within the grace and are acked; no claim after', async () => {
  const { sub, topic } = await subscription('s_grace');
  const hold = gate();
  let started = 0;
  const consumer = consume(pool, sub, async () => {
    started++;
    await hold.promise;
  }, { concurrency: 2 });
  await consumer.ready;
  await enqueueMany(pool, topic, [{ payload: 1 }, { payload: 2 }, { payload: 3 }]);
  await waitFor('2 running', () => started === 2);
  const stopping = consumer.stop({ graceMs: 30_000 });
  assert.equal(consumer.state, 'stopping');
  const claims = consumer.counters.claims;
  hold.open();
  await stopping;
  assert.equal(consumer.state, 'stopped');
  assert.equal(consumer.counters.handled, 2);
  assert.equal(consumer.counters.claims, claims);
  assert.equal(started, 2);
  // The third one was never claimed, and a new one stays too.
  const late = await enqueue(pool, topic, {});
  await sleep(200);
  assert.equal((await status(sub, late))?.state, 'ready');
  const r = await admin.query('SELECT ready::int, leased::int FROM outbox.stats WHERE subscription = $1', [sub]);
  assert.deepEqual(r.rows[0], { ready: 2, leased: 0 });
});

test('a stuck handler: aborted after the grace, its delivery released at the same attempt', async () => {
  const { sub, topic } = await subscription('s_stuck');
  let reason: unknown;
  let calls = 0;
  const consumer = consume(pool, sub, async (_event, signal) => {
    calls++;
    signal.addEventListener('abort', () => (reason = signal.reason));
    await new Promise(() => {}); // ignores the signal for ever
  }, { abortGraceMs: 100 });
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('running', () => calls === 1);
  await consumer.stop({ graceMs: 100 });
  assert.ok(reason instanceof ConsumerStoppedError);
  assert.equal(consumer.counters.released, 1);
  assert.equal((await status(sub, id))?.state, 'ready');
  const r = await admin.query('SELECT attempt FROM outbox.claim($1)', [sub]);
  assert.deepEqual(r.rows, [{ attempt: 1 }]);
});

test('a handler that gives up on the abort signal is released, not failed', async () => {
  const { sub, topic } = await subscription('s_abort');
  const consumer = consume(pool, sub, async (_event, signal) => {
    await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
  });
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('running', () => consumer.active === 1);
  await consumer.stop({ graceMs: 0 });
  assert.equal(consumer.counters.released, 1);
  assert.equal(consumer.counters.failed, 0);
  const st = await status(sub, id);
  assert.equal(st?.state, 'ready');
  assert.equal(st?.last_error, null);
});
