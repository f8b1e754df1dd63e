"""The emulator's HTTP API: Apiframe's routes for Flux 2 Flex, result files, and ``/_emulator`` controls."""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from flexflow.emulator.faults import Fault, FaultRule, check_seed, parse_rules, shown
from flexflow.emulator.state import EmulatorState, JobRecord

log = logging.getLogger("flexflow.emulator")

STATUS_ERRORS = {
    Fault.HTTP_408: (408, "Request timeout"),
    Fault.HTTP_500: (500, "Internal server error"),
    Fault.HTTP_502: (502, "Bad gateway"),
    Fault.HTTP_503: (503, "Service temporarily unavailable"),
    Fault.HTTP_504: (504, "Gateway timeout"),
}


#: Limits of a JSON body the emulator accepts: absurd documents are refused (400), never a 500 or a hang.
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 100
#: A body over the limit is still read and discarded up to this size, so the client reads the 413
#: rather than a reset connection; a larger one gets the 413 at once and the connection closes.
MAX_DRAIN_BYTES = 64 * 1024 * 1024


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class BadJson(ValueError):
    """A request body that is not a JSON document the emulator takes; the message says why, not what."""


def parse_json(raw: bytes) -> Any:
    """A request body as JSON: UTF-8, finite numbers of sane size, at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float
        )
    except RecursionError:
        raise BadJson(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except UnicodeDecodeError as exc:
        raise BadJson(f"the body is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError (its message has a position, not the text) and the hooks'
        raise BadJson(f"the body is not valid JSON: {exc}") from None
    _check_tree(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _check_tree(value: Any) -> None:
    """Depth and strings of a parsed document, walked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJson("a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise BadJson(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


async def _json_object(request: Request) -> dict[str, Any]:
    value = parse_json(await request.body())
    if not isinstance(value, dict):
        raise BadJson(f"expected a JSON object, not {type(value).__name__}")
    return value


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
        Route("/_emulator/requests", api.requests, methods=["GET"]),
        Route("/_emulator/health", api.health, methods=["GET"]),
    ]
    return RequestGate(FaultInjector(RequestIds(Starlette(routes=routes)), state), state)


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
            body = await _json_object(request)
        except BadJson as exc:
            return _error(400, f"Request body refused: {exc}", details={"$": ["expected a JSON object"]})
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
            response = JSONResponse(result.error, status_code=result.status_code)
            if result.retry_after is not None:
                response.headers[wire.RETRY_AFTER_HEADER] = _retry_after(result.retry_after, as_date=False)
            return response
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
        if job.expired(now) or job.fault is Fault.MISSING_RESULT:
            return Response("<Error><Code>NoSuchKey</Code></Error>", status_code=404, media_type="application/xml")
        if job.fault is Fault.WRONG_CONTENT_TYPE:
            return Response("<html><body>Access denied</body></html>", media_type="text/html")
        fmt = job.flux_params["output_format"]
        data = await run_in_threadpool(job.result_file, name)
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
                payload = await _json_object(request)
                allowed = ("rules", "seed") if request.method == "PUT" else ("rules",)
                unknown = sorted(shown(key) for key in payload if key not in allowed)
                if unknown:
                    raise ValueError(
                        f"unknown key(s) {', '.join(unknown)}; {request.method} takes {', '.join(allowed)}"
                    )
                # Every rule (and the seed) is checked before the plan changes: a refusal changes nothing.
                rules = parse_rules(payload.get("rules", []))
                if request.method == "PUT":
                    plan.replace(rules, seed=check_seed(payload.get("seed")))
                else:
                    plan.add(*rules)
            elif request.method == "DELETE":
                plan.reset()
        except (ValueError, TypeError) as exc:
            return _error(400, f"invalid fault rules: {exc}")
        return JSONResponse(plan.to_dict())

    async def config(self, request: Request) -> Response:
        if request.method == "PATCH":
            try:
                self.state.config.update(await _json_object(request))
            except ValueError as exc:
                return _error(400, f"invalid emulator settings (nothing was changed): {exc}")
        settings = dict(vars(self.state.config))
        settings.pop("api_keys")  # keys are not shown back, even test ones
        settings.pop("inactive_keys")
        return JSONResponse(settings)

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        self.state.faults.reset()
        return JSONResponse({"reset": True})

    async def requests(self, request: Request) -> Response:
        """Every request received (the last 10,000), without its API key header: for secret hunts in tests."""
        return JSONResponse({"requests": self.state.received_requests()})

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
        elif fault is Fault.CUT_TRANSFER:
            await self.app(scope, receive, _half_then_cut(send))
        elif fault is Fault.RATE_LIMIT:
            await _rate_limited(rule)(scope, receive, send)
        else:
            status, message = STATUS_ERRORS[fault]
            response = _error(status, message)
            if status == 408:
                response.headers["connection"] = "close"  # as servers that time a request out do
            await RequestIds(response)(scope, receive, send)


def _half_then_cut(send: Send) -> Send:
    """A send that passes the response head (with its full Content-Length), half the body, then cuts."""
    cut = False

    async def send_half(message: Message) -> None:
        nonlocal cut
        if cut:
            return  # the rest of the response goes nowhere: the connection is gone
        if message["type"] != "http.response.body":
            await send(message)
            return
        body = message.get("body", b"")
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        cut = True
        _cut_connection(send)

    return send_half


def _rate_limited(rule: FaultRule) -> ASGIApp:
    response = _error(429, "Rate limit exceeded")
    if rule.retry_after is not None:
        response.headers[wire.RETRY_AFTER_HEADER] = _retry_after(rule.retry_after, as_date=rule.retry_after_date)
    return RequestIds(response)


def _retry_after(seconds: float, *, as_date: bool) -> str:
    if as_date:
        return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)


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


class RequestGate:
    """Outermost middleware: reads each request body under the size limit, and records the request.

    The body is read here, before any fault or route, so that a body over
    ``config.max_body_bytes`` gets a 413 whatever the route (a chunked body without a
    Content-Length too, counted as it arrives), and so that every request is recorded
    whole, even one a fault then drops. The 413 never echoes the body.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.state.request_started()
        try:
            await self._gate(scope, receive, send)
        finally:
            self.state.request_ended()

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.state.config.max_body_bytes
        declared = _content_length(scope)
        drain = declared is None or declared <= MAX_DRAIN_BYTES
        body, size, ending = await _read_body(receive, limit, drain=drain)
        self._record(scope, body, max(size, declared or 0))
        if ending == "gone":
            return  # the client left mid-body: there is no one to answer, and half a request is not carried out
        if ending == "too large" or (declared is not None and declared > limit):
            message = f"Request body is larger than the emulator's limit of {limit} bytes"
            response = _error(413, f"{message}; send less, or raise it (--max-body-bytes, PATCH max_body_bytes)")
            response.headers["connection"] = "close"
            await RequestIds(response)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _record(self, scope: Scope, body: bytes, size: int) -> None:
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope.get("headers", [])]
        query = scope.get("query_string", b"").decode("latin-1")
        self.state.record_request(scope.get("method", ""), scope.get("path", ""), query, headers, body, size)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int, *, drain: bool) -> tuple[bytes, int, str]:
    """(body, bytes seen, how it ended: "whole", "too large" or "gone").

    Past the limit, chunks are counted and dropped, not kept; with ``drain`` they are read to the end
    (up to MAX_DRAIN_BYTES) so that the client, done sending, reads the 413.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), size, "gone"
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif not drain or size > MAX_DRAIN_BYTES:
            return b"".join(chunks), size, "too large"
        if not message.get("more_body", False):
            return b"".join(chunks), size, "whole" if size <= limit else "too large"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then whatever the connection says next."""
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
