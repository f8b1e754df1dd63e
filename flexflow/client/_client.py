"""The blocking and the asyncio client: thin drivers of the shared calls in :mod:`._calls`."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from functools import cache
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import httpx2

from flexflow.client._calls import ApiCalls, ApiKey, Flow, Sleep
from flexflow.client.models import Job
from flexflow.client.retry import RetryPolicy

T = TypeVar("T")

#: The official SDK waits 60 s for a response; connecting should take far less.
DEFAULT_TIMEOUT = httpx2.Timeout(60.0, connect=10.0)
#: A bounded pool: httpx2's default has no limit, and with a thousand triggers polling through one
#: client the pool grew to hundreds of connections whose bookkeeping stalled the event loop for
#: over a second. Idle connections live 30 s so they outlast the gaps between polls.
DEFAULT_LIMITS = httpx2.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)


@cache
def _shared_ssl_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context()


def _verify(base_url: str) -> ssl.SSLContext | bool:
    """One TLS context per process (loading the CA bundle costs ~25 ms); none for plain http."""
    return _shared_ssl_context() if base_url.startswith("https://") else False


class FluxClient:
    """Blocking client, for Airflow workers."""

    def __init__(
        self,
        base_url: str,
        api_key: str | ApiKey,
        *,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self._calls = ApiCalls(base_url, api_key, retry or RetryPolicy())
        self._http = httpx2.Client(
            timeout=timeout, transport=transport, follow_redirects=False, verify=_verify(base_url)
        )

    def __repr__(self) -> str:
        return f"FluxClient(base_url={self._calls.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._calls.base_url

    def submit(self, request: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        """Submit a generation request and return its job id."""
        return self._drive(self._calls.submit(request, idempotency_key))

    def get_job(self, job_id: str) -> Job:
        return self._drive(self._calls.get_job(job_id))

    def list_jobs(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        return self._drive(self._calls.list_jobs(status=status, limit=limit, cursor=cursor))

    def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    response = self._http.send(step)
                    response.read()
                except httpx2.TransportError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
        except StopIteration as done:
            # StopIteration is not generic: its value is what the Flow[T] returned, a T.
            return cast(T, done.value)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncFluxClient:
    """Asyncio client, for triggers: one instance serves many concurrent jobs."""

    def __init__(
        self,
        base_url: str,
        api_key: str | ApiKey,
        *,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        limits: httpx2.Limits | None = None,
    ) -> None:
        self._calls = ApiCalls(base_url, api_key, retry or RetryPolicy())
        self._http = httpx2.AsyncClient(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=limits or DEFAULT_LIMITS,
            verify=_verify(base_url),
        )

    def __repr__(self) -> str:
        return f"AsyncFluxClient(base_url={self._calls.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._calls.base_url

    async def submit(self, request: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        return await self._drive(self._calls.submit(request, idempotency_key))

    async def get_job(self, job_id: str) -> Job:
        return await self._drive(self._calls.get_job(job_id))

    async def list_jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        return await self._drive(self._calls.list_jobs(status=status, limit=limit, cursor=cursor))

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                    continue
                try:
                    response = await self._http.send(step)
                    await response.aread()
                except httpx2.TransportError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
        except StopIteration as done:
            # StopIteration is not generic: its value is what the Flow[T] returned, a T.
            return cast(T, done.value)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
