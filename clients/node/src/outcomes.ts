/**
 * What a handler asks for, other than a plain ack (return) or a failure
 * with the subscription's backoff (throw). Return one of these from the
 * handler, or throw it: both work.
 */

export type OutcomeKind = 'ack' | 'retry' | 'dead' | 'release';

export class Outcome extends Error {
  readonly kind: OutcomeKind;
  /** retry: delay before the next attempt; release: delay before it is claimable again (null = at once). */
  readonly delayMs: number | null;
  /** retry / dead: the text stored as the delivery's last error. */
  readonly reason: string | null;

  constructor(kind: OutcomeKind, delayMs: number | null = null, reason: string | null = null) {
    super(`outbox outcome: ${kind}${reason ? `: ${reason}` : ''}`);
    this.name = 'Outcome';
    this.kind = kind;
    this.delayMs = delayMs;
    this.reason = reason;
  }
}

function checkDelay(ms: number, what: string): number {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`${what}: delay must be a finite number of milliseconds >= 0, got ${ms}`);
  return ms;
}

/** Done: ack the delivery (the same as returning nothing). */
export function ack(): Outcome {
  return new Outcome('ack');
}

/** Fail this attempt and try again after `ms` (instead of the subscription's backoff). Uses an attempt. */
export function retryAfter(ms: number, reason?: string): Outcome {
  return new Outcome('retry', checkDelay(ms, 'retryAfter'), reason ?? 'retry requested');
}

/** Permanent failure: dead-letter the delivery now, whatever attempts it has left. */
export function deadLetter(reason: string): Outcome {
  return new Outcome('dead', null, reason);
}

/** Give the delivery back without using an attempt: claimable at once, or after `afterMs`. */
export function release(afterMs?: number): Outcome {
  return new Outcome('release', afterMs === undefined ? null : checkDelay(afterMs, 'release'));
}

export function isOutcome(value: unknown): value is Outcome {
  return value instanceof Outcome;
}
