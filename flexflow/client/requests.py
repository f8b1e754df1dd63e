"""Building a generation request: the one place that knows the body's shape."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from flexflow.contract import wire
from flexflow.contract.params import JsonScalar, apply_defaults


def generation_request(
    prompt: str,
    flux_params: Mapping[str, JsonScalar],
    webhook_url: str | None = None,
    webhook_events: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v2/images/generate``, every documented default applied (sent explicitly).

    ``webhook_events`` go only beside a ``webhook_url``; without them the API sends its default
    events. They are left out rather than sent as the default, so the bodies (and the
    Idempotency-Keys hashed from them) of specs without the key stay as they were.
    """
    body: dict[str, Any] = {
        "prompt": prompt,
        "model": wire.MODEL_ID,
        wire.PARAMS_FIELD: apply_defaults(dict(flux_params)),
    }
    if webhook_url:
        body[wire.WEBHOOK_URL_FIELD] = webhook_url
        if webhook_events:
            body[wire.WEBHOOK_EVENTS_FIELD] = list(webhook_events)
    return body


def request_digest(body: Mapping[str, Any]) -> str:
    """The sha256 of what decides a request's picture: the model, the prompt and every flux param.

    Webhook fields are left out (where the API reports does not change the picture). Two requests with
    one digest ask for the same picture: with a fixed seed, an image already published can stand for it.
    """
    picture = {key: body.get(key) for key in ("model", "prompt", wire.PARAMS_FIELD)}
    canonical = json.dumps(picture, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
