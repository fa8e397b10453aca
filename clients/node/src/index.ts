export { enqueue, enqueueMany } from './enqueue.js';
export type { EnqueueOptions, EnqueueItem, EnqueueManyOptions } from './enqueue.js';
export { consume, Consumer } from './consumer.js';
export type {
  ConsumeOptions,
  ConsumerEvents,
  ConsumerState,
  Counters,
  Handler,
  HandlerResult,
  TransactionHandler,
} from './consumer.js';
export { Outcome, ack, retryAfter, deadLetter, release, isOutcome } from './outcomes.js';
export type { OutcomeKind } from './outcomes.js';
export {
  OutboxError,
  UnknownSubscriptionError,
  PermissionDeniedError,
  SchemaVersionError,
  InvalidArgumentError,
  LeaseLostError,
  ConsumerStoppedError,
  isTransient,
} from './errors.js';
export type { OutboxEvent, Queryable } from './types.js';
