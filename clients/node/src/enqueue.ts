import { InvalidArgumentError, typedError } from './errors.js';
import type { Queryable } from './types.js';

export interface EnqueueOptions {
  /** Ordering / partition key (ordered subscriptions keep per-key order). */
  key?: string | null;
  /** A JSON object (trace context and the like). */
  headers?: Record<string, unknown> | null;
  /** Not claimable before this time. */
  deliverAt?: Date | null;
  /** An enqueue with the same (topic, dedupKey) as a retained event returns that event's id. */
  dedupKey?: string | null;
}

export interface EnqueueItem<P = unknown> {
  payload: P;
  key?: string | null;
  headers?: Record<string, unknown> | null;
  dedupKey?: string | null;
}

export interface EnqueueManyOptions {
  /** Not claimable before this time (all of them). */
  deliverAt?: Date | null;
}

function json(value: unknown, what: string): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new InvalidArgumentError(`${what} is not JSON-serializable (undefined, a function or a symbol)`);
  return text;
}

/**
 * Enqueues one event on the caller's connection or transaction (it commits
 * or rolls back with the caller's own writes). Returns the event id.
 */
export async function enqueue<P>(client: Queryable, topic: string, payload: P, opts: EnqueueOptions = {}): Promise<string> {
  const values = [
    topic,
    json(payload, 'payload'),
    opts.key ?? null,
    opts.headers == null ? null : json(opts.headers, 'headers'),
    opts.deliverAt ?? null,
    opts.dedupKey ?? null,
  ];
  try {
    const r = await client.query<{ id: string }>(
      'SELECT outbox.enqueue($1, $2::jsonb, $3, $4::jsonb, $5::timestamptz, $6) AS id',
      values,
    );
    return String(r.rows[0]!.id);
  } catch (err) {
    throw typedError(err);
  }
}

/**
 * Enqueues several events of one topic in one statement (outbox.enqueue_many),
 * in order, on the caller's connection or transaction. Returns their ids in order.
 */
export async function enqueueMany(
  client: Queryable,
  topic: string,
  items: readonly EnqueueItem[],
  opts: EnqueueManyOptions = {},
): Promise<string[]> {
  if (items.length === 0) return [];
  const payloads = items.map((it, i) => json(it.payload, `items[${i}].payload`));
  const keys = items.some((it) => it.key != null) ? items.map((it) => it.key ?? null) : null;
  const headers = items.some((it) => it.headers != null)
    ? items.map((it, i) => (it.headers == null ? null : json(it.headers, `items[${i}].headers`)))
    : null;
  const dedup = items.some((it) => it.dedupKey != null) ? items.map((it) => it.dedupKey ?? null) : null;
  try {
    const r = await client.query<{ ids: string[] }>(
      'SELECT outbox.enqueue_many($1, $2::jsonb[], $3::text[], $4::jsonb[], $5::timestamptz, $6::text[]) AS ids',
      [topic, payloads, keys, headers, opts.deliverAt ?? null, dedup],
    );
    return r.rows[0]!.ids.map(String);
  } catch (err) {
    throw typedError(err);
  }
}
