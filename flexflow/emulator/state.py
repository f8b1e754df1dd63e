"""The emulator's jobs, idempotency records, credits and accounting.

A job's status is a function of time since it was created (QUEUED for ``queue_seconds``, then
PROCESSING with rising progress for ``processing_seconds``, then its outcome), computed when asked.
Nothing runs in the background, so the state is deterministic for a given clock and plan.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from flexflow.contract import wire
from flexflow.contract.params import apply_defaults
from flexflow.contract.sizes import credit_cost
from flexflow.contract.wire import JobStatus
from flexflow.emulator import images
from flexflow.emulator.faults import MODERATION_ERROR, PROVIDER_ERRORS, Fault, FaultPlan, FaultRule, is_int, shown

#: The key the emulator accepts when none is configured. It is a test key, not a secret.
DEFAULT_TEST_KEY = "afk_flexflow_emulator_test_key"
RESULT_SHAPES = ("images", "string", "list")
#: How many received requests the emulator keeps (the oldest go first), and how much of each body.
RECEIVED_REQUESTS_KEPT = 10_000
RECEIVED_BODY_KEPT = 64 * 1024


@dataclass
class EmulatorConfig:
    """How the emulator behaves; every field is also settable at run time over HTTP."""

    api_keys: tuple[str, ...] = (DEFAULT_TEST_KEY,)
    inactive_keys: tuple[str, ...] = ()  # accepted as keys, answered 403
    queue_seconds: float = 1.0
    processing_seconds: float = 3.0
    retention_seconds: float = 24 * 3600.0  # results expire (404) this long after completion
    idempotency_seconds: float = 24 * 3600.0
    credits: int | None = None  # None: unlimited
    result_shape: str = "images"  # images | string | list
    webhook_retries: int = 2
    max_body_bytes: int = 1024 * 1024  # a larger request body is answered 413
    max_concurrent_jobs: int | None = None  # per API key; a submit beyond it is answered 429. None: no cap

    def update(self, changes: object) -> None:
        """Change settings; every one is checked first, so a refused change leaves all of them as they were."""
        if not isinstance(changes, dict):
            raise ValueError("settings must be a JSON object of setting names and values")
        checked = {name: _checked_setting(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)


def _checked_setting(name: str, value: object) -> object:
    """``value`` as the setting ``name`` stores it, or a ValueError naming the setting and what it takes."""
    if name in ("api_keys", "inactive_keys"):
        if not isinstance(value, list | tuple) or not all(isinstance(k, str) and k for k in value):
            raise ValueError(f"{name} must be a list of non-empty strings")
        return tuple(value)
    if name in ("queue_seconds", "processing_seconds", "retention_seconds", "idempotency_seconds"):
        number_ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number_ok or value < 0:  # type: ignore[operator]
            raise ValueError(f"{name} must be a finite number of seconds, 0 or more, not {shown(value)}")
        return float(value)  # type: ignore[arg-type]
    if name == "credits":
        if value is not None and not (is_int(value) and value >= 0):  # type: ignore[operator]
            raise ValueError(f"credits must be null (unlimited) or an integer, 0 or more, not {shown(value)}")
        return value
    if name == "max_concurrent_jobs":
        if value is not None and not (is_int(value) and value >= 1):  # type: ignore[operator]
            raise ValueError(f"max_concurrent_jobs must be null (no cap) or an integer, 1 or more, not {shown(value)}")
        return value
    if name == "webhook_retries":
        if not (is_int(value) and 0 <= value <= 10):  # type: ignore[operator]
            raise ValueError(f"webhook_retries must be an integer from 0 to 10, not {shown(value)}")
        return value
    if name == "max_body_bytes":
        if not (is_int(value) and value >= 1):  # type: ignore[operator]
            raise ValueError(f"max_body_bytes must be a positive integer, not {shown(value)}")
        return value
    if name == "result_shape":
        if value not in RESULT_SHAPES:
            raise ValueError(f"result_shape must be one of {', '.join(RESULT_SHAPES)}, not {shown(value)}")
        return value
    known = ", ".join(f.name for f in fields(EmulatorConfig))
    raise ValueError(f"unknown emulator setting {shown(name)}; known settings: {known}")


def body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    id: str
    owner: str  # sha256 of the API key that created it
    body: dict[str, Any]
    body_hash: str
    created: float  # monotonic
    created_wall: float
    queue_seconds: float
    processing_seconds: float
    retention_seconds: float
    outcome: FaultRule | None
    cost: int
    idempotency_key: str | None
    polls: int = 0
    webhook_status: str | None = None

    @property
    def flux_params(self) -> dict[str, Any]:
        return apply_defaults(self.body.get(wire.PARAMS_FIELD) or {})

    @property
    def finishes(self) -> float:
        return self.created + self.queue_seconds + self.processing_seconds

    def status(self, now: float) -> JobStatus:
        if now < self.created + self.queue_seconds:
            return JobStatus.QUEUED
        if now < self.finishes:
            return JobStatus.PROCESSING
        if self.outcome is None:
            return JobStatus.COMPLETED
        if self.outcome.fault in (Fault.FAIL, Fault.MODERATION):
            return JobStatus.FAILED
        if self.outcome.fault is Fault.CANCEL:
            return JobStatus.CANCELLED
        return JobStatus.COMPLETED

    def progress(self, now: float) -> int | None:
        status = self.status(now)
        if status is JobStatus.QUEUED:
            return 0
        if status is JobStatus.PROCESSING:
            done = (now - self.created - self.queue_seconds) / self.processing_seconds
            return min(99, max(1, int(done * 100)))
        return 100 if status is JobStatus.COMPLETED else None

    def error(self, now: float) -> str | None:
        status = self.status(now)
        if status is JobStatus.FAILED:
            assert self.outcome is not None
            if self.outcome.fault is Fault.MODERATION:
                return self.outcome.message or MODERATION_ERROR
            return self.outcome.message or PROVIDER_ERRORS[int(self.body_hash, 16) % len(PROVIDER_ERRORS)]
        if status is JobStatus.CANCELLED:
            return "Job was cancelled"
        return None

    def expired(self, now: float) -> bool:
        if self.status(now) is not JobStatus.COMPLETED:
            return False
        purged = self.outcome is not None and self.outcome.fault is Fault.EXPIRED_RESULT
        return purged or now > self.finishes + self.retention_seconds

    def billed(self, now: float) -> bool:
        return self.status(now) is JobStatus.COMPLETED

    @property
    def fault(self) -> Fault | None:
        """The outcome fault this job was given at submit, if any."""
        return self.outcome.fault if self.outcome is not None else None

    def result_names(self) -> list[str]:
        count = self.outcome.images if self.outcome is not None and self.fault is Fault.SEVERAL_IMAGES else 1
        return [f"{index}.{self.flux_params['output_format']}" for index in range(count)]

    def result_file(self, name: str) -> bytes:
        """The bytes of result file ``name`` (one of :meth:`result_names`), broken as the job's fault says."""
        index = int(name.partition(".")[0])
        flux_params = self.body.get(wire.PARAMS_FIELD) or {}
        data = images.render(self.body["prompt"], flux_params, index)
        if self.fault is Fault.TRUNCATED_IMAGE:
            return images.truncated(data)
        if self.fault is Fault.CORRUPT_IMAGE:
            return images.corrupt(data, self.flux_params["output_format"])
        return data


@dataclass
class Submission:
    """What a submit did: the job it created or replayed, or the error to answer."""

    job: JobRecord | None = None
    replayed: bool = False
    status_code: int = 202
    error: dict[str, Any] | None = None
    retry_after: float | None = None  # seconds, for a 429


@dataclass
class EmulatorState:
    config: EmulatorConfig = field(default_factory=EmulatorConfig)
    faults: FaultPlan = field(default_factory=FaultPlan)
    clock: Any = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: dict[str, JobRecord] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self.submissions = 0
        self.submissions_per_key: Counter[str] = Counter()
        self.rate_limited_submits = 0
        self._received: deque[dict[str, Any]] = deque(maxlen=RECEIVED_REQUESTS_KEPT)
        self._received_total = 0
        self.requests_in_flight = 0  # being handled now: a test waits for none before it resets

    def reset(self) -> None:
        with self._lock:
            self.jobs.clear()
            self._idempotency.clear()
            self.submissions = 0
            self.submissions_per_key.clear()
            self.rate_limited_submits = 0
            self._received.clear()
            self._received_total = 0

    # -- received requests ---------------------------------------------------------------------

    def request_started(self) -> None:
        with self._lock:
            self.requests_in_flight += 1

    def request_ended(self) -> None:
        with self._lock:
            self.requests_in_flight -= 1

    def record_request(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, body_bytes: int
    ) -> None:
        """Keep what a request carried, for tests that hunt for a secret in it; never its API key header."""
        kept_headers = [[name, value] for name, value in headers if name.lower() != wire.API_KEY_HEADER.lower()]
        with self._lock:
            self._received_total += 1
            self._received.append(
                {
                    "seq": self._received_total,
                    "method": method,
                    "path": path,
                    "query": query,
                    "headers": kept_headers,
                    # Bytes that are not UTF-8 are kept as \xNN escapes, so nothing is lost to a search.
                    "body": body[:RECEIVED_BODY_KEPT].decode("utf-8", "backslashreplace"),
                    "body_bytes": body_bytes,
                    "body_truncated": body_bytes > RECEIVED_BODY_KEPT,
                }
            )

    def received_requests(self) -> list[dict[str, Any]]:
        """The last requests received (at most RECEIVED_REQUESTS_KEPT), oldest first."""
        with self._lock:
            return [dict(r) for r in self._received]

    # -- auth ----------------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> tuple[int, str | None]:
        """(status, owner): 200 with the owner id, 401 for a missing or unknown key, 403 for an inactive one."""
        if not api_key:
            return 401, None
        if api_key in self.config.inactive_keys:
            return 403, None
        if api_key not in self.config.api_keys:
            return 401, None
        return 200, hashlib.sha256(api_key.encode()).hexdigest()

    # -- jobs ----------------------------------------------------------------------------------

    def count_submission(self, idempotency_key: str | None) -> None:
        """A submit reached the API (authenticated), valid or not."""
        with self._lock:
            self.submissions += 1
            if idempotency_key:
                self.submissions_per_key[idempotency_key] += 1

    def submit(self, owner: str, body: dict[str, Any], idempotency_key: str | None) -> Submission:
        digest = body_hash(body)
        now = self.clock()
        with self._lock:
            if idempotency_key:
                known = self._idempotency.get((owner, idempotency_key))
                if known and now - self.jobs[known[0]].created < self.config.idempotency_seconds:
                    job = self.jobs[known[0]]
                    if known[1] != digest:
                        return Submission(
                            status_code=409,
                            error={"error": "Idempotency-Key was already used with a different request body"},
                        )
                    return Submission(job=job, replayed=True)
            refused = self._over_concurrency_cap(owner, now)
            if refused is not None:
                return refused
            cost = credit_cost(apply_defaults(body.get(wire.PARAMS_FIELD) or {}))
            available = self._credits_available(now)
            if available is not None and available < cost:
                return Submission(
                    status_code=402,
                    error={"error": "Insufficient credits", "creditsRequired": cost, "creditsAvailable": available},
                )
            job = JobRecord(
                id=str(uuid.uuid4()),
                owner=owner,
                body=body,
                body_hash=digest,
                created=now,
                created_wall=time.time(),
                queue_seconds=self.config.queue_seconds,
                processing_seconds=self.config.processing_seconds,
                retention_seconds=self.config.retention_seconds,
                outcome=self.faults.take("job"),
                cost=cost,
                idempotency_key=idempotency_key,
                webhook_status="pending" if body.get(wire.WEBHOOK_URL_FIELD) else None,
            )
            self.jobs[job.id] = job
            if idempotency_key:
                self._idempotency[(owner, idempotency_key)] = (job.id, digest)
            return Submission(job=job)

    def _over_concurrency_cap(self, owner: str, now: float) -> Submission | None:
        """A 429 if ``owner`` already has ``max_concurrent_jobs`` jobs QUEUED or PROCESSING (lock held)."""
        cap = self.config.max_concurrent_jobs
        if cap is None:
            return None
        running = [j for j in self.jobs.values() if j.owner == owner and not j.status(now).is_terminal]
        if len(running) < cap:
            return None
        self.rate_limited_submits += 1
        first_end = min(j.finishes for j in running)
        return Submission(
            status_code=429,
            error={"error": f"Too many concurrent jobs: at most {cap} may be queued or processing at once"},
            retry_after=float(max(1, math.ceil(first_end - now))),
        )

    def _credits_available(self, now: float) -> int | None:
        if self.config.credits is None:
            return None
        # Credits are held from submit; failed and cancelled jobs give theirs back.
        held = sum(j.cost for j in self.jobs.values() if j.status(now) not in (JobStatus.FAILED, JobStatus.CANCELLED))
        return max(0, self.config.credits - held)

    def get(self, owner: str, job_id: str, *, poll: bool = False) -> JobRecord | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None or job.owner != owner:
                return None
            if poll:
                job.polls += 1
            return job

    def job_json(self, job: JobRecord, base_url: str) -> dict[str, Any]:
        """The job object of the contract (``GET /v2/jobs/{id}``)."""
        now = self.clock()
        status = job.status(now)
        completed = status.is_terminal
        data = {
            "id": job.id,
            "status": status.value,
            "model": wire.MODEL_ID,
            "progress": job.progress(now),
            "result": self._result(job, base_url) if status is JobStatus.COMPLETED else None,
            "error": job.error(now),
            "creditCost": (job.cost if status is JobStatus.COMPLETED else 0) if completed else None,
            "webhookStatus": job.webhook_status,
            "createdAt": _iso(job.created_wall),
            "completedAt": _iso(job.created_wall + job.finishes - job.created) if completed else None,
            "expired": job.expired(now),
            "input": job.body,
        }
        if job.fault is Fault.EXTRA_KEYS:
            # Keys a newer API might add: a client must ignore them, not fail.
            prompt, flux_params = job.body["prompt"], job.body.get(wire.PARAMS_FIELD) or {}
            data.update({"seedUsed": images.effective_seed(prompt, apply_defaults(flux_params)), "region": "eu"})
        return data

    def _result(self, job: JobRecord, base_url: str) -> Any:
        urls = [f"{base_url.rstrip('/')}/_files/{job.id}/{name}" for name in job.result_names()]
        shape = self.config.result_shape
        if job.fault is Fault.RESULT_STRING:
            shape = "string"
        if job.fault is Fault.RESULT_LIST:
            shape = "list"
        if shape == "string":
            return urls[0]
        if shape == "list":
            return urls
        if job.fault is Fault.EXTRA_KEYS:
            return {
                "images": urls,
                "thumbnails": [f"{url}?size=thumbnail" for url in urls],
                "nsfw": [False] * len(urls),
            }
        return {"images": urls}

    def list_jobs(self, owner: str, status: str | None, model: str | None) -> list[JobRecord]:
        now = self.clock()
        with self._lock:
            jobs = [j for j in self.jobs.values() if j.owner == owner]
        if model and model != wire.MODEL_ID:
            return []
        jobs = [j for j in jobs if status is None or j.status(now).value == status]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    # -- accounting ----------------------------------------------------------------------------

    def accounting(self) -> dict[str, Any]:
        """What was submitted, created and billed; duplicates are two billed jobs for one logical request."""
        now = self.clock()
        with self._lock:
            jobs = list(self.jobs.values())
            keys = dict(self.submissions_per_key)
            submissions = self.submissions
            rate_limited = self.rate_limited_submits
        billed = [j for j in jobs if j.billed(now)]
        billed_per_key = Counter(j.idempotency_key for j in billed if j.idempotency_key)
        per_body = Counter(j.body_hash for j in billed)
        return {
            "submissions": submissions,
            "jobs_created": len(jobs),
            "jobs_billed": len(billed),
            "credits_billed": sum(j.cost for j in billed),
            "credits_available": self._credits_available(now),
            "submissions_per_key": keys,
            "duplicates": {
                "by_key": {k: n - 1 for k, n in billed_per_key.items() if n > 1},
                "by_body": sum(n - 1 for n in per_body.values() if n > 1),
            },
            "polls_per_job": {j.id: j.polls for j in jobs},
            "peak_in_flight": _peak_in_flight(jobs),
            "rate_limited_submits": rate_limited,
            "jobs_by_status": dict(Counter(j.status(now).value for j in jobs)),
            "faults_injected": dict(self.faults.injected),
        }


def _peak_in_flight(jobs: list[JobRecord]) -> int:
    """Most jobs queued or processing at one moment: a sweep over [created, finishes) intervals."""
    events = sorted([(j.created, 1) for j in jobs] + [(j.finishes, -1) for j in jobs], key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak
