import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { type OutboxEvent, consume, deadLetter, enqueue, enqueueMany, release, retryAfter } from 'outbox-client';

import { admin, cleanup, newPool, status, subscription, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-consume' });
after(async () => {
  await pool.end();
  await cleanup();
});

test('ack mode: every event handled once, with its fields; counters and lag reported', async () => {
  const { sub, topic } = await subscription('c_basic');
  const seen = new Map<string, OutboxEvent<{ n: number }>>();
  let lags = 0;
  const consumer = consume<{ n: number }>(pool, sub, async (event, signal) => {
    assert.equal(signal.aborted, false);
    assert.ok(!seen.has(event.eventId), 'handled twice');
    seen.set(event.eventId, event);
  }, { concurrency: 4 });
  consumer.on('lag', () => lags++);
  await consumer.ready;
  const ids = await enqueueMany(pool, topic, Array.from({ length: 50 }, (_, n) => ({ payload: { n }, key: `k${n % 3}`, headers: { n } })));
  await waitFor('50 acked', () => consumer.counters.handled === 50);
  await consumer.stop();
  assert.equal(seen.size, 50);
  const e = seen.get(ids[7]!)!;
  assert.deepEqual([e.topic, e.key, e.payload, e.headers, e.attempt], [topic, 'k1', { n: 7 }, { n: 7 }, 1]);
  assert.ok(e.enqueuedAt instanceof Date);
  assert.equal(lags, 50);
  assert.deepEqual((await status(sub, ids[49]!))?.state, 'done');
  assert.equal(consumer.counters.claimed, 50);
  assert.equal(consumer.state, 'stopped');
});

test('a throwing handler fails with the attempt fence and is retried with backoff until it succeeds', async () => {
  const { sub, topic } = await subscription('c_throw');
  const attempts: number[] = [];
  const consumer = consume(pool, sub, (event) => {
    attempts.push(event.attempt);
    if (event.attempt < 3) throw new Error(`boom ${event.attempt}`);
  });
  const failures: string[] = [];
  consumer.on('failed', (_e, err, state) => failures.push(`${(err as Error).message}:${state}`));
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('handled', () => consumer.counters.handled === 1);
  await consumer.stop();
  assert.deepEqual(attempts, [1, 2, 3]);
  assert.deepEqual(failures, ['boom 1:scheduled', 'boom 2:scheduled']);
  const st = await status(sub, id);
  assert.equal(st?.state, 'done');
  assert.equal(st?.attempts, 3);
  assert.equal(consumer.counters.failed, 2);
});

test('retryAfter(ms): scheduled with its reason, the next attempt comes after', async () => {
  const { sub, topic } = await subscription('c_retry');
  const attempts: number[] = [];
  const consumer = consume(pool, sub, (event) => {
    attempts.push(event.attempt);
    if (event.attempt === 1) return retryAfter(300, 'rate limited');
  });
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('retried', () => consumer.counters.retried === 1);
  const st = await status(sub, id);
  // Still waiting: the retry is not due at once.
  assert.equal(st?.state, 'scheduled');
  assert.equal(st?.last_error, 'rate limited');
  await waitFor('handled', () => consumer.counters.handled === 1);
  await consumer.stop();
  assert.deepEqual(attempts, [1, 2]);
});

test('deadLetter(reason), returned or thrown: dead at once with the reason, whatever attempts are left', async () => {
  const { sub, topic } = await subscription('c_dead');
  const consumer = consume<{ how: string }>(pool, sub, (event) => {
    if (event.payload.how === 'return') return deadLetter('bad payload');
    throw deadLetter('worse payload');
  });
  await consumer.ready;
  const [a, b] = await enqueueMany(pool, topic, [{ payload: { how: 'return' } }, { payload: { how: 'throw' } }]);
  await waitFor('2 dead', () => consumer.counters.dead === 2);
  await consumer.stop();
  const r = await admin.query('SELECT event_id, attempts, last_error FROM outbox.dead_letters WHERE subscription = $1 ORDER BY event_id', [sub]);
  assert.deepEqual(r.rows.map((x) => [String(x.event_id), x.attempts, x.last_error]), [
    [a, 1, 'bad payload'],
    [b, 1, 'worse payload'],
  ]);
  assert.equal(consumer.counters.failed, 0);
});

test('a handler that always throws is dead-lettered exactly once at max_attempts', async () => {
  const { sub, topic } = await subscription('c_maxatt', { maxAttempts: 3 });
  let badCalls = 0;
  const consumer = consume<{ bad: boolean }>(pool, sub, (event) => {
    if (!event.payload.bad) return;
    badCalls++;
    throw new Error('always');
  });
  const dead: string[] = [];
  consumer.on('dead', (e) => dead.push(e.eventId));
  await consumer.ready;
  const id = await enqueue(pool, topic, { bad: true });
  await waitFor('dead', () => consumer.counters.dead === 1);
  // A later event goes through; the dead one does not come back.
  await enqueue(pool, topic, { bad: false });
  await waitFor('good one handled', () => consumer.counters.handled === 1);
  await consumer.stop();
  assert.deepEqual(dead, [id]);
  assert.equal(badCalls, 3);
  assert.equal(consumer.counters.failed, 2);
  const r = await admin.query('SELECT attempts, last_error FROM outbox.dead_letters WHERE subscription = $1', [sub]);
  assert.deepEqual(r.rows, [{ attempts: 3, last_error: 'always' }]);
});

test('release(): given back without using an attempt', async () => {
  const { sub, topic } = await subscription('c_release');
  const attempts: number[] = [];
  const consumer = consume(pool, sub, (event) => {
    attempts.push(event.attempt);
    if (attempts.length < 3) return release(attempts.length === 1 ? undefined : 50);
  });
  await consumer.ready;
  const id = await enqueue(pool, topic, {});
  await waitFor('handled', () => consumer.counters.handled === 1);
  await consumer.stop();
  assert.deepEqual(attempts, [1, 1, 1]);
  assert.equal(consumer.counters.released, 2);
  assert.equal((await status(sub, id))?.state, 'done');
});
