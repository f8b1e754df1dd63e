"""Typed views of the API's responses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flexflow.client.errors import UnexpectedResponse
from flexflow.contract.wire import JobStatus


@dataclass(frozen=True)
class Job:
    """A generation job as ``GET /v2/jobs/{id}`` returns it."""

    id: str
    status: JobStatus
    model: str
    progress: int | None
    result_urls: tuple[str, ...]
    error: str | None
    credit_cost: int | None
    expired: bool
    created_at: str | None
    completed_at: str | None
    webhook_status: str | None
    request_id: str | None = None  # x-request-id of the response this view was read from

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form, for XCom and trigger events."""
        return {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "progress": self.progress,
            "result_urls": list(self.result_urls),
            "error": self.error,
            "credit_cost": self.credit_cost,
            "expired": self.expired,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "webhook_status": self.webhook_status,
            "request_id": self.request_id,
        }


def parse_result(result: object) -> tuple[str, ...]:
    """Result URLs from any of the three shapes the API has used.

    ``{"images": [url, ...]}`` (current docs), a bare URL string (older docs) or a list of URLs.
    Keys the API may add beside ``images`` (thumbnails, sizes) are ignored: a new field must not
    fail a paid job. A mapping without an ``images`` list of URLs is refused: its images are unknown.
    """
    if result is None:
        return ()
    if isinstance(result, str):
        urls: object = [result]
    elif isinstance(result, list):
        urls = result
    elif isinstance(result, Mapping) and "images" in result:
        urls = result["images"]
    else:
        raise UnexpectedResponse(
            f"job result has an unknown shape ({_describe(result)}); expected "
            '{"images": [url, ...]}, a URL string or a list of URLs'
        )
    if not isinstance(urls, list) or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls
    ):
        raise UnexpectedResponse(f"job result holds something other than http(s) URLs: {_describe(urls)}")
    return tuple(urls)


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def parse_job(body: object, request_id: str | None = None) -> Job:
    """A :class:`Job` from a job object, or :class:`UnexpectedResponse` naming what is wrong.

    Only the fields named here are read: keys the API adds later are ignored, not errors.
    """
    if not isinstance(body, Mapping):
        raise UnexpectedResponse(f"job response is not a JSON object: {_describe(body)}")
    try:
        status = JobStatus(body["status"])
        job_id = body["id"]
    except (KeyError, ValueError) as exc:
        raise UnexpectedResponse(f"job response lacks a valid id or status: {_describe(body)}") from exc
    return Job(
        id=str(job_id),
        status=status,
        model=str(body.get("model", "")),
        progress=body.get("progress"),
        result_urls=parse_result(body.get("result")) if status is JobStatus.COMPLETED else (),
        error=body.get("error"),
        credit_cost=body.get("creditCost"),
        expired=bool(body.get("expired", False)),
        created_at=body.get("createdAt"),
        completed_at=body.get("completedAt"),
        webhook_status=body.get("webhookStatus"),
        request_id=request_id,
    )
