"""``flexflow diff``: what changes between two sets of specs, and what it does to the spend.

Specs are matched by ``dag_id`` (a renamed file is not a change), images by name, variants by label.
Values are compared after every default is applied (the validated :class:`Spec`), so a comment, a
reordered key or a default written out changes nothing, and a changed default shows where it lands.

Spend comes from :func:`flexflow.spec.budget.run_estimate`, the function ``flexflow plan`` uses, at the
spec's budget price or the default. Runs per month are defined by :func:`runs_per_year`: the schedule's
fire times in the fixed calendar year :data:`REFERENCE_YEAR` (UTC), divided by 12, so they never depend
on today's date.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from croniter import croniter

from flexflow.spec.airflow_rules import PRESET_CRONS
from flexflow.spec.budget import NOTHING, Estimate, price_of, run_estimate
from flexflow.spec.folder import lenient_dag_id_in
from flexflow.spec.model import ImageSpec, Spec, thawed
from flexflow.spec.pipeline import parse_spec
from flexflow.spec.problems import SpecError, SpecProblem
from flexflow.spec.sources import SpecTexts
from flexflow.spec.yaml_source import load

#: The year whose fire times define a schedule's runs per month (a year of 365 days, starting on a Thursday).
REFERENCE_YEAR = 2026
MONTHS = 12
#: Bound on the fire times counted within one day (a seconds field could ask for 86,400).
_MAX_FIRES_PER_DAY = 86_400


def runs_per_year(schedule: str | None) -> int:
    """The runs ``schedule`` starts in :data:`REFERENCE_YEAR` (UTC); ``None`` (manual) and ``@once``: 0.

    Every day matching the cron's day fields has the same fire times, so the count is the matching days
    times one matching day's fire times: at most 366 + 86,400 steps whatever the schedule.
    ``start_date``, ``catchup`` and time zones are left out: this is a schedule's steady rate.
    """
    if schedule is None:
        return 0
    expression = PRESET_CRONS.get(schedule, schedule)
    if expression.startswith("@"):
        return 0  # @once: one run in all, none per month
    fields = expression.split()
    year_start = datetime(REFERENCE_YEAR, 1, 1, tzinfo=UTC)
    year_end = datetime(REFERENCE_YEAR + 1, 1, 1, tzinfo=UTC)
    days = croniter(" ".join(["0", "0", *fields[2:5]]), year_start - timedelta(seconds=1))
    matching = 0
    first_day: datetime | None = None
    while (day := days.get_next(datetime)) < year_end:
        matching += 1
        first_day = first_day or day
    if first_day is None:
        return 0
    fires = croniter(expression, first_day - timedelta(seconds=1))
    per_day = 0
    while fires.get_next(datetime).date() == first_day.date() and per_day < _MAX_FIRES_PER_DAY:
        per_day += 1
    return matching * per_day


def runs_per_month(schedule: str | None) -> Decimal:
    """:func:`runs_per_year` / 12, exact (``@weekly``: 52/12)."""
    return Decimal(runs_per_year(schedule)) / MONTHS


# -- the two sides, loaded ------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """A spec file of one side that does not validate (or whose dag_id another file also claims)."""

    dag_id: str  # the dag_id it meant (read leniently), else its file's stem
    file: str
    problems: tuple[SpecProblem, ...]


@dataclass(frozen=True)
class Side:
    label: str
    commit: str | None
    folder: str
    exists: bool
    specs: Mapping[str, Spec]  # by dag_id
    invalid: tuple[Invalid, ...]


def load_side(texts: SpecTexts) -> Side:
    """Every spec of one side validated from its text, as ``flexflow validate`` would (no files written)."""
    loaded: dict[str, list[Spec]] = {}
    invalid: list[Invalid] = []
    for file, reason in sorted(texts.unreadable.items()):
        invalid.append(Invalid(lenient_dag_id_in("", file), file, (SpecProblem(file, 1, 1, reason),)))
    for file, data in sorted(texts.files.items()):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problem = SpecProblem(file, 1, 1, "the file is not UTF-8 text")
            invalid.append(Invalid(lenient_dag_id_in("", file), file, (problem,)))
            continue
        try:
            spec = parse_spec(text, file)
        except SpecError as exc:
            invalid.append(Invalid(lenient_dag_id_in(text, file), file, tuple(exc.problems)))
            continue
        loaded.setdefault(spec.dag_id, []).append(spec)
    specs: dict[str, Spec] = {}
    for dag_id, same in loaded.items():
        if len(same) == 1:
            specs[dag_id] = same[0]
            continue
        for spec in same:
            others = ", ".join(s.path for s in same if s is not spec)
            message = f"dag_id: '{dag_id}' is also the dag_id of {others}"
            line, column = load(spec.source)[1].of(("dag_id",))  # where flexflow validate puts it
            invalid.append(Invalid(dag_id, spec.path, (SpecProblem(spec.path, line, column, message, "dag_id"),)))
    return Side(texts.label, texts.commit, texts.folder, texts.exists, specs, tuple(invalid))


# -- what changed ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One value that differs: ``field`` as a path (``schedule``, ``flux.resolution``, ``publish.to``)."""

    field: str
    old: Any  # JSON values; None also stands for "not set"
    new: Any

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class VariantDiff:
    label: str  # "" for an image without variants (never listed: the image is its one job)
    status: str  # added | removed | changed
    changes: tuple[Change, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "status": self.status, "changes": [c.to_json() for c in self.changes]}


@dataclass(frozen=True)
class ImageDiff:
    name: str
    status: str  # added | removed | changed
    changes: tuple[Change, ...] = ()
    variants: tuple[VariantDiff, ...] = ()
    jobs: tuple[int, int] = (0, 0)  # jobs per run of this image, before and after

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "jobs": {"base": self.jobs[0], "head": self.jobs[1]},
            "changes": [c.to_json() for c in self.changes],
            "variants": [v.to_json() for v in self.variants],
        }


@dataclass(frozen=True)
class Spend:
    """One side's spend for a spec: per run (at ``price``) and per month (runs per month of its schedule)."""

    per_run: Estimate
    price: Decimal
    runs_per_month: Decimal

    @property
    def monthly_credits(self) -> Decimal:
        return self.per_run.credits * self.runs_per_month

    @property
    def monthly_usd(self) -> Decimal:
        return self.per_run.usd * self.runs_per_month

    def to_json(self) -> dict[str, Any]:
        return {
            "per_run": self.per_run.to_dict(),
            "price_per_megapixel": str(self.price),
            "runs_per_month": money(self.runs_per_month),
            "credits_per_month": money(self.monthly_credits),
            "usd_per_month": money(self.monthly_usd),
        }


NO_SPEND = Spend(NOTHING, Decimal(0), Decimal(0))


def spend_of(spec: Spec | None) -> Spend:
    if spec is None:
        return NO_SPEND
    return Spend(run_estimate(spec), price_of(spec), runs_per_month(spec.schedule))


def money(amount: Decimal) -> str:
    """Two decimals, for monthly figures (a month of a weekly schedule is 52/12 runs)."""
    return str(amount.quantize(Decimal("0.01")))


@dataclass(frozen=True)
class SpecDiff:
    dag_id: str
    #: added | removed | changed | unchanged; invalid (in head); fixed (invalid in base only, valid in head)
    status: str
    files: tuple[str | None, str | None]  # the file on each side (a rename is shown, not counted)
    changes: tuple[Change, ...] = ()
    images: tuple[ImageDiff, ...] = ()
    spend: tuple[Spend, Spend] = (NO_SPEND, NO_SPEND)
    invalid: tuple[tuple[str, Invalid], ...] = ()  # (side, the file's problems): side is base or head

    @property
    def invalid_in_head(self) -> bool:
        return any(side == "head" for side, _ in self.invalid)

    def to_json(self) -> dict[str, Any]:
        base, head = self.spend
        return {
            "dag_id": self.dag_id,
            "status": self.status,
            "file": {"base": self.files[0], "head": self.files[1]},
            "changes": [c.to_json() for c in self.changes],
            "images": [i.to_json() for i in self.images],
            "spend": {
                "base": base.to_json(),
                "head": head.to_json(),
                "delta": {
                    "jobs_per_run": head.per_run.jobs - base.per_run.jobs,
                    "credits_per_run": head.per_run.credits - base.per_run.credits,
                    "usd_per_run": str(head.per_run.usd - base.per_run.usd),
                    "usd_per_month": money(head.monthly_usd - base.monthly_usd),
                },
            },
            "invalid": [
                {
                    "side": side,
                    "file": bad.file,
                    "problems": [
                        {"line": p.line, "column": p.column, "message": p.message, "text": str(p)} for p in bad.problems
                    ],
                }
                for side, bad in self.invalid
            ],
        }


@dataclass(frozen=True)
class Diff:
    base: Side
    head: Side
    specs: tuple[SpecDiff, ...]  # every dag_id of either side, sorted; unchanged ones too

    @property
    def shown(self) -> tuple[SpecDiff, ...]:
        return tuple(s for s in self.specs if s.status != "unchanged")

    @property
    def has_changes(self) -> bool:
        return any(s.status in ("added", "removed", "changed", "fixed") for s in self.specs)

    @property
    def has_invalid(self) -> bool:
        """A spec of HEAD does not validate (one invalid in BASE only is a fix, shown as ``fixed``)."""
        return any(s.invalid_in_head for s in self.specs)

    def count(self, status: str) -> int:
        return sum(1 for s in self.specs if s.status == status)

    def monthly_usd(self) -> tuple[Decimal, Decimal]:
        return (
            sum((s.spend[0].monthly_usd for s in self.specs), Decimal(0)),
            sum((s.spend[1].monthly_usd for s in self.specs), Decimal(0)),
        )

    def to_json(self) -> dict[str, Any]:
        before, after = self.monthly_usd()
        return {
            "diff_version": 1,
            "base": _side_json(self.base),
            "head": _side_json(self.head),
            "changes": self.has_changes,
            "invalid": self.has_invalid,
            "summary": {
                "added": self.count("added"),
                "removed": self.count("removed"),
                "changed": self.count("changed"),
                "unchanged": self.count("unchanged"),
                "fixed": self.count("fixed"),
                "invalid": self.count("invalid"),
                "usd_per_month": {"base": money(before), "head": money(after), "delta": money(after - before)},
                "runs_per_month": f"fire times in {REFERENCE_YEAR} (UTC) / 12; manual and @once: 0",
            },
            "specs": [s.to_json() for s in self.shown],
        }


def _side_json(side: Side) -> dict[str, Any]:
    return {"label": side.label, "commit": side.commit, "folder": side.folder, "exists": side.exists}


def diff(base: Side, head: Side) -> Diff:
    """Every dag_id of either side: added, removed, changed, unchanged, invalid in HEAD, or fixed."""
    bad: dict[str, list[tuple[str, Invalid]]] = {}
    for name, side in (("base", base), ("head", head)):
        for item in side.invalid:
            bad.setdefault(item.dag_id, []).append((name, item))
    found = []
    for dag_id in sorted(set(base.specs) | set(head.specs) | set(bad)):
        old, new = base.specs.get(dag_id), head.specs.get(dag_id)
        files = (old.path if old else None, new.path if new else None)
        spend = (spend_of(old), spend_of(new))
        if dag_id in bad:
            files = (
                files[0] or next((i.file for s, i in bad[dag_id] if s == "base"), None),
                files[1] or next((i.file for s, i in bad[dag_id] if s == "head"), None),
            )
            problems = tuple(bad[dag_id])
            if any(side == "head" for side, _ in problems):
                found.append(SpecDiff(dag_id, "invalid", files, spend=spend, invalid=problems))
            else:  # invalid in base only: the change fixes it (or removes it), which must not fail the diff
                status, images = ("fixed", _images(None, new)) if new is not None else ("removed", ())
                found.append(SpecDiff(dag_id, status, files, (), images, spend, problems))
        elif old is None and new is not None:
            found.append(SpecDiff(dag_id, "added", files, (), _images(None, new), spend))
        elif new is None and old is not None:
            found.append(SpecDiff(dag_id, "removed", files, (), _images(old, None), spend))
        elif old is not None and new is not None:
            changes = tuple(spec_changes(old, new))
            images = _images(old, new)
            status = "changed" if changes or images else "unchanged"
            found.append(SpecDiff(dag_id, status, files, changes, images, spend))
    return Diff(base, head, tuple(found))


def spec_changes(old: Spec, new: Spec) -> Iterator[Change]:
    """The spec-level values that differ (images aside), every default applied."""
    yield from _changed(spec_values(old), spec_values(new))


def spec_values(spec: Spec) -> dict[str, Any]:
    values: dict[str, Any] = {
        "description": spec.description,
        "schedule": spec.schedule,
        "start_date": spec.start_date,
        "catchup": spec.catchup,
        "tags": spec.tags,
        "owner": spec.owner,
        "connection_id": spec.connection_id,
        "pool": spec.pool,
        "reuse": spec.reuse,
        "publish.to": spec.publish.to,
        "publish.conn_id": spec.publish.conn_id,
        "publish.filename": spec.publish.filename,
        "publish.manifest": spec.publish.manifest,
        "publish.asset": spec.publish.asset,
    }
    values.update({f"params.{key}": value for key, value in spec.params.items()})
    if spec.budget is not None:
        for key in ("credits_per_run", "usd_per_run", "credits_per_day", "usd_per_day", "price_per_megapixel"):
            values[f"budget.{key}"] = getattr(spec.budget, key)
    return values


def image_values(image: ImageSpec) -> dict[str, Any]:
    values: dict[str, Any] = {
        "prompt": image.prompt,
        "variant_keys": image.variant_keys,
        "retries": image.retries,
        "retry_delay": image.retry_delay,
        "timeout": image.timeout,
        "poll_interval": image.poll_interval,
        "webhook_url": image.webhook_url,
        "webhook_events": image.webhook_events,
    }
    values.update({f"flux.{key}": value for key, value in image.flux.items()})
    return values


def _images(old: Spec | None, new: Spec | None) -> tuple[ImageDiff, ...]:
    before = {image.name: image for image in old.images} if old else {}
    after = {image.name: image for image in new.images} if new else {}
    found = []
    for name in [*before, *(n for n in after if n not in before)]:
        was, now = before.get(name), after.get(name)
        jobs = (was.job_count if was else 0, now.job_count if now else 0)
        if was is None and now is not None:
            found.append(ImageDiff(name, "added", jobs=jobs))
        elif now is None and was is not None:
            found.append(ImageDiff(name, "removed", jobs=jobs))
        elif was is not None and now is not None:
            changes = tuple(_changed(image_values(was), image_values(now)))
            variants = _variants(was, now)
            if changes or variants:
                found.append(ImageDiff(name, "changed", changes, variants, jobs))
    return tuple(found)


def _variants(old: ImageSpec, new: ImageSpec) -> tuple[VariantDiff, ...]:
    """Variants by label: added, removed, and changed (the job's resolved fluxParams differ).

    An image without variants is its one job: its changes are the image's, not listed again.
    """
    if not old.variant_keys and not new.variant_keys:
        return ()
    before = {v.label: old.job_flux(v) for v in old.variants if v.label}
    after = {v.label: new.job_flux(v) for v in new.variants if v.label}
    found = [VariantDiff(label, "removed") for label in before if label not in after]
    for label, flux in after.items():
        if label not in before:
            found.append(VariantDiff(label, "added"))
        elif flux != before[label]:
            prefixed_old = {f"flux.{k}": v for k, v in before[label].items()}
            prefixed_new = {f"flux.{k}": v for k, v in flux.items()}
            found.append(VariantDiff(label, "changed", tuple(_changed(prefixed_old, prefixed_new))))
    return tuple(found)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Change]:
    for key in [*old, *(k for k in new if k not in old)]:
        was, now = plain(old.get(key)), plain(new.get(key))
        if was != now or type(was) is not type(now):
            yield Change(key, was, now)


def plain(value: Any) -> Any:
    """A model value as JSON: durations as specs write them, dates in ISO 8601, Decimals as text."""
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return thawed(value)


def _duration(value: timedelta) -> str:
    milliseconds = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds >= size and milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"
