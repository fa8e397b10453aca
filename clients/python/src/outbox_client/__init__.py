"""outbox_client: producer and consumer library for the outbox PostgreSQL extension.

Async API here (psycopg ``AsyncConnection`` / ``AsyncConnectionPool``); its sync
twin is :mod:`outbox_client.sync`; test helpers in :mod:`outbox_client.testing`.
"""

from ._consumer import Consumer, consume
from ._errors import (ConsumerError, DeadLetter, HandlerOutcome, OutboxError, PermissionDenied,
                      Release, RetryAfter, SchemaMismatch, SubscriptionNotFound)
from ._produce import enqueue, enqueue_many
from ._types import ConsumerOptions, Event, Hooks, Mode, Stats

__all__ = [
    "Consumer",
    "ConsumerError",
    "ConsumerOptions",
    "DeadLetter",
    "Event",
    "HandlerOutcome",
    "Hooks",
    "Mode",
    "OutboxError",
    "PermissionDenied",
    "Release",
    "RetryAfter",
    "SchemaMismatch",
    "Stats",
    "SubscriptionNotFound",
    "consume",
    "enqueue",
    "enqueue_many",
]

__version__ = "0.1.0"
