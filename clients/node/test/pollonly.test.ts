import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { consume, enqueue } from 'outbox-client';

import { admin, cleanup, listenerPids, newPool, subscription, waitFor } from './helpers.js';

after(cleanup);

test('listen: false polls without a LISTEN connection and delivers', async () => {
  const app = 'outbox-node-test-poll';
  const pool = newPool({ application_name: app });
  const { sub, topic } = await subscription('p_only');
  const consumer = consume(pool, sub, () => {}, { listen: false, pollWaitMs: 500, pollSleepMs: 100, pollIntervalMs: 600_000 });
  let pollOnly = 0;
  consumer.on('pollOnly', () => pollOnly++);
  await consumer.ready;
  assert.equal(consumer.polling, true);
  for (let i = 0; i < 3; i++) {
    await enqueue(admin, topic, { i });
    await waitFor(`event ${i} handled`, () => consumer.counters.handled === i + 1);
  }
  assert.deepEqual(await listenerPids(app), []);
  await consumer.stop();
  assert.equal(pollOnly, 1);
  await pool.end();
});

test('with claim(..., wait) on the server, a poll-only claim waits server-side', async (t) => {
  const r = await admin.query(`SELECT to_regprocedure('outbox.claim(text,integer,interval,interval)') IS NOT NULL AS ok`);
  if (!r.rows[0].ok) return t.skip('this server has no claim(..., wait)');
  const app = 'outbox-node-test-poll-wait';
  const pool = newPool({ application_name: app });
  const { sub, topic } = await subscription('p_wait');
  // A 10-minute wait: stop() must cancel the waiting claim, or the test times out.
  const consumer = consume(pool, sub, () => {}, { listen: false, pollWaitMs: 600_000, pollSleepMs: 600_000 });
  await consumer.ready;
  await waitFor('a claim waiting', async () => {
    const q = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%outbox.claim(%'`, [app]);
    return q.rows[0].n === 1;
  });
  await enqueue(admin, topic, {});
  await waitFor('handled', () => consumer.counters.handled === 1);
  assert.equal(consumer.counters.claims, 1);
  await enqueue(admin, topic, {});
  await waitFor('second handled', () => consumer.counters.handled === 2);
  await waitFor('waiting again', async () => {
    const q = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE '%outbox.claim(%'`, [app]);
    return q.rows[0].n === 1;
  });
  await consumer.stop();
  const q = await admin.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'`, [app]);
  assert.equal(q.rows[0].n, 0);
  await pool.end();
});
