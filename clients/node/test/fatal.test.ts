import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { OutboxError, PermissionDeniedError, UnknownSubscriptionError, consume, enqueue } from 'outbox-client';

import { admin, cleanup, newPool, subscription, uniq, waitFor } from './helpers.js';

const pool = newPool({ application_name: 'outbox-node-test-fatal' });
after(async () => {
  await pool.end();
  await cleanup();
});

test('an unknown subscription stops the consumer with UnknownSubscriptionError', async () => {
  let fatal: OutboxError | undefined;
  const consumer = consume(pool, uniq('nosuch'), () => assert.fail('no handler call'));
  consumer.on('fatal', (e) => (fatal = e));
  await assert.rejects(consumer.closed, UnknownSubscriptionError);
  assert.ok(fatal instanceof UnknownSubscriptionError);
  assert.equal(fatal.code, '42704');
  assert.equal(consumer.state, 'stopped');
  await assert.rejects(consumer.ready, UnknownSubscriptionError);
});

for (const listen of [true, false]) {
  test(`a role without grant_consume gets PermissionDeniedError (listen: ${listen})`, async () => {
    const { sub } = await subscription('f_grant');
    const role = uniq('nogrant');
    await admin.query(`CREATE ROLE ${role} LOGIN`);
    await admin.query(`GRANT USAGE ON SCHEMA outbox TO ${role}`);
    const rolePool = newPool({ user: role, max: 3 });
    try {
      const consumer = consume(rolePool, sub, () => assert.fail('no handler call'), { listen });
      await assert.rejects(consumer.closed, (e: unknown) => e instanceof PermissionDeniedError && e.code === '42501');
    } finally {
      await rolePool.end();
      await admin.query(`DROP OWNED BY ${role}`);
      await admin.query(`DROP ROLE ${role}`);
    }
  });
}

test('a role with grant_consume consumes; a paused subscription delivers nothing until resumed', async () => {
  const { sub, topic } = await subscription('f_paused');
  const role = uniq('consumer');
  await admin.query(`CREATE ROLE ${role} LOGIN`);
  await admin.query('SELECT outbox.grant_consume($1, $2)', [role, sub]);
  const rolePool = newPool({ user: role, max: 4 });
  try {
    await admin.query('SELECT outbox.pause($1)', [sub]);
    let calls = 0;
    const consumer = consume(rolePool, sub, () => void calls++, { pollIntervalMs: 100 });
    await consumer.ready;
    await enqueue(admin, topic, {});
    // Claims run (the notification and the drain after connect) and find nothing.
    const before = consumer.counters.claims;
    await enqueue(admin, topic, {});
    await waitFor('a claim after the enqueue', () => consumer.counters.claims > before);
    assert.equal(calls, 0);
    await admin.query('SELECT outbox.resume($1)', [sub]);
    await waitFor('both handled after resume', () => consumer.counters.handled === 2);
    await consumer.stop();
    assert.equal(consumer.error, null);
  } finally {
    await rolePool.end();
    await admin.query('SELECT outbox.revoke_consume($1, $2)', [role, sub]);
    await admin.query(`DROP OWNED BY ${role}`);
    await admin.query(`DROP ROLE ${role}`);
  }
});
