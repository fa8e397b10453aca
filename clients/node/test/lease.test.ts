import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { LeaseLostError, consume, enqueue } from 'outbox-client';

import { admin, cleanup, gate, newPool, sleep, status, subscription, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-lease' });
after(async () => {
  await pool.end();
  await cleanup();
});

test('a handler running eight times its lease keeps its one attempt (extend_lease every third)', async () => {
  // The worker returns an expired lease within lease + 2 s: 4 s of work on a 500 ms lease
  // would be handed out again (attempt 2) without the extension.
  const { sub, topic } = await subscription('l_extend', { lease: '500 milliseconds' });
  const calls: number[] = [];
  const consumer = consume(pool, sub, async (event, signal) => {
    calls.push(event.attempt);
    if (calls.length === 1) await sleep(4000);
    assert.equal(signal.aborted, false);
  }, { leaseMs: 500, concurrency: 2, pollIntervalMs: 200 });
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('handled', () => consumer.counters.handled === 1);
  await consumer.stop();
  assert.deepEqual(calls, [1]);
  assert.equal(consumer.counters.leasesLost, 0);
  const st = await status(sub, id);
  assert.deepEqual([st?.state, st?.attempts], ['done', 1]);
});

test('a handler whose lease was taken away is cancelled; its stale settlement is counted, not thrown', async () => {
  const { sub, topic } = await subscription('l_lost');
  const started = gate();
  let reason: unknown;
  const consumer = consume(pool, sub, async (_event, signal) => {
    started.open();
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    reason = signal.reason;
    throw signal.reason;
  }, { leaseMs: 600 });
  const lost: string[] = [];
  const stale: string[] = [];
  consumer.on('leaseLost', (e) => lost.push(e.eventId));
  consumer.on('staleSettlement', (e, kind) => stale.push(`${e.eventId}:${kind}`));
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await started.promise;
  // Someone else fails the delivery (as the worker does when a lease runs out): it is no longer this consumer's.
  await admin.query(`SELECT outbox.fail($1, $2, 'taken away', '1 hour')`, [sub, id]);
  await waitFor('stale settlement', () => consumer.counters.staleSettlements === 1);
  await consumer.stop();
  assert.ok(reason instanceof LeaseLostError);
  assert.deepEqual(lost, [id]);
  assert.deepEqual(stale, [`${id}:fail`]);
  assert.equal(consumer.counters.failed, 0);
  assert.equal(consumer.error, null);
  const st = await status(sub, id);
  // The consumer's fail did not touch it: still the other party's error and schedule.
  assert.deepEqual([st?.state, st?.last_error], ['scheduled', 'taken away']);
});
