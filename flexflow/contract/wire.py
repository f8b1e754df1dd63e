"""Names on the wire: endpoints, headers, the model id, job statuses and webhook fields.

Each wire name lives here once. The seed page calls the webhook field ``webhook_url``; the
published OpenAPI document (stricter, and what the API validates against) calls it
``webhookUrl``. flexflow sends the OpenAPI name.
"""

from __future__ import annotations

from enum import StrEnum

MODEL_ID = "flux-2-flex"
PRODUCTION_BASE_URL = "https://api.apiframe.ai"

SUBMIT_PATH = "/v2/images/generate"
JOBS_PATH = "/v2/jobs"

API_KEY_HEADER = "X-API-Key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_HEADER = "Retry-After"
WEBHOOK_SIGNATURE_HEADER = "X-Webhook-Signature"
WEBHOOK_EVENT_HEADER = "X-Webhook-Event"

IDEMPOTENCY_KEY_MAX_LENGTH = 255
PROMPT_MAX_LENGTH = 2000

PARAMS_FIELD = "fluxParams"
WEBHOOK_URL_FIELD = "webhookUrl"
WEBHOOK_EVENTS_FIELD = "webhookEvents"
WEBHOOK_EVENTS = ("progress", "completed", "failed")
DEFAULT_WEBHOOK_EVENTS = ("completed", "failed")


def job_path(job_id: str) -> str:
    return f"{JOBS_PATH}/{job_id}"


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
