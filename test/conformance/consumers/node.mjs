// Conformance consumer for clients/node (outbox-client, the built ESM package).
//
// The protocol (command line, payload-driven handler, JSON lines on stdout) is
// test/conformance/README.md. SIGTERM is the library's own graceful stop
// (handleSignals: true). OUTBOX_NODE_CLIENT names the clients/node directory
// (built: dist/, node_modules/ with pg); default: ../../../clients/node.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const clientDir = process.env.OUTBOX_NODE_CLIENT || path.resolve(here, '../../../clients/node');
const require = createRequire(path.join(clientDir, 'package.json'));
const pg = require('pg');
const ob = await import(pathToFileURL(path.join(clientDir, 'dist/esm/index.js')).href);

function out(ev, fields = {}) {
  process.stdout.write(JSON.stringify({ ev, ...fields, t: Date.now() / 1000 }) + '\n');
}

const { values: a } = parseArgs({
  options: {
    dsn: { type: 'string' },
    subscription: { type: 'string' },
    concurrency: { type: 'string', default: '10' },
    mode: { type: 'string', default: 'ack' },
    batch: { type: 'string' },
    lease: { type: 'string', default: '30' },
    grace: { type: 'string', default: '25' },
    'cancel-grace': { type: 'string', default: '2' },
    'poll-interval': { type: 'string', default: '30' },
    heartbeat: { type: 'string', default: '10' },
    'poll-wait': { type: 'string', default: '5' },
    listen: { type: 'string', default: 'auto' },
    pooler: { type: 'boolean', default: false },
  },
});
if (!a.dsn || !a.subscription) {
  console.error('usage: node.mjs --dsn DSN --subscription S [options]');
  process.exit(2);
}
const ms = (s) => Math.round(Number(s) * 1000);

// A libpq key=value DSN (the protocol's form) as pg's config.
function pgConfig(dsn) {
  const cfg = {};
  const names = { host: 'host', port: 'port', user: 'user', dbname: 'database', password: 'password', application_name: 'application_name' };
  for (const m of dsn.matchAll(/(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)/g)) {
    let v = m[2];
    if (v.startsWith("'")) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
    if (names[m[1]]) cfg[names[m[1]]] = m[1] === 'port' ? Number(v) : v;
  }
  return cfg;
}

const concurrency = Number(a.concurrency);
const pool = new pg.Pool({ ...pgConfig(a.dsn), max: concurrency + 4 });
pool.on('error', () => {}); // idle connections that die are replaced (the README asks for this)

let running = 0;
let maxRunning = 0;
const keys = new Map();

const fieldsOf = (event) => ({
  id: Number(event.eventId),
  attempt: event.attempt,
  key: event.key,
  seq: event.payload && typeof event.payload === 'object' ? event.payload.seq ?? null : null,
});

// The handler's own view of its delivery.
async function deliveryState(event) {
  const r = await pool.query('SELECT state FROM outbox.event_status($1) WHERE subscription = $2', [event.eventId, a.subscription]);
  return r.rows[0]?.state ?? null;
}

function sleep(event, millis, signal, ignoreCancel, cleanupMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(done, millis);
    function done() {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }
    function onAbort() {
      out('cancelled', { ...fieldsOf(event), ignored: ignoreCancel, reason: signal.reason?.name ?? String(signal.reason) });
      if (ignoreCancel) return;
      clearTimeout(timer);
      if (!cleanupMs) return reject(signal.reason ?? new Error('aborted'));
      // The handler takes cleanupMs after its cancellation, then reports its delivery's state.
      setTimeout(() => {
        deliveryState(event).then(
          (state) => {
            out('ended', { ...fieldsOf(event), state });
            reject(signal.reason);
          },
          (err) => {
            out('ended', { ...fieldsOf(event), state: null, error: String(err) });
            reject(signal.reason);
          },
        );
      }, cleanupMs);
    }
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function behave(event, signal, tx) {
  const p = event.payload && typeof event.payload === 'object' ? event.payload : {};
  running++;
  maxRunning = Math.max(maxRunning, running);
  const keyCheck = Boolean(p.key_check) && event.key !== null;
  if (keyCheck) {
    if ((keys.get(event.key) ?? 0) > 0) out('violation', { what: 'two handlers of one key at once', ...fieldsOf(event) });
    keys.set(event.key, (keys.get(event.key) ?? 0) + 1);
  }
  out('start', { ...fieldsOf(event), running });
  try {
    if (p.sleep_ms) await sleep(event, p.sleep_ms, signal, Boolean(p.ignore_cancel), Number(p.cleanup_ms ?? 0));
    if (tx && !p.no_write) {
      await tx.query('INSERT INTO conformance_writes (event_id, attempt) VALUES ($1, $2)', [event.eventId, event.attempt]);
    }
    if (p.write_then_throw) throw new Error('wrote, then threw');
    if (event.attempt <= Number(p.fail_attempts ?? 0)) throw new Error(`failing attempt ${event.attempt}`);
    const outcome = p.outcome;
    if (outcome === 'dead') {
      out('outcome', { kind: 'dead', ...fieldsOf(event) });
      return ob.deadLetter('the payload asked for it');
    }
    if (outcome === 'release') {
      out('outcome', { kind: 'release', ...fieldsOf(event) });
      return ob.release();
    }
    if (typeof outcome === 'string' && outcome.startsWith('retry_ms:')) {
      out('outcome', { kind: 'retry', ...fieldsOf(event) });
      return ob.retryAfter(Number(outcome.slice('retry_ms:'.length)));
    }
    out('handled', fieldsOf(event));
    return undefined;
  } catch (err) {
    // A cancellation ending the handler was reported as `cancelled` already.
    if (!(signal.aborted && err === signal.reason)) out('threw', { ...fieldsOf(event), error: String(err?.message ?? err) });
    throw err;
  } finally {
    running--;
    if (keyCheck) keys.set(event.key, keys.get(event.key) - 1);
  }
}

const opts = {
  mode: a.mode,
  concurrency,
  leaseMs: ms(a.lease),
  graceMs: ms(a.grace),
  abortGraceMs: ms(a['cancel-grace']),
  pollIntervalMs: ms(a['poll-interval']),
  heartbeatMs: ms(a.heartbeat),
  pollWaitMs: ms(a['poll-wait']),
  listen: a.listen === 'false' ? false : 'auto',
  handleSignals: true,
};
if (a.batch !== undefined) opts.batchSize = Number(a.batch);

const handler = a.mode === 'transaction' ? (event, signal, tx) => behave(event, signal, tx) : (event, signal) => behave(event, signal);
const consumer = ob.consume(pool, a.subscription, handler, opts);
consumer.on('warning', (message, err) => out('warning', { msg: message + (err ? `: ${err.message ?? err}` : '') }));
consumer.on('reconnect', (err, delayMs) => out('reconnect', { error: String(err?.message ?? err), delay_ms: delayMs }));
consumer.on('leaseLost', (event) => out('lease_lost', fieldsOf(event)));
consumer.on('staleSettlement', (event, kind) => out('stale', { ...fieldsOf(event), kind }));
consumer.on('pollOnly', (reason) => out('poll_only', { reason }));

function fatalKind(err) {
  if (err instanceof ob.UnknownSubscriptionError) return 'unknown_subscription';
  if (err instanceof ob.PermissionDeniedError) return 'permission_denied';
  if (err instanceof ob.SchemaVersionError) return 'schema';
  return 'other';
}

let code = 0;
try {
  await consumer.ready;
  out('ready', { lang: 'node', poll_only: consumer.polling, pid: process.pid });
  await consumer.closed;
} catch (err) {
  out('fatal', { kind: fatalKind(err), error: err?.name ?? String(err), sqlstate: err?.code ?? null, msg: String(err?.message ?? err) });
  code = 3;
  await consumer.closed.catch(() => {});
}
const c = consumer.counters;
out('exit', {
  code,
  max_running: maxRunning,
  counters: {
    claimed: c.claimed,
    handled: c.handled,
    failed: c.failed + c.retried,
    dead: c.dead,
    released: c.released,
    leases_lost: c.leasesLost,
    stale_settlements: c.staleSettlements,
    reconnects: c.reconnects,
  },
  raw: c,
});
await Promise.race([pool.end().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
process.exit(code);
