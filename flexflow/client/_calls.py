"""The client's one implementation of request building, retries, response parsing and error mapping.

Each API call is written once as a generator that yields what it needs done (send this request,
sleep this long) and receives the outcome (a response, or a transport error thrown into it).
:class:`~flexflow.client.FluxClient` and :class:`~flexflow.client.AsyncFluxClient` only pump these
generators with blocking or awaiting I/O, so the two can never drift apart.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2

from flexflow.client import errors
from flexflow.client._version import USER_AGENT, USER_AGENT_HEADER
from flexflow.client.models import Job, parse_job
from flexflow.client.retry import RetryPolicy, parse_retry_after
from flexflow.contract import wire

log = logging.getLogger("flexflow.client")

T = TypeVar("T")


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = httpx2.Request | Sleep
#: An API call: yields steps, is sent responses (or has transport errors thrown in), returns T.
Flow = Generator[Step, httpx2.Response | None, T]


class ApiKey:
    """The API key, kept out of every repr and str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("an API key is required (the Airflow connection's password field)")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__


class ApiCalls:
    """Sans-I/O API calls for one base URL and key."""

    def __init__(
        self,
        base_url: str,
        api_key: str | ApiKey,
        retry: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key if isinstance(api_key, ApiKey) else ApiKey(api_key)
        self.retry = retry
        self._clock = clock

    def __repr__(self) -> str:
        return f"ApiCalls(base_url={self.base_url!r})"

    def submit(self, body: Mapping[str, Any], idempotency_key: str | None = None) -> Flow[str]:
        """Submit a generation request; returns the job id. Always sends an Idempotency-Key."""
        key = idempotency_key or uuid.uuid4().hex
        if len(key) > wire.IDEMPOTENCY_KEY_MAX_LENGTH:
            raise ValueError(
                f"Idempotency-Key is {len(key)} characters; the API allows {wire.IDEMPOTENCY_KEY_MAX_LENGTH}"
            )
        request = self._request("POST", wire.SUBMIT_PATH, json=dict(body), headers={wire.IDEMPOTENCY_HEADER: key})
        response = yield from self._call(request)
        data = _json_object(response)
        job_id = data.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            raise errors.UnexpectedResponse(
                f"submit answered {response.status_code} without a jobId", request_id=_request_id(response)
            )
        # DEBUG: callers log the submit with what they know (the operator: the try's generation).
        log.debug("submitted job %s (Idempotency-Key %s, x-request-id %s)", job_id, key, _request_id(response))
        return job_id

    def get_job(self, job_id: str) -> Flow[Job]:
        response = yield from self._call(self._request("GET", wire.job_path(job_id)))
        return parse_job(_json_object(response), _request_id(response))

    def list_jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> Flow[dict[str, Any]]:
        params = {"model": wire.MODEL_ID, "limit": str(limit)}
        params.update({k: v for k, v in (("status", status), ("cursor", cursor)) if v})
        response = yield from self._call(self._request("GET", wire.JOBS_PATH, params=params))
        return _json_object(response)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx2.Request:
        headers = {
            wire.API_KEY_HEADER: self._key.reveal(),
            "Accept": "application/json",
            USER_AGENT_HEADER: USER_AGENT,
            **kwargs.pop("headers", {}),
        }
        return httpx2.Request(method, self.base_url + path, headers=headers, **kwargs)

    def _call(self, request: httpx2.Request) -> Flow[httpx2.Response]:
        """Send with retries. A POST is retried only when it carries an Idempotency-Key."""
        retry_safe = request.method == "GET" or wire.IDEMPOTENCY_HEADER in request.headers
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = yield request
                assert response is not None
                error = error_for(response)
                if error is None:
                    return response
            except httpx2.TimeoutException as exc:
                error = errors.ApiTimeout(
                    f"{request.method} {request.url.path} timed out ({type(exc).__name__}); "
                    "the API is slow or unreachable, retried until attempts ran out"
                )
            except httpx2.TransportError as exc:
                error = errors.ApiConnectionError(
                    f"{request.method} {request.url.path} failed: {type(exc).__name__}: {exc}; "
                    f"check that {self.base_url} is reachable"
                )
            delay = self.retry.delay(attempt, error, self._clock() - started) if retry_safe else None
            if delay is None:
                log.warning("%s %s failed after %d attempt(s): %s", request.method, request.url.path, attempt, error)
                raise error
            log.warning(
                "%s %s attempt %d failed: %s; retrying in %.2fs",
                request.method,
                request.url.path,
                attempt,
                error.summary,
                delay,
            )
            yield Sleep(delay)


def _request_id(response: httpx2.Response) -> str | None:
    return response.headers.get(wire.REQUEST_ID_HEADER)


def _json_object(response: httpx2.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise errors.UnexpectedResponse(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not a JSON object (content-type {response.headers.get('content-type')!r})",
            request_id=_request_id(response),
        )
    return data


def error_for(response: httpx2.Response) -> errors.ApiError | None:
    """The typed error of a response, or None for a success."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    body = body if isinstance(body, dict) else {}
    text = str(body.get("error") or response.reason_phrase or "error")
    request_id = _request_id(response)
    if status == 400:
        details = body.get("details")
        return errors.ValidationFailed(
            text, details=details if isinstance(details, dict) else None, request_id=request_id
        )
    if status == 402:
        return errors.InsufficientCredits(
            text,
            credits_required=body.get("creditsRequired"),
            credits_available=body.get("creditsAvailable"),
            request_id=request_id,
        )
    if status == 429:
        retry_after = parse_retry_after(response.headers.get(wire.RETRY_AFTER_HEADER))
        return errors.RateLimited(text, retry_after=retry_after, request_id=request_id)
    if status >= 500:
        return errors.ServerError(text, status_code=status, request_id=request_id)
    if status in errors.STATUS_ERRORS:
        return errors.STATUS_ERRORS[status](text, request_id=request_id)
    return errors.ApiStatusError(text, status_code=status, request_id=request_id)
