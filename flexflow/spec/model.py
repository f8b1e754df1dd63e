"""The validated spec: an immutable, typed model, with every default applied once (here)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from flexflow.contract.params import JsonScalar, apply_defaults
from flexflow.contract.sizes import megapixels


def frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy, all the way down (mappings become read-only, lists tuples)."""
    return MappingProxyType({key: _freeze(value) for key, value in mapping.items()})


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return frozen(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def thawed(value: Any) -> Any:
    """Plain dicts and lists again, for Airflow (DAG params) and JSON."""
    if isinstance(value, Mapping):
        return {key: thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thawed(item) for item in value]
    return value


@dataclass(frozen=True)
class Variant:
    """One combination of an image's variant values; ``label`` fills the ``{variant}`` placeholder."""

    label: str
    flux: Mapping[str, JsonScalar]


@dataclass(frozen=True)
class ImageSpec:
    name: str
    prompt: str
    flux: Mapping[str, JsonScalar]  # every documented default applied, then the spec's defaults, then the image's
    variant_keys: tuple[str, ...]
    variants: tuple[Variant, ...]  # at least one; a single unlabelled one when the image has no variants
    retries: int
    retry_delay: timedelta
    timeout: timedelta
    poll_interval: timedelta
    webhook_url: str | None
    webhook_events: tuple[str, ...] | None  # None: the API's default events (completed, failed)

    def job_flux(self, variant: Variant) -> dict[str, JsonScalar]:
        """The full fluxParams of one job of this image."""
        return {**self.flux, **variant.flux}

    @property
    def job_count(self) -> int:
        return len(self.variants)


@dataclass(frozen=True)
class PublishSpec:
    to: str
    conn_id: str | None
    filename: str
    manifest: bool
    asset: str
    review: bool  # publish.review: required
    review_timeout: timedelta


@dataclass(frozen=True)
class BudgetSpec:
    """Spend caps (None: no cap of that kind); USD at ``price_per_megapixel`` per billed megapixel."""

    credits_per_run: int | None
    usd_per_run: Decimal | None
    credits_per_day: int | None
    usd_per_day: Decimal | None
    price_per_megapixel: Decimal


@dataclass(frozen=True)
class Spec:
    path: str
    source: str
    digest: str
    dag_id: str
    description: str | None
    schedule: str | None
    start_date: datetime | None
    catchup: bool
    tags: tuple[str, ...]
    owner: str
    connection_id: str
    pool: str
    params: Mapping[str, Any]
    images: tuple[ImageSpec, ...]
    publish: PublishSpec
    extras: Mapping[str, Any] = field(default_factory=lambda: frozen({}))
    budget: BudgetSpec | None = None
    reuse: bool = False  # an image already published under the publish root is copied, not generated again

    @property
    def job_count(self) -> int:
        return sum(image.job_count for image in self.images)

    def jobs(self) -> list[tuple[ImageSpec, Variant, dict[str, JsonScalar]]]:
        return [(image, v, image.job_flux(v)) for image in self.images for v in image.variants]

    @property
    def seeds_fixed(self) -> bool:
        """Every job names its seed: the same request gives the same picture (``reuse`` defaults on then)."""
        return all(flux.get("seed") is not None for _, _, flux in self.jobs())

    @property
    def megapixels(self) -> float:
        return float(sum(megapixels(str(flux["resolution"])) for _, _, flux in self.jobs()))


def build_variants(values: Mapping[str, list[JsonScalar]]) -> tuple[Variant, ...]:
    """Every combination of the listed values, in the order written; labels like ``_seed-1``.

    A label is one file-name-safe segment of ``[A-Za-z0-9_-]``: ``_<key>-<value>`` per key. Value
    labels hold no ``_`` and are unique per key, so the labels of the combinations are unique too.
    """
    if not values:
        return (Variant("", frozen({})),)
    keys = list(values)
    labels = {key: _value_labels(values[key]) for key in keys}
    return tuple(
        Variant(
            "_" + "_".join(f"{k}-{labels[k][index]}" for k, index in zip(keys, combo, strict=True)),
            frozen({k: values[k][index] for k, index in zip(keys, combo, strict=True)}),
        )
        for combo in itertools.product(*(range(len(values[k])) for k in keys))
    )


#: A value written like this keeps its plain label (``16:9`` -> ``16x9``, ``2.5`` -> ``2p5``).
_SIMPLE_VALUE = re.compile(r"^-?[A-Za-z0-9.:]{1,24}$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9]+")
#: The readable part of a long or unusual value's label, before its hash.
_READABLE_CHARS = 24


def _value_labels(values: list[JsonScalar]) -> list[str]:
    """One label per value: plain when that is safe, else readable text and a hash of the value.

    A plain label has ``-`` at most in front (a negative number), a hashed one before its hash, so
    the two kinds never meet; should two plain labels meet (``1:1`` and ``1x1``), every value is hashed.
    """
    plain = [_plain_label(value) for value in values]
    named = [label for label in plain if label is not None]
    if len(set(named)) < len(named):
        plain = [None] * len(values)
    for digits in (8, 64):  # two hashes alike in 32 bits: the full hash tells them apart
        labels = [label or _hashed_label(value, digits) for label, value in zip(plain, values, strict=True)]
        if len(set(labels)) == len(labels):
            break
    return labels


def _plain_label(value: JsonScalar) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not _SIMPLE_VALUE.match(text):
        return None
    return text.replace(":", "x").replace(".", "p")


def _hashed_label(value: JsonScalar, digits: int) -> str:
    """``example-com-ref-jpg-1a2b3c4d``: the value's end without its scheme (where URLs name their file)."""
    text = json.dumps(value)
    readable = _UNSAFE_RUN.sub("-", str(value).split("://", 1)[-1]).strip("-")
    if len(readable) > _READABLE_CHARS:
        tail = readable[-_READABLE_CHARS:]
        readable = tail.partition("-")[2] or tail  # start at a word of the value, not in the middle of one
    digest = hashlib.sha256(text.encode()).hexdigest()[:digits]
    return f"{readable or 'value'}-{digest}"


def image_flux(defaults_flux: Mapping[str, JsonScalar], own_flux: Mapping[str, JsonScalar]) -> Mapping[str, JsonScalar]:
    return frozen(apply_defaults({**defaults_flux, **own_flux}))
