import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

import * as esm from 'outbox-client';

test('the CommonJS build exports the same API as the ESM build', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('outbox-client') as typeof esm;
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.equal(typeof cjs.consume, 'function');
  assert.ok(cjs.retryAfter(5) instanceof cjs.Outcome);
  assert.ok(new cjs.UnknownSubscriptionError('x') instanceof cjs.OutboxError);
  const testing = require('outbox-client/testing');
  assert.equal(typeof testing.drainOnce, 'function');
  assert.ok(require.resolve('outbox-client').includes('/dist/cjs/'));
});
