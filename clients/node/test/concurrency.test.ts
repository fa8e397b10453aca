import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { consume, enqueueMany } from 'outbox-client';

import { admin, cleanup, gate, newPool, sleep, subscription, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-concurrency' });
after(async () => {
  await pool.end();
  await cleanup();
});

async function leased(sub: string): Promise<{ ready: number; leased: number }> {
  const r = await admin.query('SELECT ready::int, leased::int FROM outbox.stats WHERE subscription = $1', [sub]);
  return r.rows[0];
}

test('never more than `concurrency` handlers, and nothing claimed beyond the free slots', async () => {
  const { sub, topic } = await subscription('n_cap');
  const hold = gate();
  let running = 0;
  let most = 0;
  const consumer = consume(pool, sub, async () => {
    running++;
    most = Math.max(most, running);
    await hold.promise;
    running--;
  }, { concurrency: 3, batchSize: 100, pollIntervalMs: 50 });
  await consumer.ready;
  await enqueueMany(pool, topic, Array.from({ length: 20 }, (_, n) => ({ payload: { n } })));
  await waitFor('3 running', () => running === 3);
  assert.deepEqual(await leased(sub), { ready: 17, leased: 3 });
  // More notifications and safety polls while every slot is taken: still nothing claimed ahead.
  await admin.query('SELECT outbox.enqueue($1, $2)', [topic, '{}']);
  await sleep(300);
  assert.deepEqual(await leased(sub), { ready: 18, leased: 3 });
  assert.equal(consumer.active, 3);
  hold.open();
  await waitFor('all handled', () => consumer.counters.handled === 21);
  await consumer.stop();
  assert.equal(most, 3);
});
