"""Exceptions: the outcomes a handler may raise, and the consumer's fatal errors."""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error raised by outbox_client."""


# -- outcomes a handler raises -------------------------------------------


class HandlerOutcome(Exception):
    """Base class of the outcomes a handler raises instead of returning.

    Returning normally acks the event; any other exception fails it with the
    subscription's backoff.
    """


class RetryAfter(HandlerOutcome):
    """Fail this attempt and retry after exactly ``seconds`` (the subscription's
    ``max_attempts`` still applies)."""

    def __init__(self, seconds: float, reason: str | None = None) -> None:
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        super().__init__(reason or f"retry after {seconds} s")
        self.seconds = float(seconds)
        self.reason = reason


class DeadLetter(HandlerOutcome):
    """Dead-letter the event now: a permanent failure (``fail(..., dead => true)``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Release(HandlerOutcome):
    """Give the event back without using an attempt, claimable at once or after
    ``after`` seconds (``outbox.release``)."""

    def __init__(self, after: float | None = None) -> None:
        if after is not None and after < 0:
            raise ValueError("after must not be negative")
        super().__init__("release" if after is None else f"release for {after} s")
        self.after = None if after is None else float(after)


# -- fatal errors of a consumer ------------------------------------------


class ConsumerError(OutboxError):
    """A consumer stopped on an error it cannot recover from.

    ``sqlstate`` is the PostgreSQL error code when there is one; the original
    exception is ``__cause__``.
    """

    def __init__(self, message: str, *, subscription: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.subscription = subscription
        self.sqlstate = sqlstate


class SubscriptionNotFound(ConsumerError):
    """The subscription does not exist (SQLSTATE 42704)."""


class PermissionDenied(ConsumerError):
    """The role lacks ``outbox.grant_consume`` for the subscription (SQLSTATE 42501)."""


class SchemaMismatch(ConsumerError):
    """The database has no outbox extension, or one older than 1.1: run
    ``CREATE EXTENSION outbox`` or ``ALTER EXTENSION outbox UPDATE``."""
