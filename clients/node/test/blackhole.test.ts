import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { consume, enqueue } from 'outbox-client';

import { admin, cleanup, listenerPids, newPool, subscription, waitFor } from './helpers.js';
import { BlackholeProxy } from './proxy.js';

after(cleanup);

test('a LISTEN socket that silently stops forwarding is detected by the heartbeat, and the consumer resumes', async () => {
  const proxy = new BlackholeProxy(`${process.env.PGHOST}/.s.PGSQL.${process.env.PGPORT}`);
  const port = await proxy.start();
  const app = 'outbox-node-test-blackhole';
  const pool = newPool({ application_name: app, host: '127.0.0.1', port });
  const { sub, topic } = await subscription('b_hole');
  const consumer = consume(pool, sub, () => {}, { heartbeatMs: 300, pollIntervalMs: 600_000, reconnectMinMs: 50, reconnectMaxMs: 200 });
  consumer.on('warning', () => {});
  let listens = 0;
  consumer.on('listening', () => listens++);
  try {
    await consumer.ready;
    const [pid] = await listenerPids(app);
    assert.ok(pid !== undefined);
    assert.ok(proxy.blackhole(pid));
    // The server still sees a healthy, listening session; only the heartbeat can tell.
    await waitFor('listening again on a new connection', () => listens === 2);
    await enqueue(admin, topic, {});
    await waitFor('handled through the new connection', () => consumer.counters.handled === 1);
    assert.ok(consumer.counters.reconnects >= 1);
    await consumer.stop();
  } finally {
    await proxy.close();
    await pool.end();
  }
});
