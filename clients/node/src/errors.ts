/**
 * Error classes of outbox-client, and the classification of driver errors
 * into transient (reconnect and go on) and fatal (stop the consumer).
 */

/** Base class of every error this library raises. */
export class OutboxError extends Error {
  /** The SQLSTATE of the server error behind it, when there is one. */
  readonly code: string | undefined;

  constructor(message: string, options: { cause?: unknown; code?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? sqlState(options.cause);
  }
}

/** 42704: the subscription does not exist (fatal for a consumer). */
export class UnknownSubscriptionError extends OutboxError {}

/** 42501: the role lacks `outbox.grant_consume` / `grant_produce` (fatal for a consumer). */
export class PermissionDeniedError extends OutboxError {}

/**
 * The database's outbox extension is missing or older than this library
 * needs (a function or the schema is not there): run
 * `ALTER EXTENSION outbox UPDATE`.
 */
export class SchemaVersionError extends OutboxError {}

/** 22023 / 22004: an argument the SQL API refused (bad subscription name, empty topic ...). */
export class InvalidArgumentError extends OutboxError {}

/**
 * The reason of a handler's AbortSignal when its lease could not be kept
 * (extend_lease did not return it, or could not be reached before the lease ran out).
 * The delivery may already be handed to another consumer.
 */
export class LeaseLostError extends OutboxError {}

/** The reason of a handler's AbortSignal when `stop()` ran out of grace. */
export class ConsumerStoppedError extends OutboxError {}

/** The SQLSTATE of a node-postgres error, or undefined for socket-level errors. */
export function sqlState(err: unknown): string | undefined {
  if (err !== null && typeof err === 'object' && 'code' in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

const TRANSIENT = new Set(['57P01', '57P02', '57P03', '25006', '40001', '40P01', '53300', '57014']);

/**
 * True for errors after which reconnecting and trying again is right: the
 * connection broke (socket errors have no SQLSTATE; class 08), the server
 * shuts down or restarts (57P01-57P03), a standby refused a write during
 * failover (25006), a serialization failure or deadlock (40001, 40P01), too
 * many connections, a statement cancelled.
 */
export function isTransient(err: unknown): boolean {
  const code = sqlState(err);
  if (code === undefined) return true;
  return code.startsWith('08') || TRANSIENT.has(code);
}

/**
 * The typed error a consumer stops with, or null when the error is not fatal.
 */
export function fatalError(err: unknown, subscription: string): OutboxError | null {
  const code = sqlState(err);
  const message = err instanceof Error ? err.message : String(err);
  switch (code) {
    case '42704':
      return new UnknownSubscriptionError(`outbox subscription "${subscription}" does not exist: ${message}`, { cause: err });
    case '42501':
      return new PermissionDeniedError(
        `not allowed to consume outbox subscription "${subscription}" (outbox.grant_consume(role, subscription) is missing): ${message}`,
        { cause: err },
      );
    case '42883':
    case '3F000':
      return new SchemaVersionError(
        `the outbox extension is missing or too old for outbox-client (run CREATE EXTENSION outbox, or ALTER EXTENSION outbox UPDATE): ${message}`,
        { cause: err },
      );
    case '22023':
    case '22004':
      return new InvalidArgumentError(message, { cause: err });
    case '3D000':
    case '28000':
    case '28P01':
      return new OutboxError(message, { cause: err });
    default:
      return null;
  }
}

/** Maps a server error of a producer call to its typed error; others pass through. */
export function typedError(err: unknown, subscription = ''): unknown {
  return fatalError(err, subscription) ?? err;
}
