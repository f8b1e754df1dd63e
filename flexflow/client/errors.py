"""Errors of the API client: a small hierarchy, each message saying what to do.

::

    FlexflowError
    └── ApiError                      anything the Apiframe API (or the way to it) did wrong
        ├── ApiStatusError            the API answered with an error status
        │   ├── ValidationFailed      400, with the per-field ``details``
        │   ├── AuthenticationFailed  401
        │   ├── InsufficientCredits   402
        │   ├── PermissionDenied      403
        │   ├── JobNotFound           404
        │   ├── IdempotencyConflict   409
        │   ├── RateLimited           429 (retryable)
        │   └── ServerError           5xx (retryable, except 501)
        ├── ApiTimeout                (retryable)
        ├── ApiConnectionError        (retryable)
        └── UnexpectedResponse        a body the contract does not allow

No message, repr or attribute holds the API key: errors are built from statuses, bodies and URLs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flexflow.errors import FlexflowError

#: The error class of each status that has one of its own (5xx: :class:`ServerError`).
STATUS_ERRORS: dict[int, type[ApiStatusError]] = {}


class ApiError(FlexflowError):
    """The Apiframe API, or the network on the way to it, failed a call."""

    retryable = False

    def __init__(self, message: str, *, request_id: str | None = None, summary: str | None = None) -> None:
        self.request_id = request_id
        #: The failure without the advice, for log lines about retries.
        self.summary = summary or message
        if request_id:
            message = f"{message} [x-request-id: {request_id}]"
            self.summary = f"{self.summary} [x-request-id: {request_id}]"
        super().__init__(message)


class ApiStatusError(ApiError):
    """The API answered with an error status.

    A subclass for one status names it in its class line, ``class JobNotFound(ApiStatusError, status=404)``:
    that sets its ``status_code`` and files it in :data:`STATUS_ERRORS`, where the client looks it up.
    """

    status_code: int = 0
    advice = "See the API's error text above."

    def __init_subclass__(cls, status: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status_code = status
            STATUS_ERRORS[status] = cls

    def __init__(self, error: str, *, status_code: int | None = None, request_id: str | None = None) -> None:
        if status_code is not None:
            self.status_code = status_code
        self.error = error
        summary = f"Apiframe API {self.status_code}: {error}"
        super().__init__(f"{summary}. {self.advice}", request_id=request_id, summary=summary)


class ValidationFailed(ApiStatusError, status=400):
    advice = "Fix the request; sending it again will not help."

    def __init__(
        self, error: str, *, details: Mapping[str, Sequence[str]] | None = None, request_id: str | None = None
    ) -> None:
        self.details = {key: list(messages) for key, messages in (details or {}).items()}
        if self.details:
            error += " (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(self.details.items())) + ")"
        super().__init__(error, request_id=request_id)


class AuthenticationFailed(ApiStatusError, status=401):
    advice = "Check the API key in the Airflow connection (its password field)."


class InsufficientCredits(ApiStatusError, status=402):
    def __init__(
        self,
        error: str,
        *,
        credits_required: int | None = None,
        credits_available: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.credits_required = credits_required
        self.credits_available = credits_available
        self.advice = (
            f"The job needs {credits_required} credits and {credits_available} are available: "
            "top up the Apiframe account, then run the task again."
        )
        super().__init__(error, request_id=request_id)


class PermissionDenied(ApiStatusError, status=403):
    advice = "The API key is inactive or lacks permission: activate it or use another key."


class JobNotFound(ApiStatusError, status=404):
    advice = "The job id is unknown to this account (or the job was purged); check the id and the key."


class IdempotencyConflict(ApiStatusError, status=409):
    advice = (
        "An earlier request used the same Idempotency-Key with another body. "
        "This is a bug in the caller: one key must always carry the same request."
    )


class RequestTimeout(ApiStatusError, status=408):
    """Something on the way (the API's edge, a proxy) gave up waiting for the request: a timeout, said in HTTP."""

    retryable = True
    advice = "The request timed out on the way to the API; retried with backoff until attempts ran out."


class RateLimited(ApiStatusError, status=429):
    retryable = True
    advice = (
        "Retried after the Retry-After wait (or the policy's rate_limit_wait when the API named none) "
        "until attempts ran out; lower the concurrency or try later."
    )

    def __init__(self, error: str, *, retry_after: float | None = None, request_id: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(error, request_id=request_id)


class ServerError(ApiStatusError):
    retryable = True
    advice = "The API is having an outage; retried with backoff until attempts ran out. Try again later."

    def __init__(self, error: str, *, status_code: int, request_id: str | None = None) -> None:
        # 501 (not implemented) will not get better by asking again.
        self.retryable = status_code != 501
        super().__init__(error, status_code=status_code, request_id=request_id)


class ApiTimeout(ApiError):
    retryable = True


class ApiConnectionError(ApiError):
    retryable = True


class UnexpectedResponse(ApiError):
    """A body or status the contract does not allow: the API changed, or something in between did."""
