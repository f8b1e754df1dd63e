"""HTTP client of the Apiframe API for Flux 2 Flex, blocking and asyncio, on httpx2."""

from flexflow.client._calls import ApiKey
from flexflow.client._client import DEFAULT_TIMEOUT, AsyncFluxClient, FluxClient
from flexflow.client._version import USER_AGENT
from flexflow.client.errors import (
    ApiConnectionError,
    ApiError,
    ApiStatusError,
    ApiTimeout,
    AuthenticationFailed,
    IdempotencyConflict,
    InsufficientCredits,
    JobNotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServerError,
    UnexpectedResponse,
    ValidationFailed,
)
from flexflow.client.models import Job, parse_result
from flexflow.client.retry import NO_RETRIES, RetryPolicy
from flexflow.errors import FlexflowError

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_RETRIES",
    "USER_AGENT",
    "ApiConnectionError",
    "ApiError",
    "ApiKey",
    "ApiStatusError",
    "ApiTimeout",
    "AsyncFluxClient",
    "AuthenticationFailed",
    "FlexflowError",
    "FluxClient",
    "IdempotencyConflict",
    "InsufficientCredits",
    "Job",
    "JobNotFound",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "UnexpectedResponse",
    "ValidationFailed",
    "parse_result",
]
