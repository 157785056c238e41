"""The retry policy every outgoing call follows (Loki, the remote SDK sink, Grafana), as named constants.

Use :meth:`RetryPolicy.call` to run one call under it::

    policy = RetryPolicy(initial_backoff_s=0.5, deadline_s=60)
    policy.call(lambda: push(body), interrupt=stopping)   # stopping: a threading.Event that ends a backoff

``fn`` signals a failed attempt by raising. :class:`SendError` carries what the policy needs to judge
it (an HTTP status, a ``Retry-After``); a transport error (``OSError``, which ``requests``' connection
errors and timeouts are) is retried; anything else is a bug and propagates at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")

_RNG = random.Random()


def parse_retry_after(value: str | float | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).

    >>> parse_retry_after("3")
    3.0
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return max(0.0, float(value))
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class SendError(Exception):
    """One failed attempt, as the policy sees it.

    ``status``: the HTTP status, or None for a transport failure (refused, reset, timed out).
    ``retry_after``: seconds the receiver asked for (``Retry-After``), if any. ``reason``: a short
    label for counters and logs (``http_503``, ``timeout``, ``connection``). ``retryable``
    overrides the policy's judgement of the status when set.
    """

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None,
                 reason: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason or (f"http_{status}" if status is not None else "connection")
        self.retryable = retryable


class RetriesExhausted(Exception):
    """The policy gave up: out of attempts, or the next backoff would pass the deadline. ``last`` is the
    error of the final attempt."""

    def __init__(self, attempts: int, last: BaseException):
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


class RetryInterrupted(Exception):
    """The caller's ``interrupt`` was set (the owner is shutting down) while a retry was pending."""

    def __init__(self, attempts: int, last: BaseException):
        super().__init__(f"interrupted after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry 429/500/502/503/504 and transport errors with jittered exponential backoff.

    ``Retry-After`` is honoured (capped at ``max_retry_after_s``); any other 4xx
    is not retried. One call is retried for at most ``deadline_s`` (and at most
    ``max_attempts`` attempts, when set), then it is given up on, and the caller
    counts what it drops. A sender that can split its batch does so on
    ``split_statuses`` (the receiver refused the content, not the moment), to
    find the entries refused and send the rest.
    """

    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    split_statuses: frozenset[int] = frozenset({400, 413})
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 %
    deadline_s: float = 300.0
    max_retry_after_s: float = 300.0
    max_attempts: int | None = None

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``attempt + 1`` (0-based ``attempt``), jittered."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** min(attempt, 64))  # no overflow
        return base * (1 + (rng or _RNG).uniform(-self.jitter, self.jitter))

    def retryable(self, error: BaseException) -> bool:
        """Whether another attempt may succeed: a retry status, a transport error, or what the error says."""
        flag = getattr(error, "retryable", None)
        if flag is not None:
            return bool(flag)
        status = getattr(error, "status", None)
        if status is None:
            response = getattr(error, "response", None)  # requests.HTTPError
            status = getattr(response, "status_code", None)
        if status is not None:
            return status in self.retry_statuses
        # a SendError without a status, ConnectionError, TimeoutError, requests' transport errors
        return isinstance(error, (SendError, OSError))

    def delay(self, attempt: int, error: BaseException, rng: random.Random | None = None) -> float:
        """The backoff after failed attempt ``attempt`` (0-based), raised to the error's ``Retry-After``."""
        wait = self.backoff(attempt, rng)
        after = getattr(error, "retry_after", None)
        if after is None:
            response = getattr(error, "response", None)
            after = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
        after = parse_retry_after(after)
        if after is not None:
            wait = max(wait, min(after, self.max_retry_after_s))
        return wait

    def call(self, fn: Callable[[], T], *, interrupt: threading.Event | None = None,
             wait: Callable[[float, BaseException], bool] | None = None,
             on_retry: Callable[[BaseException, int, float], None] | None = None,
             started: float | None = None, rng: random.Random | None = None,
             clock: Callable[[], float] = time.monotonic) -> T:
        """``fn()``, retried per the policy; returns its result.

        Raises the error itself when it is not retryable, :class:`RetriesExhausted` past
        ``max_attempts`` or when the next wait would end past ``deadline_s`` (counted from
        ``started``, default now: a sender that splits a batch passes one start for all its parts),
        and :class:`RetryInterrupted` when ``interrupt`` is set after a failure or during a wait.
        ``wait(delay, error)`` replaces the plain interruptible sleep; it returns False when it was
        interrupted (and may return early, True, to retry sooner). ``on_retry(error, attempt, delay)``
        is told before each wait.
        """
        start = clock() if started is None else started
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as e:  # judged below; what is not retryable propagates unchanged
                if not self.retryable(e):
                    raise
                error = e
            attempt += 1
            if interrupt is not None and interrupt.is_set():
                raise RetryInterrupted(attempt, error) from error
            if self.max_attempts is not None and attempt >= self.max_attempts:
                raise RetriesExhausted(attempt, error) from error
            delay = self.delay(attempt - 1, error, rng)
            if clock() - start + delay > self.deadline_s:
                raise RetriesExhausted(attempt, error) from error
            if on_retry is not None:
                on_retry(error, attempt, delay)
            if wait is not None:
                go_on = wait(delay, error)
            elif interrupt is not None:
                go_on = not interrupt.wait(delay)
            else:
                time.sleep(delay)
                go_on = True
            if not go_on:
                raise RetryInterrupted(attempt, error) from error


DEFAULT_RETRY = RetryPolicy()
