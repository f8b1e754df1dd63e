"""Building a generation request: the one place that knows the body's shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flexflow.contract import wire
from flexflow.contract.params import JsonScalar, apply_defaults


def generation_request(
    prompt: str, flux_params: Mapping[str, JsonScalar], webhook_url: str | None = None
) -> dict[str, Any]:
    """The body of ``POST /v2/images/generate``, every documented default applied (sent explicitly)."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "model": wire.MODEL_ID,
        wire.PARAMS_FIELD: apply_defaults(dict(flux_params)),
    }
    if webhook_url:
        body[wire.WEBHOOK_URL_FIELD] = webhook_url
    return body
