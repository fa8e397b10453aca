"""Events, options, counters and hooks."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Callable, Literal, Mapping, Sequence

Mode = Literal["ack", "transaction"]


@dataclass(frozen=True)
class Event:
    """One delivery of an event to a subscription, as ``outbox.claim`` returns it.

    ``cancelled`` is set when the consumer withdraws the handler's work (its
    lease was lost, or the consumer is stopping past its grace period).  Async
    handlers are also cancelled through asyncio; sync handlers should check it
    in long loops.
    """

    event_id: int
    topic: str
    key: str | None
    payload: Any
    headers: Mapping[str, Any] | None
    attempt: int
    enqueued_at: datetime
    subscription: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


@dataclass
class Stats:
    """Counters of one consumer; read them at any time (``consumer.stats``)."""

    claimed: int = 0
    handled: int = 0  # handler returned and the event was acked
    failed: int = 0  # failed and scheduled for another attempt (exceptions and RetryAfter)
    dead: int = 0  # dead-lettered (max_attempts reached, or DeadLetter)
    released: int = 0  # given back without using an attempt (Release, or stop)
    leases_lost: int = 0  # deliveries whose lease the consumer lost
    stale_settlements: int = 0  # fail/release that returned NULL: the lease had been lost
    reconnects: int = 0  # LISTEN connection re-established after a failure
    transient_errors: int = 0  # errors of the transient classes, retried
    lag_last: float | None = None  # seconds from enqueue to handler start, last event
    lag_max: float = 0.0  # the largest seen

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Hooks:
    """Callbacks; each is optional, runs on the consumer's event loop and must
    not block.  An exception in a hook is logged and ignored."""

    on_claimed: Callable[[Sequence[Event]], None] | None = None
    on_start: Callable[[Event, float], None] | None = None  # (event, lag in seconds)
    on_handled: Callable[[Event, float], None] | None = None  # (event, handler duration)
    on_failed: Callable[[Event, BaseException, str | None], None] | None = None  # state or None
    on_released: Callable[[Event], None] | None = None
    on_lease_lost: Callable[[Event], None] | None = None
    on_reconnect: Callable[[BaseException, float], None] | None = None  # (error, delay)
    on_poll_only: Callable[[str], None] | None = None  # (reason)


@dataclass(frozen=True)
class ConsumerOptions:
    """Settings of a consumer; every field can also be passed to ``consume`` as a
    keyword argument.  Durations are in seconds."""

    mode: Mode = "ack"
    concurrency: int = 10
    batch_size: int = 100  # ack mode: largest claim (never more than free slots)
    tx_batch_size: int = 10  # transaction mode: events per transaction
    lease: float = 30.0  # passed to every claim; extended every lease / 3 (ack mode)
    poll_interval: float = 30.0  # safety poll while LISTEN works
    listen: bool | None = None  # None: LISTEN, poll-only if it cannot work; False: poll-only
    listen_conninfo: str | None = None  # direct connection for LISTEN (default: the pool's)
    probe_timeout: float = 2.0  # how long the first notification round trip may take
    heartbeat: float = 10.0  # LISTEN connection check (pg_listening_channels())
    poll_only_wait: float = 5.0  # claim(..., wait) in poll-only mode
    poll_only_interval: float = 1.0  # poll-only without claim(..., wait)
    grace: float = 25.0  # stop(): time running handlers get before cancellation
    cancel_timeout: float = 5.0  # after cancellation, wait this long for handlers
    ack_batch: int = 1000  # most ids in one ack call
    reconnect_min: float = 0.1
    reconnect_max: float = 30.0
    handle_signals: bool = False  # stop on SIGTERM / SIGINT
    hooks: Hooks = field(default_factory=Hooks)
    logger: logging.Logger | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("ack", "transaction"):
            raise ValueError("mode must be 'ack' or 'transaction'")
        for name in ("concurrency", "batch_size", "tx_batch_size", "ack_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.batch_size > 10000 or self.tx_batch_size > 10000:
            raise ValueError("batch sizes are at most 10000")
        for name in ("lease", "poll_interval", "heartbeat", "probe_timeout",
                     "poll_only_wait", "poll_only_interval", "reconnect_min", "reconnect_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.grace < 0 or self.cancel_timeout < 0:
            raise ValueError("grace and cancel_timeout must not be negative")


def make_options(options: ConsumerOptions | None, overrides: Mapping[str, Any]) -> ConsumerOptions:
    base = options or ConsumerOptions()
    if not overrides:
        return base
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    for k, v in overrides.items():
        if k not in values:
            raise TypeError(f"unknown consumer option {k!r}")
        values[k] = v
    return ConsumerOptions(**values)
