"""When to try a call again, and how long to wait first."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from flexflow.client.errors import ApiError, RateLimited

#: A default 429 wait is stretched by up to this fraction, never shortened: clients told to wait
#: together come back spread out instead of in one burst, and none comes back before it was asked to.
RATE_LIMIT_SPREAD = 0.2


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: full-jitter exponential backoff, and exactly the Retry-After a 429 asks for.

    A 429 without a readable Retry-After waits ``rate_limit_wait`` (a little longer, jittered): the
    backoff's first steps (a quarter second) would only spend the attempts while the limit lasts.
    No wait exceeds ``retry_after_cap``, and none is taken that would end past ``max_elapsed``.

    The defaults follow the official SDK's policy (backoff from 250 ms capped at 8 s) with more
    attempts, since a scheduled pipeline prefers waiting to failing.
    """

    max_attempts: int = 5
    max_elapsed: float = 120.0
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    retry_after_cap: float = 60.0
    rate_limit_wait: float = 5.0
    jitter: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_limit_wait) and self.rate_limit_wait >= 0):
            raise ValueError(f"RetryPolicy.rate_limit_wait is {self.rate_limit_wait!r}; give a number of seconds >= 0")

    def delay(self, attempt: int, error: ApiError, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the error is final."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if isinstance(error, RateLimited):
            wait = min(self._rate_limit_wait(error.retry_after), self.retry_after_cap)
        else:
            wait = self.jitter.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        if elapsed + wait > self.max_elapsed:
            return None
        return wait

    def _rate_limit_wait(self, retry_after: float | None) -> float:
        """What the API asked for; else the default, stretched by a random part of the spread."""
        if retry_after is not None:
            return retry_after
        return self.rate_limit_wait * (1 + self.jitter.uniform(0, RATE_LIMIT_SPREAD))


NO_RETRIES = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats but name no wait: the default applies
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
