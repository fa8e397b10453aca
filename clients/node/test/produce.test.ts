import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { InvalidArgumentError, PermissionDeniedError, enqueue, enqueueMany } from 'outbox-client';

import { admin, cleanup, newPool, subscription, uniq } from './helpers.js';

const name = 'produce';
after(cleanup);

test('enqueue returns the id; payloads of any JSON shape arrive as given', async () => {
  const { sub, topic } = await subscription(name);
  const payloads = [{ a: 1, nested: { b: [1, 2] } }, [1, 'two', null], 'a string', 42, null];
  const ids: string[] = [];
  for (const p of payloads) ids.push(await enqueue(admin, topic, p, { key: 'k1', headers: { traceparent: 'x' } }));
  assert.equal(new Set(ids).size, payloads.length);
  const r = await admin.query('SELECT event_id, key, payload, headers FROM outbox.claim($1, 10) ORDER BY event_id', [sub]);
  assert.deepEqual(
    r.rows.map((x) => x.payload),
    payloads,
  );
  assert.deepEqual(r.rows.map((x) => String(x.event_id)), ids);
  assert.ok(r.rows.every((x) => x.key === 'k1' && x.headers.traceparent === 'x'));
  await admin.query('SELECT outbox.ack($1, $2::bigint[])', [sub, ids]);
});

test('enqueue runs in the caller transaction: rolled back, nobody gets it', async () => {
  const { sub, topic } = await subscription(name);
  const c = await admin.connect();
  try {
    await c.query('BEGIN');
    await enqueue(c, topic, { gone: true });
    await c.query('ROLLBACK');
    await c.query('BEGIN');
    const kept = await enqueue(c, topic, { kept: true });
    await c.query('COMMIT');
    const r = await admin.query('SELECT event_id, payload FROM outbox.claim($1, 10)', [sub]);
    assert.deepEqual(r.rows.map((x) => [String(x.event_id), x.payload]), [[kept, { kept: true }]]);
    await admin.query('SELECT outbox.ack($1, $2::bigint)', [sub, kept]);
  } finally {
    c.release();
  }
});

test('enqueueMany: ids in order, keys/headers/dedup keys per item, empty list', async () => {
  const { sub, topic } = await subscription(name);
  assert.deepEqual(await enqueueMany(admin, topic, []), []);
  const ids = await enqueueMany(admin, topic, [
    { payload: { n: 1 }, key: 'a', dedupKey: uniq('d') },
    { payload: [2], headers: { h: 2 } },
    { payload: 'three' },
  ]);
  assert.equal(ids.length, 3);
  const r = await admin.query('SELECT event_id, key, payload, headers FROM outbox.claim($1, 10) ORDER BY event_id', [sub]);
  assert.deepEqual(r.rows.map((x) => String(x.event_id)), ids);
  assert.deepEqual(r.rows.map((x) => [x.key, x.payload, x.headers]), [
    ['a', { n: 1 }, null],
    [null, [2], { h: 2 }],
    [null, 'three', null],
  ]);
  await admin.query('SELECT outbox.ack($1, $2::bigint[])', [sub, ids]);
});

test('dedupKey: the second enqueue returns the first id', async () => {
  const { topic } = await subscription(name);
  const key = uniq('dedup');
  const a = await enqueue(admin, topic, { first: true }, { dedupKey: key });
  const b = await enqueue(admin, topic, { first: false }, { dedupKey: key });
  assert.equal(a, b);
});

test('typed errors: empty topic is InvalidArgumentError, a role without grant_produce PermissionDeniedError', async () => {
  await assert.rejects(enqueue(admin, '', {}), InvalidArgumentError);
  await assert.rejects(enqueue(admin, 't', undefined), InvalidArgumentError);
  const role = uniq('noprod');
  await admin.query(`CREATE ROLE ${role} LOGIN`);
  const pool = newPool({ user: role, max: 1 });
  try {
    await assert.rejects(enqueue(pool, 'x', {}), (e: unknown) => e instanceof PermissionDeniedError && e.code === '42501');
  } finally {
    await pool.end();
    await admin.query(`DROP ROLE ${role}`);
  }
});
