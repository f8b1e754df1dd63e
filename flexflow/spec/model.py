"""The validated spec: an immutable, typed model, with every default applied once (here)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from flexflow.contract.params import JsonScalar, apply_defaults
from flexflow.contract.sizes import credit_cost, megapixels


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
    params: Mapping[str, Any]
    images: tuple[ImageSpec, ...]
    publish: PublishSpec
    extras: Mapping[str, Any] = field(default_factory=lambda: frozen({}))

    @property
    def job_count(self) -> int:
        return sum(image.job_count for image in self.images)

    def jobs(self) -> list[tuple[ImageSpec, Variant, dict[str, JsonScalar]]]:
        return [(image, v, image.job_flux(v)) for image in self.images for v in image.variants]

    @property
    def megapixels(self) -> float:
        return float(sum(megapixels(str(flux["resolution"])) for _, _, flux in self.jobs()))

    @property
    def credits(self) -> int:
        return sum(credit_cost(flux) for _, _, flux in self.jobs())


def build_variants(values: Mapping[str, list[JsonScalar]]) -> tuple[Variant, ...]:
    """Every combination of the listed values, in the order written; labels like ``_seed-1``."""
    if not values:
        return (Variant("", frozen({})),)
    keys = list(values)
    return tuple(
        Variant(
            "_" + "_".join(f"{k}-{_label(v)}" for k, v in zip(keys, combo, strict=True)),
            frozen(dict(zip(keys, combo, strict=True))),
        )
        for combo in itertools.product(*(values[k] for k in keys))
    )


def _label(value: JsonScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace(":", "x").replace("/", "-").replace(".", "p")


def image_flux(defaults_flux: Mapping[str, JsonScalar], own_flux: Mapping[str, JsonScalar]) -> Mapping[str, JsonScalar]:
    return frozen(apply_defaults({**defaults_flux, **own_flux}))
