"""FluxJobTrigger: waits for a job in the triggerer, many jobs to one event loop and one HTTP client."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from flexflow.airflow.hooks import FluxHook
from flexflow.airflow.polling import ERROR, TIMEOUT
from flexflow.client import ApiError, AsyncFluxClient, AuthenticationFailed, Job
from flexflow.client.polling import DEFAULT_MAX_POLL_INTERVAL, DEFAULT_POLL_INTERVAL, PollSchedule

STALE_CLIENT_GRACE = 60.0


@dataclass
class _Shared:
    opened: asyncio.Future[AsyncFluxClient]
    users: int = 0


class SharedClients:
    """One AsyncFluxClient per (event loop, connection id), shared by every trigger polling through it.

    A client holds a connection pool; a thousand triggers with a client each would hold a thousand
    pools. The connection is read once per client, without blocking the loop, and the client is
    closed when its last trigger is cleaned up.
    """

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Shared]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Task[None]] = set()

    def _entries(self) -> dict[str, _Shared]:
        return self._loops.setdefault(asyncio.get_running_loop(), {})

    async def acquire(self, conn_id: str) -> AsyncFluxClient:
        """Register a user of the connection's client and return the client."""
        entries = self._entries()
        entry = entries.get(conn_id)
        if entry is None:
            entry = entries[conn_id] = _Shared(asyncio.ensure_future(self._open(conn_id)))
        entry.users += 1
        try:
            return await asyncio.shield(entry.opened)
        except BaseException:
            await self.release(conn_id)
            raise

    async def client(self, conn_id: str) -> AsyncFluxClient:
        """The current client of a connection that the caller has acquired."""
        return await asyncio.shield(self._entries()[conn_id].opened)

    async def release(self, conn_id: str) -> None:
        entries = self._entries()
        entry = entries.get(conn_id)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del entries[conn_id]
            await self._close(entry.opened)

    def reopen(self, conn_id: str) -> None:
        """Read the connection anew (its key may have been rotated) for every user of the client.

        The old client is closed a minute later, so requests in flight on it can finish.
        """
        entry = self._entries()[conn_id]
        stale = entry.opened
        entry.opened = asyncio.ensure_future(self._open(conn_id))
        asyncio.get_running_loop().call_later(STALE_CLIENT_GRACE, self._close_soon, stale)

    def _close_soon(self, opened: asyncio.Future[AsyncFluxClient]) -> None:
        task = asyncio.get_running_loop().create_task(self._close(opened))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def users(self, conn_id: str) -> int:
        entry = self._entries().get(conn_id)
        return entry.users if entry else 0

    @staticmethod
    async def _open(conn_id: str) -> AsyncFluxClient:
        return FluxHook.async_client(await FluxHook(conn_id).asettings())

    @staticmethod
    async def _close(opened: asyncio.Future[AsyncFluxClient]) -> None:
        if opened.done() and not opened.cancelled() and opened.exception() is None:
            await opened.result().aclose()


shared_clients = SharedClients()


class FluxJobTrigger(BaseTrigger):
    """Polls one job until it finishes, then fires one event with the job (or why it stopped waiting).

    Every argument is JSON-native, so a trigger re-created on another triggerer (after a restart)
    continues the same job: it only ever reads the job, never submits.
    """

    def __init__(
        self,
        job_id: str,
        conn_id: str,
        deadline: float,
        submitted_at: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.conn_id = conn_id
        self.deadline = deadline
        self.submitted_at = submitted_at if submitted_at is not None else time.time()
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._holds_client = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "conn_id": self.conn_id,
                "deadline": self.deadline,
                "submitted_at": self.submitted_at,
                "poll_interval": self.poll_interval,
                "max_poll_interval": self.max_poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        schedule = PollSchedule.for_job(self.job_id, self.poll_interval, self.max_poll_interval)
        try:
            await shared_clients.acquire(self.conn_id)
        except Exception as exc:  # the connection is missing or unusable: nothing to poll with
            yield self._event(ERROR, message=f"cannot use connection '{self.conn_id}': {exc}")
            return
        self._holds_client = True
        polls, status, reopened = 0, None, False
        while True:
            polls += 1  # the first poll is immediate: a restarted trigger may find its job long done
            try:
                job = await (await shared_clients.client(self.conn_id)).get_job(self.job_id)
            except ApiError as exc:
                if isinstance(exc, AuthenticationFailed) and not reopened:
                    reopened = True
                    shared_clients.reopen(self.conn_id)
                elif exc.retryable:  # the client's own retries ran out: keep waiting until the deadline
                    self.log.warning("job %s: polling failed (%s); will try again", self.job_id, exc.summary)
                else:
                    yield self._event(ERROR, message=str(exc))
                    return
            else:
                if job.status != status:
                    status = job.status
                    self._log_transition(job)
                if job.is_terminal:
                    yield self._event(job.status.value, job=job)
                    return
            remaining = self.deadline - time.time()
            if remaining <= 0:
                yield self._event(TIMEOUT, message=f"no result after {polls} polls; last status {status}")
                return
            await asyncio.sleep(min(schedule.interval(polls - 1, time.time() - self.submitted_at), remaining))

    def _log_transition(self, job: Job) -> None:
        self.log.info(
            "job %s is %s (progress %s%%, x-request-id %s)", job.id, job.status.value, job.progress, job.request_id
        )

    def _event(self, status: str, job: Job | None = None, message: str | None = None) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "job_id": self.job_id,
                "job": job.to_dict() if job else None,
                "message": message or (job.error if job else None),
            }
        )

    async def cleanup(self) -> None:
        if self._holds_client:
            self._holds_client = False
            await shared_clients.release(self.conn_id)
