import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { Pool, PoolClient } from 'pg';

import {
  ConsumerStoppedError,
  LeaseLostError,
  OutboxError,
  SchemaVersionError,
  fatalError,
  isTransient,
  sqlState,
} from './errors.js';
import { Outcome, isOutcome } from './outcomes.js';
import { CHECK_DEFERRED_SQL, type ClaimRow, type OutboxEvent, interval, quoteIdent, toEvent } from './types.js';

/** What a handler may return: nothing (ack) or an Outcome. */
export type HandlerResult = void | undefined | Outcome;

/** An ack-mode handler: the event and a signal that aborts when its lease is lost or stop() runs out of grace. */
export type Handler<P = unknown> = (event: OutboxEvent<P>, signal: AbortSignal) => HandlerResult | Promise<HandlerResult>;

/**
 * A transaction-mode handler: also gets the consumer's transaction. Its
 * writes commit together with the ack; when it throws they are rolled back
 * to a savepoint and the delivery is failed in the same transaction.
 */
export type TransactionHandler<P = unknown> = (
  event: OutboxEvent<P>,
  signal: AbortSignal,
  tx: PoolClient,
) => HandlerResult | Promise<HandlerResult>;

export interface ConsumeOptions {
  /** 'ack' (default): claim and commit, run handlers, ack/fail. 'transaction': see TransactionHandler. */
  mode?: 'ack' | 'transaction';
  /** Most handlers running at once (default 10). No more deliveries are claimed than there are free slots. */
  concurrency?: number;
  /** ack mode: most rows per claim (default 100, never more than free slots); transaction mode: rows per transaction (default 10). */
  batchSize?: number;
  /** The lease passed to claim and extend_lease (default 30000). Extended every third of it while a handler runs. */
  leaseMs?: number;
  /** Safety poll: claim this often even without a notification (default 30000). */
  pollIntervalMs?: number;
  /** true/'auto' (default): LISTEN, and fall back to polling when LISTEN cannot work; false: poll only. */
  listen?: boolean | 'auto';
  /** Poll-only mode: how long one claim waits server-side for deliveries (default 5000). */
  pollWaitMs?: number;
  /** Poll-only mode without claim(..., wait) on the server: sleep between empty claims (default 1000). */
  pollSleepMs?: number;
  /** How often the LISTEN connection is checked with pg_listening_channels() (default 10000); a check that does not answer within this time counts as a dead connection. */
  heartbeatMs?: number;
  /** After LISTEN, a notification is sent through the pool and must come back within this time (default 2000); if not, LISTEN cannot work (a transaction-pooling proxy) and the consumer polls. */
  probeTimeoutMs?: number;
  /** stop(): how long running handlers may go on before their signal aborts (default 25000). */
  graceMs?: number;
  /** stop(): how long after the abort to wait before their deliveries are released anyway (default 1000). */
  abortGraceMs?: number;
  /** Reconnect backoff, full jitter between 0 and min(max, min * 2^n) (defaults 100 and 30000). */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Stop on SIGTERM and SIGINT (default false). */
  handleSignals?: boolean;
  /** The error text stored by fail() for a thrown error (default: its message). */
  errorText?: (err: unknown) => string;
}

/** Counters, live. */
export interface Counters {
  /** claim statements run */
  claims: number;
  /** deliveries claimed */
  claimed: number;
  /** handled and acked */
  handled: number;
  /** the handler threw: failed with the subscription's backoff */
  failed: number;
  /** the handler asked for retryAfter() */
  retried: number;
  /** dead-lettered (deadLetter(), or out of attempts) */
  dead: number;
  /** given back without using an attempt (release(), or at stop) */
  released: number;
  /** handlers whose lease could not be kept (and whose signal was aborted) */
  leasesLost: number;
  /** fail/release that found the lease gone (returned NULL), or a handler that finished after its delivery was released */
  staleSettlements: number;
  /** reconnects of the LISTEN connection, and claims retried after a transient error */
  reconnects: number;
}

export type ConsumerState = 'starting' | 'running' | 'stopping' | 'stopped';

/** The events a Consumer emits. */
export interface ConsumerEvents {
  /** the LISTEN connection is up and confirmed (again) */
  listening: [channel: string];
  /** LISTEN cannot work here: polling with claim(..., wait) from now on (emitted once) */
  pollOnly: [reason: string];
  handled: [event: OutboxEvent];
  failed: [event: OutboxEvent, error: unknown, state: string];
  retried: [event: OutboxEvent, delayMs: number];
  dead: [event: OutboxEvent, reason: string];
  released: [event: OutboxEvent, delayMs: number | null];
  leaseLost: [event: OutboxEvent];
  staleSettlement: [event: OutboxEvent, kind: string];
  reconnect: [error: unknown, delayMs: number];
  /** commit-to-handler lag: now minus the event's enqueued_at, when its handler starts */
  lag: [ms: number, event: OutboxEvent];
  /** something went wrong that the consumer recovers from (logged with console.warn when nobody listens) */
  warning: [message: string, error?: unknown];
  /** the consumer stops because of this error; `closed` rejects with it */
  fatal: [error: OutboxError];
  stopped: [];
}

interface Delivery {
  event: OutboxEvent;
  controller: AbortController;
  /** local time by which the lease runs out, as last extended */
  deadline: number;
  lost: boolean;
  /** released or rolled back by stop(): the handler's later settlement is stale */
  abandoned: boolean;
}

interface Settlement {
  kind: 'ack' | 'fail' | 'retry' | 'dead' | 'release';
  delayMs: number | null;
  error: unknown;
  text: string | null;
}

const CLAIM_SQL =
  'SELECT event_id, topic, key, payload, headers, attempt, enqueued_at FROM outbox.claim($1, $2, $3::interval)';
const CLAIM_WAIT_SQL =
  'SELECT event_id, topic, key, payload, headers, attempt, enqueued_at FROM outbox.claim($1, $2, $3::interval, $4::interval)';
const FAIL_SQL = 'SELECT outbox.fail($1, $2, $3, $4::interval, $5, $6) AS state';
const RELEASE_SQL = 'SELECT outbox.release($1, $2, $3, $4::interval) AS state';
/*
 * After a handler returns (transaction mode): its deferred constraints are
 * checked now, inside its savepoint, so that a violation fails this event
 * instead of the COMMIT of the whole batch (which would give every delivery
 * back at the same attempt, and the poison event would come back forever).
 * The inner savepoint is rolled back so that the constraints' modes stay as
 * they were; the checks then run again at COMMIT, as they would anyway.
 */
const CHECK_AND_RELEASE_SQL = `${CHECK_DEFERRED_SQL}; RELEASE SAVEPOINT outbox_event`;

/** Our lifetime 'error' listener on every client we check out (see Consumer.checkout). */
function ignoreError(): void {}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * A running consumer of one subscription. Created by consume(); runs until
 * stop() or a fatal error.
 */
export class Consumer extends EventEmitter<ConsumerEvents> {
  readonly subscription: string;
  readonly counters: Counters = {
    claims: 0,
    claimed: 0,
    handled: 0,
    failed: 0,
    retried: 0,
    dead: 0,
    released: 0,
    leasesLost: 0,
    staleSettlements: 0,
    reconnects: 0,
  };
  /** Resolves once the consumer is listening (or polling); rejects with a fatal error. */
  readonly ready: Promise<void>;
  /** Resolves when the consumer has stopped; rejects with the fatal error it stopped on. */
  readonly closed: Promise<void>;
  /** The fatal error the consumer stopped on, if any. */
  error: OutboxError | null = null;

  private readonly pool: Pool;
  private readonly handler: TransactionHandler<any>;
  private readonly mode: 'ack' | 'transaction';
  private readonly concurrency: number;
  private readonly batchSize: number;
  private readonly leaseMs: number;
  private readonly pollIntervalMs: number;
  private readonly pollWaitMs: number;
  private readonly pollSleepMs: number;
  private readonly heartbeatMs: number;
  private readonly probeTimeoutMs: number;
  private readonly graceMs: number;
  private readonly abortGraceMs: number;
  private readonly reconnectMinMs: number;
  private readonly reconnectMaxMs: number;
  private readonly errorText: (err: unknown) => string;

  private _state: ConsumerState = 'starting';
  private stopping = false;
  private readonly stopController = new AbortController();
  private stopPromise: Promise<void> | null = null;
  private pollOnly: boolean;
  private hasWait = false;
  private signalled = true;
  private more = true;
  /** Transactions in a row that failed as a whole (transaction mode); paces the retry. */
  private txFailures = 0;
  private waker: (() => void) | null = null;
  private running = 0;
  private readonly inflight = new Set<Delivery>();
  private readonly txClients = new Map<PoolClient, Delivery[]>();
  private idleWaiters: (() => void)[] = [];
  private listenClient: PoolClient | null = null;
  /** The connection of a claim waiting server-side (poll-only), cancelled by stop(). */
  private waitingClient: PoolClient | null = null;
  private pollTimer: NodeJS.Timeout | null = null;
  private extendTimer: NodeJS.Timeout | null = null;
  private abortReason: ConsumerStoppedError | null = null;
  private extending = false;
  private ackBuffer: Delivery[] = [];
  private flushing: Promise<void> | null = null;
  private loops: Promise<void>[] = [];
  private resolveReady!: () => void;
  private rejectReady!: (e: unknown) => void;
  private resolveClosed!: () => void;
  private rejectClosed!: (e: unknown) => void;
  private readonly signalHandler: (() => void) | null = null;

  constructor(pool: Pool, subscription: string, handler: TransactionHandler<any>, opts: ConsumeOptions = {}) {
    super();
    this.pool = pool;
    this.subscription = subscription;
    this.handler = handler;
    this.mode = opts.mode ?? 'ack';
    if (this.mode !== 'ack' && this.mode !== 'transaction') throw new RangeError(`mode must be 'ack' or 'transaction'`);
    this.concurrency = positive(opts.concurrency ?? 10, 'concurrency');
    this.batchSize = positive(opts.batchSize ?? (this.mode === 'ack' ? 100 : 10), 'batchSize');
    if (this.batchSize > 10000) throw new RangeError('batchSize must be at most 10000');
    this.leaseMs = positive(opts.leaseMs ?? 30_000, 'leaseMs');
    this.pollIntervalMs = positive(opts.pollIntervalMs ?? 30_000, 'pollIntervalMs');
    this.pollWaitMs = positive(opts.pollWaitMs ?? 5_000, 'pollWaitMs');
    this.pollSleepMs = positive(opts.pollSleepMs ?? 1_000, 'pollSleepMs');
    this.heartbeatMs = positive(opts.heartbeatMs ?? 10_000, 'heartbeatMs');
    this.probeTimeoutMs = positive(opts.probeTimeoutMs ?? 2_000, 'probeTimeoutMs');
    this.graceMs = nonNegative(opts.graceMs ?? 25_000, 'graceMs');
    this.abortGraceMs = nonNegative(opts.abortGraceMs ?? 1_000, 'abortGraceMs');
    this.reconnectMinMs = positive(opts.reconnectMinMs ?? 100, 'reconnectMinMs');
    this.reconnectMaxMs = positive(opts.reconnectMaxMs ?? 30_000, 'reconnectMaxMs');
    this.errorText = opts.errorText ?? errorMessage;
    this.pollOnly = opts.listen === false;

    this.ready = new Promise((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.closed = new Promise((res, rej) => {
      this.resolveClosed = res;
      this.rejectClosed = rej;
    });
    // Nobody has to await these: a fatal error is also emitted and kept in `error`.
    this.ready.catch(() => {});
    this.closed.catch(() => {});

    if (opts.handleSignals) {
      this.signalHandler = () => void this.stop();
      process.once('SIGTERM', this.signalHandler);
      process.once('SIGINT', this.signalHandler);
    }
    void this.start();
  }

  get state(): ConsumerState {
    return this._state;
  }

  /** Handlers running now. */
  get active(): number {
    return this.running;
  }

  /** True once LISTEN was found not to work (or listen: false): claims wait server-side instead. */
  get polling(): boolean {
    return this.pollOnly;
  }

  /**
   * Stops: no new claims; running handlers get `graceMs`, then their
   * signal aborts (ConsumerStoppedError), then their deliveries are
   * released without using an attempt; pending acks are flushed.
   * Resolves when done (also after a fatal error; it never rejects).
   */
  stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (!this.stopPromise) this.stopPromise = this.shutdown(opts.graceMs ?? this.graceMs);
    return this.stopPromise;
  }

  // ---------------------------------------------------------------- start

  private async start(): Promise<void> {
    try {
      const r = await this.pool.query<{ v11: boolean; wait: boolean }>(
        `SELECT to_regprocedure('outbox.extend_lease(text,bigint[],integer[],interval)') IS NOT NULL AS v11,
                to_regprocedure('outbox.claim(text,integer,interval,interval)') IS NOT NULL AS wait`,
      );
      const row = r.rows[0]!;
      if (!row.v11) {
        throw new SchemaVersionError(
          'the outbox extension in this database is older than 1.1 (no outbox.extend_lease): run ALTER EXTENSION outbox UPDATE',
        );
      }
      this.hasWait = row.wait;
    } catch (err) {
      if (err instanceof OutboxError) return this.die(err);
      const fatal = fatalError(err, this.subscription);
      if (fatal) return this.die(fatal);
      // Transient at start: the loops below retry.
      this.warn('outbox-client: checking the extension failed, going on', err);
    }
    if (this.stopping) return;
    this._state = 'running';
    this.pollTimer = unref(setInterval(() => this.wake(), this.pollIntervalMs));
    if (this.mode === 'ack') this.extendTimer = unref(setInterval(() => void this.extendLeases(), Math.max(1, this.leaseMs / 3)));
    if (this.pollOnly) this.enterPollOnly('listen: false');
    else this.loops.push(this.listenLoop());
    this.loops.push(this.claimLoop());
  }

  // ---------------------------------------------------------------- wake-ups

  /** Something may be claimable: claim (when there is room). */
  private wake(): void {
    this.signalled = true;
    this.kick();
  }

  private kick(): void {
    const w = this.waker;
    this.waker = null;
    w?.();
  }

  private nextKick(): Promise<void> {
    return new Promise((resolve) => {
      this.waker = resolve;
    });
  }

  private enterPollOnly(reason: string): void {
    if (this.pollOnly && reason !== 'listen: false') return;
    this.pollOnly = true;
    const how = this.hasWait ? `claim(..., wait => ${this.pollWaitMs} ms)` : `claim every ${this.pollSleepMs} ms (the server has no claim(..., wait) yet)`;
    const msg = `outbox-client: subscription "${this.subscription}": LISTEN is not used (${reason}); polling with ${how}`;
    if (reason !== 'listen: false') this.warn(msg);
    this.emit('pollOnly', reason);
    this.resolveReady();
    this.kick();
  }

  // ---------------------------------------------------------------- LISTEN

  private async listenLoop(): Promise<void> {
    let failures = 0;
    let connectedBefore = false;
    while (!this.stopping && !this.pollOnly) {
      let client: PoolClient | null = null;
      try {
        client = await this.checkout();
        const c = client;
        const lost = new Promise<Error>((resolve) => {
          c.on('error', (e) => resolve(e));
          c.on('end', () => resolve(new Error('the LISTEN connection ended')));
        });
        this.listenClient = c;
        if (this.stopping) break;
        const r = await c.query<{ channel: string }>('SELECT outbox.channel($1) AS channel', [this.subscription]);
        const channel = r.rows[0]!.channel;
        const probeToken = `outbox-client-probe-${process.pid}-${Date.now()}-${Math.random()}`;
        let probed: (() => void) | null = null;
        const probeBack = new Promise<void>((resolve) => { probed = resolve; });
        c.on('notification', (msg) => {
          if (msg.channel !== channel) return;
          if (msg.payload === probeToken) probed?.();
          this.wake();
        });
        await c.query(`LISTEN ${quoteIdent(channel)}`);
        if (!(await this.listening(c, channel))) {
          this.enterPollOnly(
            'pg_listening_channels() does not show the channel after LISTEN: the connection goes through a transaction-pooling proxy such as PgBouncer',
          );
          break;
        }
        /*
         * Behind a transaction-pooling proxy the check above usually passes
         * (it runs on the server connection that ran LISTEN), yet
         * notifications never reach this client once the proxy has unlinked
         * it from that connection.  So send one through the pool and wait
         * for it: only a round trip proves that wake-ups arrive.
         */
        await this.pool.query('SELECT pg_notify($1, $2)', [channel, probeToken]);
        let probeTimer: NodeJS.Timeout | undefined;
        const arrived = await Promise.race([
          probeBack.then(() => true),
          new Promise<boolean>((resolve) => { probeTimer = setTimeout(() => resolve(false), this.probeTimeoutMs); }),
          lost.then(() => true), // a lost connection is handled by watch() below
        ]);
        clearTimeout(probeTimer);
        if (!arrived) {
          this.enterPollOnly(
            `a notification sent through the pool did not arrive within ${this.probeTimeoutMs} ms: the connection goes through a transaction-pooling proxy such as PgBouncer`,
          );
          break;
        }
        if (connectedBefore) this.counters.reconnects++;
        connectedBefore = true;
        failures = 0;
        this.emit('listening', channel);
        this.resolveReady();
        this.wake(); // drain after every (re)connect: notifications sent meanwhile are lost
        const why = await this.watch(c, channel, lost);
        if (why === null) break;
        throw why;
      } catch (err) {
        if (this.stopping) break;
        const fatal = fatalError(err, this.subscription);
        if (fatal) {
          this.destroy(client);
          client = null;
          void this.die(fatal);
          break;
        }
        failures++;
        const delay = this.backoff(failures);
        this.warn(`outbox-client: LISTEN connection of "${this.subscription}" lost, reconnecting in ${delay} ms`, err);
        this.emit('reconnect', err, delay);
        this.destroy(client);
        client = null;
        this.listenClient = null;
        await sleep(delay, this.stopController.signal);
      } finally {
        if (client) this.destroy(client);
        this.listenClient = null;
      }
    }
  }

  private async listening(c: PoolClient, channel: string): Promise<boolean> {
    const r = await c.query<{ ok: boolean }>('SELECT $1::text = ANY (ARRAY(SELECT pg_listening_channels())) AS ok', [channel]);
    return r.rows[0]!.ok === true;
  }

  /**
   * Waits while the LISTEN connection is healthy. Returns null when
   * stopping or switched to polling, the error otherwise. A check that does
   * not answer within heartbeatMs (a blackholed socket) is an error too.
   */
  private async watch(c: PoolClient, channel: string, lost: Promise<Error>): Promise<Error | null> {
    const stopped = new Promise<null>((resolve) => {
      if (this.stopController.signal.aborted) resolve(null);
      this.stopController.signal.addEventListener('abort', () => resolve(null), { once: true });
    });
    for (;;) {
      const tick = sleep(this.heartbeatMs).then(() => 'tick' as const);
      const first = await Promise.race([lost, stopped, tick]);
      if (first !== 'tick') return first;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<Error>((resolve) => {
        timer = setTimeout(() => resolve(new Error(`the LISTEN connection did not answer within ${this.heartbeatMs} ms`)), this.heartbeatMs);
      });
      const check = this.listening(c, channel).then(
        (ok) => (ok ? null : ('gone' as const)),
        (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
      );
      const res = await Promise.race([check, lost, stopped, timeout]);
      clearTimeout(timer);
      if (res === null) {
        if (this.stopping) return null;
        continue;
      }
      if (res === 'gone') {
        this.enterPollOnly('pg_listening_channels() lost the channel: the connection goes through a transaction-pooling proxy such as PgBouncer');
        return null;
      }
      return res;
    }
  }

  // ---------------------------------------------------------------- claiming

  private free(): number {
    return this.concurrency - this.running;
  }

  private async claimLoop(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      if (this.free() <= 0 || (!this.pollOnly && !this.signalled && !this.more)) {
        await this.nextKick();
        continue;
      }
      this.signalled = false;
      const wait = this.pollOnly && this.hasWait ? this.pollWaitMs : null;
      let got: number;
      let asked: number;
      try {
        if (this.mode === 'ack') {
          asked = Math.min(this.free(), this.batchSize);
          got = await this.claimAck(asked, wait);
        } else {
          asked = this.batchSize;
          got = await this.claimTx(asked, wait);
        }
        failures = 0;
        this.counters.claims++;
      } catch (err) {
        if (this.stopping) break;
        const fatal = fatalError(err, this.subscription);
        if (fatal) {
          void this.die(fatal);
          break;
        }
        failures++;
        this.counters.reconnects++;
        const delay = this.backoff(failures);
        this.warn(`outbox-client: claim on "${this.subscription}" failed, retrying in ${delay} ms`, err);
        this.emit('reconnect', err, delay);
        this.signalled = true;
        await sleep(delay, this.stopController.signal);
        continue;
      }
      this.more = got === asked;
      if (this.pollOnly && !this.hasWait && got < asked) await sleep(this.pollSleepMs, this.stopController.signal);
    }
  }

  private async claimAck(n: number, wait: number | null): Promise<number> {
    let r;
    if (wait === null) r = await this.pool.query<ClaimRow>(CLAIM_SQL, [this.subscription, n, interval(this.leaseMs)]);
    else {
      const c = await this.checkout();
      let broken: unknown = undefined;
      try {
        this.waitingClient = c;
        r = await c.query<ClaimRow>(CLAIM_WAIT_SQL, [this.subscription, n, interval(this.leaseMs), interval(wait)]);
      } catch (err) {
        broken = err;
        throw err;
      } finally {
        this.waitingClient = null;
        if (broken !== undefined && isTransient(broken) && sqlState(broken) !== '57014') this.destroy(c);
        else c.release();
      }
    }
    const claimedAt = Date.now();
    if (this.stopping) {
      // Claimed after stop() began (a claim that waited): give it back.
      await Promise.all(r.rows.map((row) => this.giveBack(toEvent(row))));
      return r.rows.length;
    }
    this.counters.claimed += r.rows.length;
    for (const row of r.rows) {
      const d: Delivery = {
        event: toEvent(row),
        controller: new AbortController(),
        deadline: claimedAt + this.leaseMs,
        lost: false,
        abandoned: false,
      };
      this.running++;
      this.inflight.add(d);
      void this.runAck(d);
    }
    return r.rows.length;
  }

  // ---------------------------------------------------------------- ack mode

  private async runAck(d: Delivery): Promise<void> {
    this.emit('lag', Date.now() - d.event.enqueuedAt.getTime(), d.event);
    let s: Settlement;
    try {
      s = settlementOf(await this.handler(d.event, d.controller.signal, undefined as unknown as PoolClient), null, this.errorText);
    } catch (err) {
      s = settlementOf(undefined, err, this.errorText);
      // Aborted by stop(): give it back at the same attempt instead of failing it.
      if (s.kind === 'fail' && d.controller.signal.reason instanceof ConsumerStoppedError) s = { kind: 'release', delayMs: null, error: err, text: null };
    }
    this.inflight.delete(d);
    if (d.abandoned) {
      // stop() released it already.
      this.stale(d.event, s.kind);
      return this.finished();
    }
    if (s.kind === 'ack') {
      this.ackBuffer.push(d);
      this.finished();
      void this.flushAcks();
      return;
    }
    try {
      await this.settle(d.event, s);
    } finally {
      this.finished();
    }
  }

  private finished(): void {
    this.running--;
    this.kick();
    if (this.running === 0) {
      const ws = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of ws) w();
    }
  }

  /** fail / release in its own statement, retried on transient errors (both are fenced by the attempt). */
  private async settle(event: OutboxEvent, s: Settlement): Promise<void> {
    const id = event.eventId;
    for (let attempt = 1; ; attempt++) {
      try {
        let state: string | null;
        if (s.kind === 'release') {
          const r = await this.pool.query<{ state: string | null }>(RELEASE_SQL, [this.subscription, id, event.attempt, interval(s.delayMs)]);
          state = r.rows[0]!.state;
        } else {
          const r = await this.pool.query<{ state: string | null }>(FAIL_SQL, [
            this.subscription,
            id,
            s.text,
            interval(s.kind === 'retry' ? s.delayMs : null),
            event.attempt,
            s.kind === 'dead',
          ]);
          state = r.rows[0]!.state;
        }
        this.settled(event, s, state);
        return;
      } catch (err) {
        if (!isTransient(err) || attempt >= 8) {
          this.warn(`outbox-client: ${s.kind} of event ${id} on "${this.subscription}" failed; its lease will run out and it comes back`, err);
          return;
        }
        await sleep(this.backoff(attempt));
      }
    }
  }

  /** Counts a settlement whose statement returned `state` (NULL: the lease was gone). */
  private settled(event: OutboxEvent, s: Settlement, state: string | null): void {
    if (state === null) return this.stale(event, s.kind);
    if (s.kind === 'release') {
      this.counters.released++;
      this.emit('released', event, s.delayMs);
    } else if (state === 'dead') {
      this.counters.dead++;
      this.emit('dead', event, s.text ?? '');
    } else if (s.kind === 'retry') {
      this.counters.retried++;
      this.emit('retried', event, s.delayMs ?? 0);
    } else {
      this.counters.failed++;
      this.emit('failed', event, s.error, state);
    }
  }

  private stale(event: OutboxEvent, kind: string): void {
    this.counters.staleSettlements++;
    this.emit('staleSettlement', event, kind);
  }

  /** Acks are batched: one ack statement in flight, the next takes whatever finished meanwhile. */
  private flushAcks(): Promise<void> {
    if (this.flushing) return this.flushing;
    this.flushing = (async () => {
      let failures = 0;
      while (this.ackBuffer.length > 0) {
        const batch = this.ackBuffer.splice(0, 5000);
        try {
          await this.pool.query('SELECT outbox.ack($1, $2::bigint[]) AS n', [this.subscription, batch.map((d) => d.event.eventId)]);
          failures = 0;
          this.counters.handled += batch.length;
          for (const d of batch) this.emit('handled', d.event);
        } catch (err) {
          failures++;
          if (!isTransient(err) || (this.stopping && failures >= 5)) {
            this.warn(`outbox-client: ack of ${batch.length} events on "${this.subscription}" failed; their leases run out and they come back`, err);
            continue;
          }
          this.ackBuffer.unshift(...batch);
          await sleep(this.backoff(failures));
        }
      }
    })().finally(() => {
      this.flushing = null;
    });
    return this.flushing;
  }

  /** Extends the leases of running handlers; aborts those whose lease is gone or ran out. */
  private async extendLeases(): Promise<void> {
    if (this.extending) return;
    this.extending = true;
    try {
      const ds = [...this.inflight].filter((d) => !d.lost && !d.abandoned);
      if (ds.length > 0) {
        const sentAt = Date.now();
        try {
          const r = await this.pool.query<{ ids: string[] | null }>(
            'SELECT outbox.extend_lease($1, $2::bigint[], $3::int[], $4::interval) AS ids',
            [this.subscription, ds.map((d) => d.event.eventId), ds.map((d) => d.event.attempt), interval(this.leaseMs)],
          );
          const kept = new Set((r.rows[0]!.ids ?? []).map(String));
          for (const d of ds) {
            if (!this.inflight.has(d)) continue; // finished meanwhile: its ack decides
            if (kept.has(d.event.eventId)) d.deadline = sentAt + this.leaseMs;
            else this.loseLease(d);
          }
        } catch (err) {
          this.warn(`outbox-client: extending leases on "${this.subscription}" failed`, err);
        }
      }
      const now = Date.now();
      for (const d of this.inflight) if (!d.lost && !d.abandoned && now >= d.deadline) this.loseLease(d);
    } finally {
      this.extending = false;
    }
  }

  private loseLease(d: Delivery): void {
    if (d.lost) return;
    d.lost = true;
    this.counters.leasesLost++;
    this.emit('leaseLost', d.event);
    d.controller.abort(
      new LeaseLostError(`the lease of event ${d.event.eventId} (attempt ${d.event.attempt}) on "${this.subscription}" could not be kept`),
    );
  }

  /** Releases a delivery at its attempt (stop). */
  private async giveBack(event: OutboxEvent): Promise<void> {
    await this.settle(event, { kind: 'release', delayMs: null, error: null, text: null });
  }

  // ---------------------------------------------------------------- transaction mode

  /** Claims in a new transaction; its handlers then run in the background. Returns how many rows it got. */
  private async claimTx(n: number, wait: number | null): Promise<number> {
    this.running++;
    let client: PoolClient | null = null;
    try {
      client = await this.checkout();
      await client.query('BEGIN');
      if (wait !== null) this.waitingClient = client;
      const r =
        wait === null
          ? await client.query<ClaimRow>(CLAIM_SQL, [this.subscription, n, interval(this.leaseMs)])
          : await client.query<ClaimRow>(CLAIM_WAIT_SQL, [this.subscription, n, interval(this.leaseMs), interval(wait)]);
      this.waitingClient = null;
      if (r.rows.length === 0 || this.stopping) {
        // Nothing, or stop() began while the claim waited: rolling back gives it back at the same attempt.
        await client.query('ROLLBACK');
        client.release();
        client = null;
        this.finished();
        return r.rows.length;
      }
      this.counters.claimed += r.rows.length;
      const c = client;
      client = null;
      void this.runTx(c, r.rows);
      return r.rows.length;
    } catch (err) {
      this.waitingClient = null;
      this.destroy(client);
      this.finished();
      throw err;
    }
  }

  private async runTx(client: PoolClient, rows: ClaimRow[]): Promise<void> {
    const ds: Delivery[] = [];
    this.txClients.set(client, ds);
    const done: [OutboxEvent, Settlement, string | null][] = [];
    const onError = (e: Error) => this.warn('outbox-client: transaction connection error', e);
    client.on('error', onError);
    let ok = false;
    try {
      for (const [i, row] of rows.entries()) {
        if (this.stopping) {
          // Not started yet: give them back in this transaction, commit what is done.
          for (const rest of rows.slice(i)) {
            const event = toEvent(rest);
            const r = await client.query<{ state: string | null }>(RELEASE_SQL, [this.subscription, event.eventId, event.attempt, null]);
            done.push([event, { kind: 'release', delayMs: null, error: null, text: null }, r.rows[0]!.state]);
          }
          break;
        }
        const d: Delivery = { event: toEvent(row), controller: new AbortController(), deadline: Infinity, lost: false, abandoned: false };
        ds.push(d);
        if (this.abortReason) d.controller.abort(this.abortReason);
        this.emit('lag', Date.now() - d.event.enqueuedAt.getTime(), d.event);
        await client.query('SAVEPOINT outbox_event');
        let s: Settlement;
        let threw = false;
        try {
          s = settlementOf(await this.handler(d.event, d.controller.signal, client), null, this.errorText);
        } catch (err) {
          s = settlementOf(undefined, err, this.errorText);
          threw = true;
        }
        if (d.abandoned) return; // stop() rolled the transaction back
        if (threw && d.controller.signal.reason instanceof ConsumerStoppedError) {
          // Stopped: roll everything back, so every delivery of the transaction keeps its attempt.
          throw d.controller.signal.reason;
        }
        if (!threw) {
          try {
            await client.query(CHECK_AND_RELEASE_SQL);
          } catch (err) {
            // A broken connection fails the whole transaction; an SQL
            // error here is this handler's deferred constraint.
            if (isTransient(err)) throw err;
            s = settlementOf(undefined, err, this.errorText);
            threw = true;
          }
        }
        if (threw) await client.query('ROLLBACK TO SAVEPOINT outbox_event');
        let state: string | null = 'done';
        if (s.kind === 'ack') {
          await client.query('SELECT outbox.ack($1, $2::bigint)', [this.subscription, d.event.eventId]);
        } else if (s.kind === 'release') {
          const r = await client.query<{ state: string | null }>(RELEASE_SQL, [this.subscription, d.event.eventId, d.event.attempt, interval(s.delayMs)]);
          state = r.rows[0]!.state;
        } else {
          const r = await client.query<{ state: string | null }>(FAIL_SQL, [
            this.subscription,
            d.event.eventId,
            s.text,
            interval(s.kind === 'retry' ? s.delayMs : null),
            d.event.attempt,
            s.kind === 'dead',
          ]);
          state = r.rows[0]!.state;
        }
        done.push([d.event, s, state]);
      }
      await client.query('COMMIT');
      ok = true;
      this.txFailures = 0;
      for (const [event, s, state] of done) {
        if (s.kind === 'ack') {
          this.counters.handled++;
          this.emit('handled', event);
        } else this.settled(event, s, state);
      }
    } catch (err) {
      if (ds.some((d) => d.abandoned)) return;
      if (err instanceof ConsumerStoppedError) {
        for (const _ of rows) this.counters.released++;
      } else {
        this.warn(`outbox-client: a transaction on "${this.subscription}" failed and was rolled back; its deliveries come back at the same attempt`, err);
        // They are claimable again at once, and no notification says so:
        // claim again after a backoff, not at the next poll.
        const delay = this.backoff(++this.txFailures);
        unref(setTimeout(() => this.wake(), delay));
      }
    } finally {
      this.txClients.delete(client);
      client.off('error', onError);
      if (!ds.some((d) => d.abandoned)) {
        if (ok) client.release();
        else {
          // Roll back (also a failed ROLLBACK is fine: the connection is dropped then).
          try {
            await client.query('ROLLBACK');
            client.release();
          } catch {
            this.destroy(client);
          }
        }
        this.finished();
      }
    }
  }

  // ---------------------------------------------------------------- stopping

  private async shutdown(graceMs: number): Promise<void> {
    this.stopping = true;
    if (this._state !== 'stopped') this._state = 'stopping';
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.signalHandler) {
      process.off('SIGTERM', this.signalHandler);
      process.off('SIGINT', this.signalHandler);
    }
    this.stopController.abort(null);
    this.kick();
    if (this.listenClient) {
      this.destroy(this.listenClient);
      this.listenClient = null;
    }
    // A claim waiting server-side would hold stop() for up to pollWaitMs: cancel it.
    if (this.waitingClient) cancelQuery(this.waitingClient);
    await Promise.all(this.loops);

    if (this.running > 0) await Promise.race([this.idle(), sleep(graceMs)]);
    if (this.running > 0) {
      const reason = new ConsumerStoppedError(`the consumer of "${this.subscription}" is stopping`);
      this.abortReason = reason;
      for (const d of this.inflight) d.controller.abort(reason);
      for (const ds of this.txClients.values()) for (const d of ds) d.controller.abort(reason);
      await Promise.race([this.idle(), sleep(this.abortGraceMs)]);
    }
    if (this.running > 0) {
      // Still running: give their deliveries back; what the handlers do later is stale.
      const releases: Promise<void>[] = [];
      for (const d of [...this.inflight]) {
        d.abandoned = true;
        this.inflight.delete(d);
        this.running--;
        releases.push(this.giveBack(d.event));
      }
      for (const [client, ds] of [...this.txClients]) {
        for (const d of ds) d.abandoned = true;
        this.txClients.delete(client);
        this.destroy(client); // the server rolls the transaction back: same attempt
        this.counters.released += ds.length;
        this.running--;
      }
      await Promise.all(releases);
    }
    if (this.extendTimer) clearInterval(this.extendTimer);
    await this.flushAcks();
    this._state = 'stopped';
    this.emit('stopped');
    if (this.error) this.rejectClosed(this.error);
    else this.resolveClosed();
    this.resolveReady();
  }

  private idle(): Promise<void> {
    if (this.running === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async die(err: OutboxError): Promise<void> {
    if (this.error || this.stopping) return;
    this.error = err;
    this.rejectReady(err);
    this.emit('fatal', err);
    await this.stop();
  }

  // ---------------------------------------------------------------- helpers

  private backoff(failures: number): number {
    const cap = Math.min(this.reconnectMaxMs, this.reconnectMinMs * 2 ** Math.min(failures - 1, 30));
    return Math.max(this.reconnectMinMs, Math.round(Math.random() * cap));
  }

  /**
   * A client from the pool that keeps an 'error' listener for as long as it
   * lives.  pg emits 'error' on a client whose connection breaks while no
   * query runs, and an EventEmitter with no listener throws it: a checked-out
   * client has none from the pool, and one server crash can emit several
   * errors (terminated, then ECONNRESET), also after we gave the client back
   * with an error.  The failure itself reaches us through the next query.
   */
  private async checkout(): Promise<PoolClient> {
    const c = await this.pool.connect();
    if (!c.listeners('error').includes(ignoreError)) c.on('error', ignoreError);
    return c;
  }

  private destroy(client: PoolClient | null): void {
    if (!client) return;
    try {
      client.release(new Error('outbox-client: connection dropped'));
    } catch {
      /* released already */
    }
  }

  private warn(message: string, err?: unknown): void {
    if (this.listenerCount('warning') > 0) this.emit('warning', message, err);
    else console.warn(err === undefined ? message : `${message}: ${errorMessage(err)}${sqlState(err) ? ` (${sqlState(err)})` : ''}`);
  }
}

/**
 * Sends a CancelRequest for the connection's running statement, as
 * node-postgres does internally (it works through PgBouncer too, unlike
 * pg_cancel_backend).
 */
function cancelQuery(client: PoolClient): void {
  const c = client as unknown as { processID: number | null; secretKey: number | null; host?: string; port?: number };
  if (c.processID == null || c.secretKey == null) return;
  const host = c.host ?? 'localhost';
  const port = c.port ?? 5432;
  const socket = host.startsWith('/') ? net.connect(`${host}/.s.PGSQL.${port}`) : net.connect(port, host);
  socket.on('error', () => socket.destroy());
  socket.on('connect', () => {
    const msg = Buffer.alloc(16);
    msg.writeInt32BE(16, 0);
    msg.writeInt32BE(80877102, 4);
    msg.writeInt32BE(c.processID!, 8);
    msg.writeInt32BE(c.secretKey!, 12);
    socket.end(msg);
  });
}

function settlementOf(result: unknown, err: unknown, errorText: (e: unknown) => string): Settlement {
  const o = err !== null && err !== undefined ? err : result;
  if (isOutcome(o)) {
    switch (o.kind) {
      case 'ack':
        return { kind: 'ack', delayMs: null, error: null, text: null };
      case 'retry':
        return { kind: 'retry', delayMs: o.delayMs, error: o, text: o.reason };
      case 'dead':
        return { kind: 'dead', delayMs: null, error: o, text: o.reason };
      case 'release':
        return { kind: 'release', delayMs: o.delayMs, error: o, text: null };
    }
  }
  if (err !== null && err !== undefined) return { kind: 'fail', delayMs: null, error: err, text: errorText(err) };
  return { kind: 'ack', delayMs: null, error: null, text: null };
}

function positive(n: number, what: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new RangeError(`${what} must be a positive number, got ${n}`);
  return n;
}

function nonNegative(n: number, what: string): number {
  if (!Number.isFinite(n) || n < 0) throw new RangeError(`${what} must be a number >= 0, got ${n}`);
  return n;
}

function unref(t: NodeJS.Timeout): NodeJS.Timeout {
  t.unref();
  return t;
}

/**
 * Consumes a subscription until stop() or a fatal error. Returns at once;
 * await `consumer.ready` to know it listens, `consumer.closed` for the end.
 */
export function consume<P = unknown>(pool: Pool, subscription: string, handler: Handler<P>, opts?: ConsumeOptions & { mode?: 'ack' }): Consumer;
export function consume<P = unknown>(
  pool: Pool,
  subscription: string,
  handler: TransactionHandler<P>,
  opts: ConsumeOptions & { mode: 'transaction' },
): Consumer;
export function consume(pool: Pool, subscription: string, handler: TransactionHandler<any>, opts: ConsumeOptions = {}): Consumer {
  return new Consumer(pool, subscription, handler, opts);
}
