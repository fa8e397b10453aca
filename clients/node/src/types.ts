import type { QueryResult, QueryResultRow } from 'pg';

/** One delivery of an event to a subscription, as a handler sees it. */
export interface OutboxEvent<P = unknown> {
  /** The event id (a bigint, as a decimal string). */
  readonly eventId: string;
  readonly topic: string;
  readonly key: string | null;
  readonly payload: P;
  readonly headers: Record<string, unknown> | null;
  /** 1 on the first delivery; the fence passed to fail / release / extend_lease. */
  readonly attempt: number;
  readonly enqueuedAt: Date;
}

/** Anything to run a query on: a pg Pool, Client or PoolClient. */
export interface Queryable {
  query<R extends QueryResultRow = any>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
}

/** A row of outbox.claim(). */
export interface ClaimRow {
  event_id: string;
  topic: string;
  key: string | null;
  payload: unknown;
  headers: Record<string, unknown> | null;
  attempt: number;
  enqueued_at: Date;
}

export function toEvent<P>(row: ClaimRow): OutboxEvent<P> {
  return Object.freeze({
    eventId: String(row.event_id),
    topic: row.topic,
    key: row.key,
    payload: row.payload as P,
    headers: row.headers,
    attempt: row.attempt,
    enqueuedAt: row.enqueued_at,
  });
}

/** A PostgreSQL interval literal for a number of milliseconds. */
export function interval(ms: number | null | undefined): string | null {
  return ms === null || ms === undefined ? null : `${Math.round(ms)} milliseconds`;
}

/** Quotes a name as ONE SQL identifier (a channel name contains a dot). */
export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

/**
 * A handler's deferred constraints checked now, inside its savepoint (see
 * CHECK_AND_RELEASE_SQL in consumer.ts): SET CONSTRAINTS ALL IMMEDIATE in a
 * savepoint rolled back at once, so the constraints' modes stay as they were.
 */
export const CHECK_DEFERRED_SQL =
  'SAVEPOINT outbox_check; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK TO SAVEPOINT outbox_check; RELEASE SAVEPOINT outbox_check';
