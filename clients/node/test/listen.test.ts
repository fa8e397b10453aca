import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { consume, enqueue, enqueueMany } from 'outbox-client';

import { admin, cleanup, listenerPids, newPool, subscription, waitFor } from './helpers.js';

after(cleanup);

// No safety poll in these tests: only a notification (or the drain after a reconnect) can deliver.
const NO_POLL = { pollIntervalMs: 600_000 };

test('a subscription whose channel needs quoting (dot and dash) is woken by LISTEN', async () => {
  const pool = newPool({ application_name: 'outbox-node-test-listen-a' });
  const { sub, topic } = await subscription('l.a-1');
  let channel = '';
  const consumer = consume(pool, sub, () => {}, NO_POLL);
  consumer.on('listening', (c) => (channel = c));
  await consumer.ready;
  await waitFor('the drain after connecting', () => consumer.counters.claims >= 1);
  assert.equal(channel, (await admin.query('SELECT outbox.channel($1) AS c', [sub])).rows[0].c);
  await enqueue(pool, topic, { n: 1 });
  await waitFor('handled by notification', () => consumer.counters.handled === 1);
  await enqueue(pool, topic, { n: 2 });
  await waitFor('handled again', () => consumer.counters.handled === 2);
  await consumer.stop();
  assert.equal(consumer.polling, false);
  await pool.end();
});

test('the LISTEN backend terminated: reconnects, re-listens, and drains what came meanwhile', async () => {
  const app = 'outbox-node-test-listen-b';
  const pool = newPool({ application_name: app });
  const { sub, topic } = await subscription('l_kill');
  const consumer = consume(pool, sub, () => {}, { ...NO_POLL, reconnectMinMs: 1000, reconnectMaxMs: 2000 });
  consumer.on('warning', () => {});
  let listens = 0;
  consumer.on('listening', () => listens++);
  await consumer.ready;
  const pids = await listenerPids(app);
  assert.equal(pids.length, 1);
  // Block the reconnect until an event was enqueued while nobody listened.
  await admin.query('SELECT pg_terminate_backend($1)', [pids[0]]);
  await enqueue(admin, topic, { while: 'down' });
  await waitFor('reconnected', () => listens === 2);
  await waitFor('the event of the outage handled', () => consumer.counters.handled === 1);
  assert.equal(consumer.counters.reconnects >= 1, true);
  // And notifications work on the new connection.
  await waitFor('drained', () => consumer.counters.claims >= 2);
  const newPids = await listenerPids(app);
  assert.equal(newPids.length, 1);
  assert.notEqual(newPids[0], pids[0]);
  await enqueue(admin, topic, { after: 'reconnect' });
  await waitFor('handled after reconnect', () => consumer.counters.handled === 2);
  await consumer.stop();
  assert.equal(consumer.error, null);
  await pool.end();
});

test('every backend of the consumer terminated mid-stream: nothing lost, the consumer goes on', async () => {
  const app = 'outbox-node-test-listen-c';
  const pool = newPool({ application_name: app });
  const { sub, topic } = await subscription('l_storm');
  const seen = new Set<string>();
  let kills = 0;
  const consumer = consume(pool, sub, async (event) => {
    seen.add(event.eventId);
    if (seen.size % 50 === 0 && kills < 3) {
      kills++;
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
    }
  }, { concurrency: 8, batchSize: 20, reconnectMinMs: 50, reconnectMaxMs: 500, pollIntervalMs: 1000 });
  consumer.on('warning', () => {});
  await consumer.ready;
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) ids.push(...(await enqueueMany(admin, topic, Array.from({ length: 100 }, (_, n) => ({ payload: { n } })))));
  await waitFor('every event handled', async () => {
    const r = await admin.query(`SELECT count(*)::int AS n FROM outbox.stats WHERE subscription = $1 AND ready + leased + scheduled = 0`, [sub]);
    return r.rows[0].n === 1 && ids.every((id) => seen.has(id));
  }, 60_000);
  await consumer.stop();
  assert.equal(kills, 3);
  assert.equal(consumer.error, null);
  await pool.end();
});
