"""The emulator's HTTP API: Apiframe's routes for Flux 2 Flex, result files, and ``/_emulator`` controls."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flexflow.client.hosts import is_loopback
from flexflow.contract import webhooks, wire
from flexflow.contract.schema import validate_request
from flexflow.contract.wire import JobStatus
from flexflow.emulator import images
from flexflow.emulator.faults import Fault, FaultRule
from flexflow.emulator.state import EmulatorState, JobRecord

log = logging.getLogger("flexflow.emulator")

STATUS_ERRORS = {
    Fault.HTTP_500: (500, "Internal server error"),
    Fault.HTTP_502: (502, "Bad gateway"),
    Fault.HTTP_503: (503, "Service temporarily unavailable"),
    Fault.HTTP_504: (504, "Gateway timeout"),
}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(state: EmulatorState) -> ASGIApp:
    """The ASGI application serving one :class:`EmulatorState`."""
    api = _Api(state)
    routes = [
        Route(wire.SUBMIT_PATH, api.submit, methods=["POST"]),
        Route(wire.JOBS_PATH, api.list_jobs, methods=["GET"]),
        Route(wire.JOBS_PATH + "/{job_id}", api.get_job, methods=["GET"]),
        Route("/_files/{job_id}/{name}", api.result_file, methods=["GET"]),
        Route("/_emulator/jobs/{job_id}", api.job_page, methods=["GET"]),
        Route("/_emulator/accounting", api.accounting, methods=["GET"]),
        Route("/_emulator/faults", api.faults, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/_emulator/config", api.config, methods=["GET", "PATCH"]),
        Route("/_emulator/reset", api.reset, methods=["POST"]),
        Route("/_emulator/health", api.health, methods=["GET"]),
    ]
    return FaultInjector(RequestIds(Starlette(routes=routes)), state)


class _Api:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self._webhook_client: httpx2.AsyncClient | None = None

    def _webhooks(self) -> httpx2.AsyncClient:
        # One client for all deliveries: building one (SSL context) blocks the loop for ~40 ms.
        if self._webhook_client is None:
            self._webhook_client = httpx2.AsyncClient(timeout=5.0)
        return self._webhook_client

    async def _until(self, moment: float) -> None:
        """Sleep until the state's clock reaches ``moment`` (loop timers may fire a little early)."""
        while (left := moment - self.state.clock()) > 0:
            await asyncio.sleep(left)

    def _owner(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        status, owner = self.state.authenticate(request.headers.get(wire.API_KEY_HEADER))
        if status == 401:
            return None, _error(401, "Missing or invalid API key")
        if status == 403:
            return None, _error(403, "API key is inactive or lacks permission")
        return owner, None

    async def submit(self, request: Request) -> Response:
        owner, denied = self._owner(request)
        if denied:
            return denied
        key = request.headers.get(wire.IDEMPOTENCY_HEADER)
        self.state.count_submission(key)
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "Request body is not valid JSON", details={"$": ["expected a JSON object"]})
        problems = validate_request(body)
        if problems:
            details: dict[str, list[str]] = {}
            for problem in problems:
                details.setdefault(problem.dotted_path, []).append(problem.message)
            return _error(400, "Validation failed", details=details)
        if key is not None and not 1 <= len(key) <= wire.IDEMPOTENCY_KEY_MAX_LENGTH:
            return _error(400, "Idempotency-Key must be 1 to 255 characters")
        assert owner is not None
        result = self.state.submit(owner, body, key)
        if result.error is not None:
            return JSONResponse(result.error, status_code=result.status_code)
        job = result.job
        assert job is not None
        if not result.replayed and job.webhook_status:
            self._schedule_webhooks(job, request.headers[wire.API_KEY_HEADER], str(request.base_url))
        status = job.status(self.state.clock()) if result.replayed else JobStatus.QUEUED
        # JobAccepted's status enum has no CANCELLED: a replay of a cancelled job says FAILED.
        accepted = JobStatus.FAILED if status is JobStatus.CANCELLED else status
        return JSONResponse({"jobId": job.id, "status": accepted.value}, status_code=202)

    async def get_job(self, request: Request) -> Response:
        owner, denied = self._owner(request)
        if denied:
            return denied
        job_id = request.path_params["job_id"]
        try:
            uuid.UUID(job_id)
        except ValueError:
            return _error(400, f"Invalid job id {job_id!r}: expected a UUID")
        job = self.state.get(owner or "", job_id, poll=True)
        if job is None:
            return _error(404, "Job not found")
        return JSONResponse(self.state.job_json(job, str(request.base_url)))

    async def list_jobs(self, request: Request) -> Response:
        owner, denied = self._owner(request)
        if denied:
            return denied
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
            offset = int(query.get("cursor") or 0)
        except ValueError:
            return _error(400, "limit and cursor must be integers")
        if offset < 0:
            return _error(400, "cursor must be a cursor this API returned")
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100")
        status = query.get("status")
        if status is not None and status not in JobStatus.__members__:
            return _error(400, f"unknown status {status!r}")
        jobs = self.state.list_jobs(owner or "", status, query.get("model"))
        page = jobs[offset : offset + limit]
        more = offset + limit < len(jobs)
        base = str(request.base_url)
        return JSONResponse(
            {
                "jobs": [self.state.job_json(j, base) for j in page],
                "nextCursor": str(offset + limit) if more else None,
                "hasMore": more,
            }
        )

    async def result_file(self, request: Request) -> Response:
        # Like the API's signed CDN URLs: no key needed, gone once expired.
        job = self.state.jobs.get(request.path_params["job_id"])
        now = self.state.clock()
        name = request.path_params["name"]
        if job is None or job.status(now) is not JobStatus.COMPLETED or name not in job.result_names():
            return Response("Not Found", status_code=404, media_type="text/plain")
        outcome = job.outcome.fault if job.outcome else None
        if job.expired(now) or outcome is Fault.MISSING_RESULT:
            return Response("<Error><Code>NoSuchKey</Code></Error>", status_code=404, media_type="application/xml")
        if outcome is Fault.WRONG_CONTENT_TYPE:
            return Response("<html><body>Access denied</body></html>", media_type="text/html")
        fmt = job.flux_params["output_format"]
        data = await run_in_threadpool(images.render, job.body["prompt"], job.body.get(wire.PARAMS_FIELD) or {})
        return Response(data, media_type=images.CONTENT_TYPES[fmt])

    async def job_page(self, request: Request) -> Response:
        """What the "Apiframe job" link shows when it points at the emulator (no key: loopback only)."""
        job = self.state.jobs.get(request.path_params["job_id"])
        if job is None:
            return _error(404, "Job not found")
        return JSONResponse(self.state.job_json(job, str(request.base_url)))

    async def accounting(self, request: Request) -> Response:
        return JSONResponse(self.state.accounting())

    async def faults(self, request: Request) -> Response:
        plan = self.state.faults
        try:
            if request.method in ("POST", "PUT"):
                payload = await request.json()
                rules = [FaultRule(**rule) for rule in payload.get("rules", [])]
                if request.method == "PUT":
                    plan.reset(seed=payload.get("seed"))
                plan.add(*rules)
            elif request.method == "DELETE":
                plan.reset()
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, f"invalid fault rules: {exc}")
        return JSONResponse(plan.to_dict())

    async def config(self, request: Request) -> Response:
        if request.method == "PATCH":
            try:
                self.state.config.update(await request.json())
            except (ValueError, TypeError, AttributeError) as exc:
                return _error(400, str(exc))
        settings = dict(vars(self.state.config))
        settings.pop("api_keys")  # keys are not shown back, even test ones
        settings.pop("inactive_keys")
        return JSONResponse(settings)

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        self.state.faults.reset()
        return JSONResponse({"reset": True})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # -- webhooks ------------------------------------------------------------------------------

    def _schedule_webhooks(self, job: JobRecord, api_key: str, base_url: str) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver_webhooks(job, api_key, base_url))
        self._webhook_tasks.add(task)
        task.add_done_callback(self._webhook_tasks.discard)

    async def _deliver_webhooks(self, job: JobRecord, api_key: str, base_url: str) -> None:
        url = job.body[wire.WEBHOOK_URL_FIELD]
        events = job.body.get(wire.WEBHOOK_EVENTS_FIELD) or list(wire.DEFAULT_WEBHOOK_EVENTS)
        if not is_loopback(urlsplit(url).hostname or ""):
            log.warning("webhook target %s is not on loopback; the emulator only delivers locally", url)
            job.webhook_status = "failed"
            return
        client = self._webhooks()
        if "progress" in events:
            await self._until(job.created + job.queue_seconds)
            await self._post_event(client, url, api_key, self._event(job, "progress", base_url))
        await self._until(job.finishes)
        status = job.status(self.state.clock())
        event = "completed" if status is JobStatus.COMPLETED else "failed"
        delivered = True
        if event in events:
            delivered = await self._post_event(client, url, api_key, self._event(job, event, base_url))
        job.webhook_status = "delivered" if delivered else "failed"

    def _event(self, job: JobRecord, event: str, base_url: str) -> dict[str, Any]:
        data = self.state.job_json(job, base_url)
        fields = {
            "progress": ("jobId", "status", "progress", "model"),
            "completed": ("jobId", "status", "progress", "result", "model", "creditCost", "completedAt"),
            "failed": ("jobId", "status", "error", "model"),
        }[event]
        data["jobId"] = data["id"]
        return {"event": event, **{name: data[name] for name in fields}}

    async def _post_event(self, client: httpx2.AsyncClient, url: str, api_key: str, event: dict[str, Any]) -> bool:
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            wire.WEBHOOK_SIGNATURE_HEADER: webhooks.sign(body, api_key),
            wire.WEBHOOK_EVENT_HEADER: event["event"],
        }
        attempts = self.state.config.webhook_retries + 1
        for attempt in range(attempts):
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.is_success:
                    return True
            except httpx2.TransportError as exc:
                log.warning("webhook %s to %s failed: %s", event["event"], url, exc)
            if attempt + 1 < attempts:
                await asyncio.sleep(0.2 * 2**attempt)
        return False


class RequestIds:
    """Puts an ``x-request-id`` on every response, as the real API does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex[:20]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _route_of(path: str, method: str) -> str:
    if path == wire.SUBMIT_PATH and method == "POST":
        return "submit"
    if path == wire.JOBS_PATH:
        return "list"
    if path.startswith(wire.JOBS_PATH + "/"):
        return "poll"
    if path.startswith("/_files/"):
        return "file"
    return "control"


class FaultInjector:
    """Outermost middleware: applies the fault plan's HTTP-exchange faults before the API sees a request."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _route_of(scope.get("path", ""), scope.get("method", "")) if scope["type"] == "http" else "control"
        rule = None if route == "control" else self.state.faults.take(route)
        if rule is None:
            await self.app(scope, receive, send)
            return
        fault = rule.fault
        if fault is Fault.DROP:
            _cut_connection(send)
        elif fault is Fault.SLOW:
            await asyncio.sleep(rule.delay)
            await self.app(scope, receive, send)
        elif fault is Fault.LOST_RESPONSE:
            await self.app(scope, receive, _discard)
            _cut_connection(send)
        elif fault is Fault.RATE_LIMIT:
            await _rate_limited(rule)(scope, receive, send)
        else:
            status, message = STATUS_ERRORS[fault]
            await RequestIds(_error(status, message))(scope, receive, send)


def _rate_limited(rule: FaultRule) -> ASGIApp:
    if rule.retry_after_date:
        when = datetime.now(UTC) + timedelta(seconds=rule.retry_after)
        retry_after = format_datetime(when, usegmt=True)
    else:
        retry_after = str(int(rule.retry_after)) if rule.retry_after == int(rule.retry_after) else str(rule.retry_after)
    response = _error(429, "Rate limit exceeded")
    response.headers[wire.RETRY_AFTER_HEADER] = retry_after
    return RequestIds(response)


async def _discard(message: Message) -> None:
    return None


def _cut_connection(send: Send) -> None:
    """Close the TCP connection without a response. Relies on uvicorn's per-request cycle object."""
    # uvicorn's cycle classes (h11 and httptools) are private, hence getattr rather than a type.
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if cycle is None or transport is None:
        raise RuntimeError("connection faults need the emulator to run under uvicorn")
    transport.close()
    cycle.disconnected = True  # so uvicorn does not try to answer 500 on the closed connection
