import assert from 'node:assert/strict';
import { after, test } from 'node:test';

import { deadLetter, enqueueMany, retryAfter } from 'outbox-client';
import { drainOnce, makeEvent, runHandler } from 'outbox-client/testing';

import { admin, cleanup, subscription } from './helpers.js';

after(cleanup);

test('runHandler tells what the consumer would do', async () => {
  const h = (e: { payload: { v: string } }) => {
    if (e.payload.v === 'retry') return retryAfter(5000, 'later');
    if (e.payload.v === 'dead') return deadLetter('no');
    if (e.payload.v === 'throw') throw new Error('boom');
  };
  assert.deepEqual(await runHandler(h, { payload: { v: 'ok' } }), { kind: 'ack' });
  assert.deepEqual(await runHandler(h, { payload: { v: 'retry' } }), { kind: 'retry', delayMs: 5000, reason: 'later' });
  assert.deepEqual(await runHandler(h, { payload: { v: 'dead' } }), { kind: 'dead', reason: 'no' });
  const f = await runHandler(h, { payload: { v: 'throw' } });
  assert.equal(f.kind, 'fail');
  assert.equal(makeEvent({ payload: 1 }).attempt, 1);
});

test('drainOnce runs in the caller transaction, with a savepoint per event, and commits nothing', async () => {
  const { sub, topic } = await subscription('x_drain');
  await enqueueMany(admin, topic, [{ payload: { ok: true } }, { payload: { ok: false } }, { payload: { ok: true } }]);
  const c = await admin.connect();
  try {
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE seen (ok boolean) ON COMMIT DROP');
    const res = await drainOnce<{ ok: boolean }>(c, sub, async (event, _signal, tx) => {
      await tx.query('INSERT INTO seen VALUES ($1)', [event.payload.ok]);
      if (!event.payload.ok) throw new Error('not ok');
    });
    assert.deepEqual(res, { handled: 2, failed: 1, retried: 0, dead: 0, released: 0, stale: 0 });
    assert.deepEqual((await c.query('SELECT ok FROM seen')).rows, [{ ok: true }, { ok: true }]);
    await c.query('ROLLBACK');
  } finally {
    c.release();
  }
  // Rolled back: the claims never happened, all three are claimable again at attempt 1.
  const r = await admin.query('SELECT attempt FROM outbox.claim($1, 10)', [sub]);
  assert.deepEqual(r.rows, [{ attempt: 1 }, { attempt: 1 }, { attempt: 1 }]);
});

test('drainOnce fails an event whose handler violates a deferred constraint, as the consumer does', async () => {
  const { sub, topic } = await subscription('x_deferred');
  await enqueueMany(admin, topic, [{ payload: { parent: 1 } }, { payload: { parent: 99 } }]);
  const c = await admin.connect();
  try {
    await c.query('BEGIN');
    await c.query('CREATE TEMP TABLE p (id int PRIMARY KEY) ON COMMIT DROP');
    await c.query('CREATE TEMP TABLE ch (parent int REFERENCES p DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP');
    await c.query('INSERT INTO p VALUES (1)');
    const res = await drainOnce<{ parent: number }>(c, sub, async (event, _signal, tx) => {
      await tx.query('INSERT INTO ch VALUES ($1)', [event.payload.parent]);
    });
    assert.deepEqual(res, { handled: 1, failed: 1, retried: 0, dead: 0, released: 0, stale: 0 });
    assert.deepEqual((await c.query('SELECT parent FROM ch')).rows, [{ parent: 1 }]);
    await c.query('ROLLBACK');
  } finally {
    c.release();
  }
});
