"""The blocking and the asyncio client: thin drivers of the shared calls in :mod:`._calls`.

They share their options and setup (:class:`_ClientBase`) and the stepping of a call's flow
(:class:`_Run`); each only does the I/O its own way.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cache
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import httpx2

from flexflow.client._calls import ApiCalls, ApiKey, Flow, Sleep, Step
from flexflow.client.models import Job
from flexflow.client.retry import RetryPolicy

T = TypeVar("T")
TransportT = TypeVar("TransportT", httpx2.BaseTransport, httpx2.AsyncBaseTransport)
PoolT = TypeVar("PoolT", httpx2.Client, httpx2.AsyncClient)

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


#: What came of a step, for the flow: the response, the transport error, or None after a pause.
Outcome = httpx2.Response | httpx2.TransportError | None


class _Run(Generic[T]):
    """One API call's flow, run by a client that does the I/O.

    Iterating gives the steps to do (a request to send, a pause); :meth:`reply` hands the flow what
    came of each before the next. When the flow returns, iteration stops and :attr:`result` holds
    what it returned; when it raises, so does the iteration.
    """

    __slots__ = ("_flow", "_outcome", "result")

    result: T

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._outcome: Outcome = None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Step:
        outcome, self._outcome = self._outcome, None
        try:
            if isinstance(outcome, httpx2.TransportError):
                return self._flow.throw(outcome)
            return self._flow.send(outcome)
        except StopIteration as done:
            # StopIteration is not generic: its value is what the Flow[T] returned, a T.
            self.result = cast(T, done.value)
            raise

    def reply(self, outcome: Outcome) -> None:
        self._outcome = outcome


class _ClientBase(ABC, Generic[TransportT, PoolT]):
    """What the blocking and the asyncio client share: their options, the calls, the HTTP pool's setup.

    ``limits`` bounds the connection pool; without it each client uses its ``_default_limits``.
    """

    #: The pool's limits when none are given; None keeps httpx2's own.
    _default_limits: ClassVar[httpx2.Limits | None] = None

    def __init__(
        self,
        base_url: str,
        api_key: str | ApiKey,
        *,
        timeout: float | httpx2.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: TransportT | None = None,
        limits: httpx2.Limits | None = None,
    ) -> None:
        self._calls = ApiCalls(base_url, api_key, retry or RetryPolicy())
        options: dict[str, Any] = {
            "timeout": timeout,
            "transport": transport,
            "follow_redirects": False,
            "verify": _verify(base_url),
        }
        limits = limits or self._default_limits
        if limits is not None:
            options["limits"] = limits
        self._http: PoolT = self._open_pool(**options)

    @abstractmethod
    def _open_pool(self, **options: Any) -> PoolT:
        """The HTTP client (httpx2's blocking or async one) with these options."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._calls.base_url!r})"

    @property
    def base_url(self) -> str:
        return self._calls.base_url


class FluxClient(_ClientBase[httpx2.BaseTransport, httpx2.Client]):
    """Blocking client, for Airflow workers."""

    def _open_pool(self, **options: Any) -> httpx2.Client:
        return httpx2.Client(**options)

    def submit(self, request: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        """Submit a generation request and return its job id."""
        return self._drive(self._calls.submit(request, idempotency_key))

    def get_job(self, job_id: str) -> Job:
        return self._drive(self._calls.get_job(job_id))

    def list_jobs(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        return self._drive(self._calls.list_jobs(status=status, limit=limit, cursor=cursor))

    def _drive(self, flow: Flow[T]) -> T:
        run = _Run(flow)
        for step in run:
            run.reply(self._do(step))
        return run.result

    def _do(self, step: Step) -> Outcome:
        """Sleep, or send the request and read its body in full."""
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        try:
            response = self._http.send(step)
            response.read()
        except httpx2.TransportError as exc:
            return exc
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class AsyncFluxClient(_ClientBase[httpx2.AsyncBaseTransport, httpx2.AsyncClient]):
    """Asyncio client, for triggers: one instance serves many concurrent jobs."""

    _default_limits = DEFAULT_LIMITS

    def _open_pool(self, **options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(**options)

    async def submit(self, request: Mapping[str, Any], idempotency_key: str | None = None) -> str:
        return await self._drive(self._calls.submit(request, idempotency_key))

    async def get_job(self, job_id: str) -> Job:
        return await self._drive(self._calls.get_job(job_id))

    async def list_jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict[str, Any]:
        return await self._drive(self._calls.list_jobs(status=status, limit=limit, cursor=cursor))

    async def _drive(self, flow: Flow[T]) -> T:
        run = _Run(flow)
        for step in run:
            run.reply(await self._do(step))
        return run.result

    async def _do(self, step: Step) -> Outcome:
        """Sleep, or send the request and read its body in full."""
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        try:
            response = await self._http.send(step)
            await response.aread()
        except httpx2.TransportError as exc:
            return exc
        return response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()
