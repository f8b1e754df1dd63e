"""The last stage of loading: validated data -> the immutable :class:`~flexflow.spec.model.Spec`.

It trusts its input (the schema and the checks passed, or the cache stored data that had), and
applies every default from :mod:`flexflow.defaults`; an image's own setting wins over ``defaults``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from flexflow import defaults as fallback
from flexflow.spec import model
from flexflow.spec.durations import parse_duration


def build_spec(data: Mapping[str, Any], text: str, file: str) -> model.Spec:
    """The model of a spec whose ``data`` was read from ``text`` (kept, with its digest, for the DAG)."""
    defaults = data.get("defaults", {})
    dag_id = data["dag_id"]
    publish = data["publish"]
    spec = model.Spec(
        path=file,
        source=text,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        dag_id=dag_id,
        description=data.get("description"),
        schedule=data.get("schedule"),
        start_date=start_date(data["start_date"]) if data.get("start_date") else None,
        catchup=data.get("catchup", fallback.CATCHUP),
        tags=tuple(data.get("tags", ())),
        owner=data.get("owner", fallback.OWNER),
        connection_id=data.get("connection_id", fallback.CONNECTION_ID),
        pool=data.get("pool", fallback.POOL),
        params=model.frozen(data.get("params", {})),
        images=tuple(_image(image, defaults) for image in data["images"]),
        publish=model.PublishSpec(
            to=publish["to"],
            conn_id=publish.get("conn_id"),
            filename=publish.get("filename", fallback.FILENAME),
            manifest=publish.get("manifest", fallback.MANIFEST),
            asset=publish.get("asset", f"flexflow://{dag_id}"),
            review=publish.get("review", fallback.REVIEW) == "required",
            review_timeout=_duration(publish.get("review_timeout"), fallback.REVIEW_TIMEOUT),
        ),
        budget=_budget(data.get("budget")),
    )
    return replace(spec, reuse=data.get("reuse", spec.seeds_fixed))


def _budget(data: Mapping[str, Any] | None) -> model.BudgetSpec | None:
    if data is None:
        return None

    def usd(key: str) -> Decimal | None:
        return Decimal(str(data[key])) if key in data else None  # str: 0.1 stays 0.1, not its float

    return model.BudgetSpec(
        credits_per_run=data.get("credits_per_run"),
        usd_per_run=usd("usd_per_run"),
        credits_per_day=data.get("credits_per_day"),
        usd_per_day=usd("usd_per_day"),
        price_per_megapixel=Decimal(str(data.get("price_per_megapixel", fallback.PRICE_PER_MEGAPIXEL))),
    )


def start_date(text: str) -> datetime:
    """An ISO 8601 date or date-time; UTC unless it names its own zone."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _image(image: Mapping[str, Any], defaults: Mapping[str, Any]) -> model.ImageSpec:
    def setting(key: str, otherwise: object) -> Any:
        return image.get(key, defaults.get(key, otherwise))

    variants = image.get("variants", {})
    return model.ImageSpec(
        name=image["name"],
        prompt=image["prompt"],
        flux=model.image_flux(defaults.get("flux", {}), image.get("flux", {})),
        variant_keys=tuple(variants),
        variants=model.build_variants(variants),
        retries=setting("retries", fallback.RETRIES),
        retry_delay=_duration(setting("retry_delay", None), fallback.RETRY_DELAY),
        timeout=_duration(setting("timeout", None), fallback.JOB_TIMEOUT),
        poll_interval=_duration(setting("poll_interval", None), fallback.POLL_INTERVAL),
        webhook_url=setting("webhook_url", None),
        webhook_events=_events(setting("webhook_events", None)),
    )


def _events(value: list[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def _duration(value: str | None, otherwise: timedelta) -> timedelta:
    return parse_duration(value) if value is not None else otherwise
