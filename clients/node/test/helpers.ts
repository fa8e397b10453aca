import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** A unique lower-case name for subscriptions, topics, roles and tables of one test. */
export function uniq(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

export function newPool(config: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ max: 20, ...config });
  // Terminated idle connections are reported here; the pool replaces them.
  pool.on('error', () => {});
  return pool;
}

export const admin = newPool({ max: 4, application_name: 'outbox-node-test-admin' });

export interface SubOpts {
  maxAttempts?: number;
  lease?: string;
  backoffBase?: string;
  backoffMax?: string;
  ordered?: boolean;
}

const created: string[] = [];

/** Drops the subscriptions the file created, closes the admin pool. */
export async function cleanup(): Promise<void> {
  for (const s of created) await admin.query('SELECT outbox.unsubscribe($1)', [s]).catch(() => {});
  await admin.end();
}

/** Creates a subscription (a unique name from `prefix`) on a new topic; returns both names. */
export async function subscription(prefix: string, opts: SubOpts = {}): Promise<{ sub: string; topic: string }> {
  const name = uniq(prefix);
  created.push(name);
  const topic = `${name}.topic`;
  await admin.query('SELECT outbox.subscribe($1, ARRAY[$2], $3, $4::interval, $5::interval, $6::interval, $7)', [
    name,
    topic,
    opts.maxAttempts ?? 10,
    opts.lease ?? '30 seconds',
    opts.backoffBase ?? '1 millisecond',
    opts.backoffMax ?? '10 milliseconds',
    opts.ordered ?? false,
  ]);
  return { sub: name, topic };
}

export async function unsubscribe(name: string): Promise<void> {
  await admin.query('SELECT outbox.unsubscribe($1)', [name]);
}

export interface Status {
  state: string;
  attempts: number;
  last_error: string | null;
}

export async function status(sub: string, eventId: string): Promise<Status | undefined> {
  const r = await admin.query<Status>('SELECT state, attempts, last_error FROM outbox.event_status($1) WHERE subscription = $2', [
    eventId,
    sub,
  ]);
  return r.rows[0];
}

/** Waits until `cond` holds; fails (instead of hanging) after a generous limit that is not what the test asserts. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, limitMs = 30_000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`gave up waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A promise with its resolve function. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** Backend pids of a pool's LISTEN connection (by application_name). */
export async function listenerPids(appName: string): Promise<number[]> {
  const r = await admin.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity
      WHERE application_name = $1 AND (query LIKE 'LISTEN %' OR query LIKE '%pg_listening_channels%')`,
    [appName],
  );
  return r.rows.map((x) => x.pid);
}
