"""FluxHook: the Apiframe API's front for Airflow (connection type ``apiframe``).

Every API call an operator, sensor or trigger makes goes through the hook, blocking or asyncio, as in
Airflow's own providers: submitting, reading and waiting for a job, deciding whether an earlier job
can be reused, and ``test_connection`` (the connection form's "Test" button). Operators and triggers
stay thin, and tests can put a fake hook where the emulator is the wrong tool.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from airflow.sdk.log import mask_secret

from flexflow import defaults
from flexflow.airflow.outcome import JobOutcome
from flexflow.airflow.polling import POLL, RECONNECT, Pause, PollAnswer, WaitFlow, WaitStep, WaitTiming, wait_flow
from flexflow.client import ApiError, ApiKey, AsyncFluxClient, FluxClient, Job, JobNotFound, RetryPolicy
from flexflow.client.hosts import is_loopback
from flexflow.client.results import DOWNLOAD_RETRY, first_unusable
from flexflow.contract import output_size
from flexflow.contract.wire import PRODUCTION_BASE_URL, JobStatus

#: A client replaced after a 401 is closed this much later, so requests in flight on it can finish.
STALE_CLIENT_GRACE = 60.0


@dataclass(frozen=True)
class ApiSettings:
    """What a connection says about reaching the API. The key is wrapped: it never prints."""

    base_url: str
    api_key: ApiKey = field(repr=False)
    request_timeout: float = defaults.REQUEST_TIMEOUT
    max_attempts: int = defaults.MAX_ATTEMPTS
    job_link: str = defaults.JOB_LINK

    @classmethod
    def from_connection(cls, conn: Connection) -> ApiSettings:
        if not conn.password:
            raise ValueError(
                f"connection '{conn.conn_id}' has no API key: set its password field (shown as 'API key') "
                "to the Apiframe key"
            )
        mask_secret(conn.password)
        extra: dict[str, Any] = conn.extra_dejson or {}
        return cls(
            base_url=_base_url(conn),
            api_key=ApiKey(conn.password),
            request_timeout=float(extra.get("request_timeout") or defaults.REQUEST_TIMEOUT),
            max_attempts=int(extra.get("max_attempts") or defaults.MAX_ATTEMPTS),
            job_link=str(extra.get("job_link") or defaults.JOB_LINK),
        )

    def link_for(self, job_id: str) -> str:
        return self.job_link.format(base_url=self.base_url, job_id=job_id)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of both clients."""
        return {"timeout": self.request_timeout, "retry": RetryPolicy(max_attempts=self.max_attempts)}


def _base_url(conn: Connection) -> str:
    """The host field holds a base URL; a bare host gets https (http for loopback, where emulators run)."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return PRODUCTION_BASE_URL
    if "://" in host:
        return host
    scheme = "http" if is_loopback(host) else "https"
    return f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")


def _quiet_transport_logs() -> None:
    """httpx2 logs every request at INFO: a thousand waiting jobs would fill the task logs with polls.

    Done when the hook first builds a client, never on import (Airflow quiets httpx the same way).
    flexflow logs what matters: submits, transitions, retries.
    """
    logging.getLogger("httpx2").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Reuse:
    """Whether a job an earlier try submitted can stand for this try, and why."""

    reusable: bool
    why: str


class FluxHook(BaseHook):
    """The Apiframe API through an ``apiframe`` connection: base URL (host field) and API key (password)."""

    conn_name_attr = "apiframe_conn_id"
    default_conn_name = defaults.CONNECTION_ID
    conn_type = "apiframe"
    hook_name = "Apiframe (Flux)"

    #: How result checks in :meth:`reuse` retry transient faults (tests put a fast, seeded one here).
    result_retry: RetryPolicy = DOWNLOAD_RETRY

    def __init__(self, apiframe_conn_id: str = defaults.CONNECTION_ID) -> None:
        super().__init__()
        self.apiframe_conn_id = apiframe_conn_id

    # -- the connection ------------------------------------------------------------------------------

    @cached_property
    def settings(self) -> ApiSettings:
        """The connection's settings; a missing or keyless connection fails the task at once.

        Retrying cannot fix a configuration error, and every retry of a submit task would wait
        its retry delay for nothing.
        """
        try:
            return ApiSettings.from_connection(self.get_connection(self.apiframe_conn_id))
        except (AirflowNotFoundException, ValueError) as exc:
            raise AirflowFailException(
                f"the Apiframe connection '{self.apiframe_conn_id}' is not usable: {exc}. Create it with "
                f"`airflow connections add {self.apiframe_conn_id} --conn-type apiframe --conn-host <base URL> "
                "--conn-password <API key>` (or an AIRFLOW_CONN_* variable / secrets backend)"
            ) from None

    def job_link(self, job_id: str) -> str:
        """Where the "Apiframe job" button of a task points."""
        return self.settings.link_for(job_id)

    def get_conn(self) -> FluxClient:
        """The blocking client, built once per hook; :meth:`close` closes it."""
        if "_client" not in vars(self):
            _quiet_transport_logs()
            self._client = FluxClient(self.settings.base_url, self.settings.api_key, **self.settings.client_options())
        return self._client

    def close(self) -> None:
        client = vars(self).pop("_client", None)
        if client is not None:
            client.close()

    def _reconnect(self) -> None:
        """Read the connection again (its key may have been rotated) for the next call."""
        self.close()
        vars(self).pop("settings", None)

    # -- blocking calls, for workers --------------------------------------------------------------------

    def submit(self, request: Mapping[str, Any], idempotency_key: str) -> str:
        """Submit a generation request; the same key always yields the same job (the API deduplicates)."""
        return self.get_conn().submit(request, idempotency_key)

    def get_job(self, job_id: str) -> Job:
        return self.get_conn().get_job(job_id)

    def reuse(self, job_id: str, request: Mapping[str, Any] | None = None) -> Reuse:
        """Whether an earlier try's job still stands: not if it is unknown, failed, cancelled, or completed
        with results that are gone or unusable (each downloaded and checked, as publishing would).

        ``request``: the body the job was submitted with; its format and pixel size are then checked too.
        A result that cannot be checked now (a transient fault outlasting the retries) keeps the job:
        paying again for what may be there is the one thing this must not do by accident.
        """
        try:
            job = self.get_job(job_id)
        except JobNotFound:
            return Reuse(False, "is unknown to the API: submitting one new job deliberately")
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return Reuse(
                False, f"ended {job.status.value} ({job.error}), unbilled: submitting one new job deliberately"
            )
        if job.status is JobStatus.COMPLETED:
            return self._reuse_completed(job, request)
        return Reuse(True, f"status {job.status.value}")

    def _reuse_completed(self, job: Job, request: Mapping[str, Any] | None) -> Reuse:
        cost = job.credit_cost
        billed = f"{cost} credits" if cost is not None else "its price"
        again = f"submitting one new job deliberately, about {cost if cost is not None else 'as many'} credits"
        lost = f"completed and was billed {billed}, but its result"
        if job.expired:
            return Reuse(False, f"{lost}s expired: {again}")
        if not job.result_urls:
            return Reuse(False, f"{lost} holds no images: {again}")
        flux: Mapping[str, Any] = (request or {}).get("fluxParams") or {}
        problem = first_unusable(
            job.result_urls,
            expected_format=flux.get("output_format"),
            expected_size=output_size(dict(flux)) if flux else None,
            retry=self.result_retry,
        )
        if problem is None:
            return Reuse(True, f"completed, its {len(job.result_urls)} result(s) checked and usable")
        if problem.permanent:
            return Reuse(False, f"{lost} is unusable ({problem}): {again}")
        return Reuse(True, f"completed; its results cannot be checked now ({problem}), so it is kept, not paid again")

    def wait_for_job(self, job_id: str, timing: WaitTiming) -> JobOutcome:
        """Poll until the job ends or the deadline passes, holding this worker (see ``polling.wait_flow``)."""
        flow = wait_flow(job_id, timing, self.log)
        step = next(flow)
        while True:
            try:
                step = flow.send(self._carry_out(step, job_id))
            except StopIteration as done:  # StopIteration is not generic: the flow's return type is
                return cast("JobOutcome", done.value)

    def _carry_out(self, step: WaitStep, job_id: str) -> PollAnswer:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
        elif step == RECONNECT:
            self._reconnect()
        elif step == POLL:
            return _answer(lambda: self.get_job(job_id))
        return None

    def test_connection(self) -> tuple[bool, str]:
        """The connection form's "Test": one read-only, unbilled call with the key (listing one job)."""
        try:
            self.get_conn().list_jobs(limit=1)
        except (ApiError, AirflowFailException) as exc:
            return False, str(exc)
        finally:
            self.close()
        return True, f"the Apiframe API at {self.settings.base_url} accepted the key"

    # -- asyncio calls, for triggers --------------------------------------------------------------------

    async def asettings(self) -> ApiSettings:
        """The settings, read without blocking the event loop."""
        return ApiSettings.from_connection(await self.aget_connection(self.apiframe_conn_id))

    async def aget_job(self, job_id: str) -> Job:
        async with shared_clients.lease(self.apiframe_conn_id):
            return await (await shared_clients.client(self.apiframe_conn_id)).get_job(job_id)

    async def await_job(self, job_id: str, timing: WaitTiming) -> JobOutcome:
        """Like :meth:`wait_for_job`, on the event loop, through the loop's shared client of this connection."""
        async with shared_clients.lease(self.apiframe_conn_id):
            flow: WaitFlow = wait_flow(job_id, timing, self.log)
            step = next(flow)
            while True:
                try:
                    step = flow.send(await self._acarry_out(step, job_id))
                except StopIteration as done:
                    return cast("JobOutcome", done.value)

    async def _acarry_out(self, step: WaitStep, job_id: str) -> PollAnswer:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        elif step == RECONNECT:
            shared_clients.reopen(self.apiframe_conn_id)
        elif step == POLL:
            try:
                return await (await shared_clients.client(self.apiframe_conn_id)).get_job(job_id)
            except ApiError as exc:
                return exc
        return None

    @staticmethod
    async def open_async_client(conn_id: str) -> AsyncFluxClient:
        settings = await FluxHook(conn_id).asettings()
        _quiet_transport_logs()
        return AsyncFluxClient(settings.base_url, settings.api_key, **settings.client_options())


def _answer(poll: Callable[[], Job]) -> PollAnswer:
    """What a poll returned, or the API error it raised: the wait flow decides what an error means."""
    try:
        return poll()
    except ApiError as exc:
        return exc


@dataclass
class _Shared:
    opened: asyncio.Future[AsyncFluxClient]
    users: int = 0


class SharedClients:
    """One AsyncFluxClient per (event loop, connection id), shared by every trigger polling through it.

    A client holds a connection pool; a thousand triggers with a client each would hold a thousand
    pools. The connection is read once per client, without blocking the loop, and the client is
    closed when its last user lets go.
    """

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Shared]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Task[None]] = set()

    def _entries(self) -> dict[str, _Shared]:
        return self._loops.setdefault(asyncio.get_running_loop(), {})

    @asynccontextmanager
    async def lease(self, conn_id: str) -> AsyncIterator[None]:
        """Use the connection's client for the duration of the block (opened on first use)."""
        await self._acquire(conn_id)
        try:
            yield
        finally:
            await self._release(conn_id)

    async def _acquire(self, conn_id: str) -> None:
        entries = self._entries()
        entry = entries.get(conn_id)
        if entry is None:
            entry = entries[conn_id] = _Shared(asyncio.ensure_future(FluxHook.open_async_client(conn_id)))
        entry.users += 1
        try:
            await asyncio.shield(entry.opened)
        except BaseException:
            await self._release(conn_id)
            raise

    async def client(self, conn_id: str) -> AsyncFluxClient:
        """The current client of a connection the caller holds a lease on."""
        return await asyncio.shield(self._entries()[conn_id].opened)

    async def _release(self, conn_id: str) -> None:
        entries = self._entries()
        entry = entries.get(conn_id)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del entries[conn_id]
            await self._close(entry.opened)

    def reopen(self, conn_id: str) -> None:
        """Read the connection anew (its key may have been rotated) for every user of the client."""
        entry = self._entries()[conn_id]
        stale = entry.opened
        entry.opened = asyncio.ensure_future(FluxHook.open_async_client(conn_id))
        asyncio.get_running_loop().call_later(STALE_CLIENT_GRACE, self._close_soon, stale)

    def _close_soon(self, opened: asyncio.Future[AsyncFluxClient]) -> None:
        task = asyncio.get_running_loop().create_task(self._close(opened))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def users(self, conn_id: str) -> int:
        entry = self._entries().get(conn_id)
        return entry.users if entry else 0

    @staticmethod
    async def _close(opened: asyncio.Future[AsyncFluxClient]) -> None:
        if opened.done() and not opened.cancelled() and opened.exception() is None:
            await opened.result().aclose()


shared_clients = SharedClients()
