"""When to try a call again, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from flexflow.client.errors import ApiError, RateLimited


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: full-jitter exponential backoff, and exactly the Retry-After a 429 asks for.

    The defaults follow the official SDK's policy (backoff from 250 ms capped at 8 s) with more
    attempts, since a scheduled pipeline prefers waiting to failing.
    """

    max_attempts: int = 5
    max_elapsed: float = 120.0
    backoff_base: float = 0.25
    backoff_cap: float = 8.0
    retry_after_cap: float = 60.0
    jitter: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, error: ApiError, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or None when the error is final."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            wait = min(error.retry_after, self.retry_after_cap)
        else:
            wait = self.jitter.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        if elapsed + wait > self.max_elapsed:
            return None
        return wait


NO_RETRIES = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
