/**
 * Helpers for testing handlers: run one in-process on a made-up event, or
 * drain a subscription once on the caller's connection, without LISTEN and
 * without committing (for test suites whose transactions never commit).
 */
import type { ClientBase, PoolClient } from 'pg';

import { typedError, sqlState } from './errors.js';
import { isOutcome } from './outcomes.js';
import type { Handler, HandlerResult, TransactionHandler } from './consumer.js';
import { CHECK_DEFERRED_SQL, type ClaimRow, type OutboxEvent, interval, toEvent } from './types.js';

/** What the consumer would do with a handler's result. */
export type SettledOutcome =
  | { kind: 'ack' }
  | { kind: 'fail'; error: unknown }
  | { kind: 'retry'; delayMs: number; reason: string | null }
  | { kind: 'dead'; reason: string }
  | { kind: 'release'; delayMs: number | null };

/** The outcome a handler's result or thrown error stands for. */
export function outcomeOf(result: HandlerResult | unknown, thrown?: unknown): SettledOutcome {
  const o = thrown !== undefined ? thrown : result;
  if (isOutcome(o)) {
    switch (o.kind) {
      case 'ack':
        return { kind: 'ack' };
      case 'retry':
        return { kind: 'retry', delayMs: o.delayMs ?? 0, reason: o.reason };
      case 'dead':
        return { kind: 'dead', reason: o.reason ?? '' };
      case 'release':
        return { kind: 'release', delayMs: o.delayMs };
    }
  }
  if (thrown !== undefined) return { kind: 'fail', error: thrown };
  return { kind: 'ack' };
}

/** Makes an event with defaults for what is not given (eventId '1', topic 'test', attempt 1, now). */
export function makeEvent<P>(fields: Partial<OutboxEvent<P>> & { payload: P }): OutboxEvent<P> {
  return Object.freeze({
    eventId: '1',
    topic: 'test',
    key: null,
    headers: null,
    attempt: 1,
    enqueuedAt: new Date(),
    ...fields,
  });
}

/**
 * Runs a handler on one event in-process and tells what the consumer would
 * do. Pass `tx` to give a transaction handler its connection, `signal` to
 * test cancellation.
 */
export async function runHandler<P>(
  handler: Handler<P> | TransactionHandler<P>,
  event: Partial<OutboxEvent<P>> & { payload: P },
  opts: { signal?: AbortSignal; tx?: PoolClient } = {},
): Promise<SettledOutcome> {
  const signal = opts.signal ?? new AbortController().signal;
  try {
    const r = await (handler as TransactionHandler<P>)(makeEvent(event), signal, opts.tx as PoolClient);
    return outcomeOf(r);
  } catch (err) {
    return outcomeOf(undefined, err ?? new Error(String(err)));
  }
}

export interface DrainResult {
  handled: number;
  failed: number;
  retried: number;
  dead: number;
  released: number;
  /** settlements that found the lease gone */
  stale: number;
}

/**
 * Claims from a subscription on the caller's client until a claim comes
 * back short, running the handler on each event and settling it on the same
 * client: ack, fail (with the attempt), release. Inside a transaction each
 * event gets a savepoint, so a handler that throws has its writes rolled
 * back, as in transaction mode. Nothing is committed here.
 */
export async function drainOnce<P = unknown>(
  client: ClientBase,
  subscription: string,
  handler: Handler<P> | TransactionHandler<P>,
  opts: { batchSize?: number; leaseMs?: number; maxRounds?: number } = {},
): Promise<DrainResult> {
  const batch = opts.batchSize ?? 100;
  const res: DrainResult = { handled: 0, failed: 0, retried: 0, dead: 0, released: 0, stale: 0 };
  const signal = new AbortController().signal;
  try {
    for (let round = 0; round < (opts.maxRounds ?? 1000); round++) {
      const r = await client.query<ClaimRow>(
        'SELECT event_id, topic, key, payload, headers, attempt, enqueued_at FROM outbox.claim($1, $2, $3::interval)',
        [subscription, batch, interval(opts.leaseMs ?? null)],
      );
      for (const row of r.rows) {
        const event = toEvent<P>(row);
        let savepoint = true;
        try {
          await client.query('SAVEPOINT outbox_drain');
        } catch (err) {
          if (sqlState(err) !== '25P01') throw err; // outside a transaction: no savepoints
          savepoint = false;
        }
        let o: SettledOutcome;
        try {
          o = outcomeOf(await (handler as TransactionHandler<P>)(event, signal, client as PoolClient));
          // as the consumer does: the handler's deferred constraints are its own
          if (savepoint) await client.query(CHECK_DEFERRED_SQL);
        } catch (err) {
          o = outcomeOf(undefined, err ?? new Error(String(err)));
          if (savepoint) await client.query('ROLLBACK TO SAVEPOINT outbox_drain');
        }
        if (savepoint) await client.query('RELEASE SAVEPOINT outbox_drain');
        let state: string | null = 'done';
        if (o.kind === 'ack') {
          await client.query('SELECT outbox.ack($1, $2::bigint)', [subscription, event.eventId]);
          res.handled++;
          continue;
        }
        if (o.kind === 'release') {
          const q = await client.query<{ s: string | null }>('SELECT outbox.release($1, $2, $3, $4::interval) AS s', [
            subscription,
            event.eventId,
            event.attempt,
            interval(o.delayMs),
          ]);
          state = q.rows[0]!.s;
          if (state !== null) res.released++;
        } else {
          const text = o.kind === 'fail' ? (o.error instanceof Error ? o.error.message : String(o.error)) : o.reason;
          const q = await client.query<{ s: string | null }>('SELECT outbox.fail($1, $2, $3, $4::interval, $5, $6) AS s', [
            subscription,
            event.eventId,
            text,
            interval(o.kind === 'retry' ? o.delayMs : null),
            event.attempt,
            o.kind === 'dead',
          ]);
          state = q.rows[0]!.s;
          if (state === 'dead') res.dead++;
          else if (state !== null) o.kind === 'retry' ? res.retried++ : res.failed++;
        }
        if (state === null) res.stale++;
      }
      if (r.rows.length < batch) break;
    }
  } catch (err) {
    throw typedError(err, subscription);
  }
  return res;
}
