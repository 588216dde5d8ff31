"""When to retry a request to an API teacher, how long to wait, and how many to send at once.

- `classify`: the kind of a failed attempt (rate limited, server error, timeout, ...);
- `retryable`, `retry_after`, `backoff`, `backoff_base`: retry what the official
  client retries, honour `Retry-After`, else back off exponentially with jitter,
  longer after a timeout;
- `attempt_timeout`: a request that timed out is retried with a longer timeout;
- `InFlightLimit`: the requests in flight, halved when the endpoint falls behind.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import random
import threading
import time

import openai

MAX_BACKOFF_S = 60.0  # our own exponential backoff stops growing here
MAX_RETRY_AFTER_S = 600.0  # a server's Retry-After is honoured up to this
MAX_TIMEOUT_GROWTH = 8  # a request that keeps timing out waits at most 8x request_timeout


def classify(error: Exception) -> str:
    """The kind of a failed attempt, as the health report counts it."""
    if isinstance(error, openai.APITimeoutError) or getattr(error, "status_code", None) == 408:
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.RateLimitError):
        return "rate_limited"
    if isinstance(error, openai.APIStatusError):
        return "server_error" if error.status_code >= 500 else "client_error"
    return "other"


def retryable(error: Exception) -> bool:
    """Worth another try: what the official client retries (timeouts, dropped
    connections, 408, 409, 429, 5xx), except a 429 that means the quota is spent."""
    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return True
    status = getattr(error, "status_code", None)
    if status == 429:
        return getattr(error, "code", None) != "insufficient_quota"
    return status in (408, 409) or (status is not None and status >= 500)


def retry_after(error: Exception) -> float | None:
    """Seconds the server asked us to wait (Retry-After: seconds or an HTTP date), or
    None when it did not ask, or asked in a form we cannot read."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if value is None:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates: RFC 5322 says UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return min(MAX_RETRY_AFTER_S, max(0.0, when.timestamp() - time.time()))


def backoff(attempt: int, base: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [1/2, 1] of base * 2^attempt."""
    return min(MAX_BACKOFF_S, base * 2 ** attempt) * rng.uniform(0.5, 1.0)


def backoff_base(error: Exception, retry_backoff: float, request_timeout: float) -> float:
    """The first retry delay after `error`. A timeout means the server is slow, most
    often overloaded: retrying at once adds a request to the queue it is already
    behind on, so the backoff then starts at a quarter of the timeout."""
    if classify(error) == "timeout":
        return max(retry_backoff, request_timeout / 4)
    return retry_backoff


def attempt_timeout(request_timeout: float, timeouts_so_far: int) -> float:
    """The timeout of the next attempt of a request that timed out `timeouts_so_far`
    times: doubled each time, up to MAX_TIMEOUT_GROWTH x. On a server slower than the
    timeout (a starved CPU), a fixed timeout fails every attempt; a growing one lets
    the server finish (distill serve keeps a job as long as its client says it waits)."""
    return request_timeout * min(MAX_TIMEOUT_GROWTH, 2 ** timeouts_so_far)


class InFlightLimit:
    """How many requests may be in flight, adapted to the endpoint as TCP adapts its
    window (AIMD): halved when a request times out or is rate limited (the server is
    behind: more requests at once only make every one of them slower), then raised by
    one for each window's worth of successes, up to `maximum`. A batching server answers a smaller
    batch sooner, so under overload fewer requests time out and none is wasted."""

    def __init__(self, maximum: int):
        self.maximum, self.limit, self.lowest = maximum, float(maximum), maximum
        self.in_flight, self.last_cut = 0, -1.0
        self.condition = threading.Condition()

    @contextlib.contextmanager
    def slot(self, stopped: threading.Event):
        """Wait for room (or for `stopped`); yields the time the request is sent."""
        with self.condition:
            while self.in_flight >= int(self.limit) and not stopped.is_set():
                self.condition.wait(timeout=0.5)
            self.in_flight += 1
        try:
            yield time.monotonic()
        finally:
            with self.condition:
                self.in_flight -= 1
                self.condition.notify_all()

    def record(self, outcome: str, sent: float) -> None:
        """Adapt to one answer: `outcome` as `classify` names it, or 'ok'."""
        with self.condition:
            if outcome in ("timeout", "rate_limited"):  # the endpoint says: less at once
                # one cut per episode: requests sent before the last cut saw the old load
                if sent > self.last_cut:
                    self.limit = max(1.0, self.limit / 2)
                    self.lowest = min(self.lowest, int(self.limit))
                    self.last_cut = time.monotonic()
            elif outcome == "ok":
                self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
            self.condition.notify_all()
