"""What Airflow would refuse, found first: a spec Airflow cannot build, serialize or schedule is a spec error.

Airflow's own rules are read from its source (``airflow/sdk/definitions/_internal/node.py: validate_key``,
``dag.py: TAG_MAX_LEN``, ``asset/__init__.py: Asset``) and restated here without importing Airflow, so
``flexflow validate`` stays light; ``tests/test_spec_airflow_rules.py`` holds them to Airflow's behaviour.
Some rules are stricter than Airflow where Airflow accepts what breaks later: ids with a trailing newline
(its ``$`` matches before one), start dates a MySQL metadata database cannot store, schedules too frequent
for the deployment (:func:`flexflow.defaults.deployment_limits`), runs with more jobs than it allows.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from croniter import CroniterBadDateError, croniter

from flexflow.defaults import MAX_JOBS_PER_RUN_ENV, MIN_SCHEDULE_INTERVAL_ENV, Limits, shown
from flexflow.spec.yaml_source import KeyPath

Finding = tuple[KeyPath, str]

#: Airflow's longest key (dag and task ids), and the suffix the loader gives a broken spec whose id a
#: valid one holds: a dag_id leaves room for it.
AIRFLOW_KEY_MAX = 250
INVALID_SUFFIX = "__invalid"
DAG_ID_MAX = AIRFLOW_KEY_MAX - len(INVALID_SUFFIX)
TAG_MAX = 100  # airflow.sdk.definitions.dag.TAG_MAX_LEN
#: The tag flexflow gives a broken spec's DAG; a valid spec claiming it would look broken.
RESERVED_TAGS = frozenset({"invalid"})
#: Task and group names flexflow gives its own tasks; an image (a task group) must not take one.
RESERVED_NAMES = ("prepare", "finalize", "review", "invalid_spec", "submit", "wait", "publish")
#: Airflow's key characters, ASCII only; ``fullmatch`` so that a trailing newline is refused too.
DAG_ID = re.compile(r"[A-Za-z0-9_.-]+")
#: Airflow's connection ids (``airflow/models/connection.py: RE_SANITIZE_CONN_ID``, at most 250), ASCII
#: only: ``flexflow run`` passes a connection as an ``AIRFLOW_CONN_<ID>`` environment variable.
CONN_ID = re.compile(r"[A-Za-z0-9_#!().:/\\-]{1,250}")
IMAGE_NAME = re.compile(r"[a-z][a-z0-9_]*")
#: Run dates every metadata database stores: MySQL's TIMESTAMP holds 1970-01-01 to 2038-01-19.
EARLIEST_START = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_START = datetime(2038, 1, 1, tzinfo=UTC)
ASSET_MAX = 1500  # airflow.sdk.definitions.asset._validate_identifier
ASSET_RESERVED_NAMES = frozenset({"self", "context"})
#: Airflow's cron presets, as the cron expressions they stand for (``@once`` has no interval).
PRESET_CRONS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
#: Bounds on the work of reading a schedule: fire times walked within a day, matching days walked.
MAX_FIRES_PER_DAY = 1441
#: Minute hour day month weekday, and croniter's optional seconds; a seventh field (years) is refused.
MAX_CRON_FIELDS = 6
MAX_DAYS = 800
_WALK_FROM = datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)  # the next fire is the first of a whole day
_DAY = timedelta(days=1)


def airflow_findings(data: Mapping[str, Any], limits: Limits) -> Iterator[Finding]:
    """Every rule of this module on the raw spec data; values of the wrong type are the schema's to report."""
    yield from _dag_id(data.get("dag_id"))
    yield from _tags(data.get("tags"))
    images = data.get("images")
    if isinstance(images, list):
        yield from _image_names(images)
        yield from _job_cap(images, limits.max_jobs_per_run)
    publish = data.get("publish")
    yield from _connection_id(("connection_id",), data.get("connection_id"))
    if isinstance(publish, dict):
        yield from _connection_id(("publish", "conn_id"), publish.get("conn_id"))
    if isinstance(publish, dict) and isinstance(publish.get("asset"), str):
        yield from ((("publish", "asset"), message) for message in asset_problems(publish["asset"]))
    yield from _nul_characters(data, ())


def _nul_characters(value: object, path: KeyPath) -> Iterator[Finding]:
    """A NUL in any string: PostgreSQL cannot store it, and the serialized DAG holds every value.

    One such spec would fail the DAG processor's write of the whole DAG file, hiding every flexflow DAG.
    """
    if isinstance(value, dict):
        for key, item in value.items():  # keys: the schema allows only plain names
            yield from _nul_characters(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_characters(item, (*path, index))
    elif isinstance(value, str) and "\x00" in value:
        yield path, "holds a NUL character, which Airflow's database cannot store; remove it"


def _dag_id(dag_id: object) -> Iterator[Finding]:
    if not isinstance(dag_id, str) or not DAG_ID.search(dag_id):
        return  # not a string, or no key characters at all: the schema says so
    if not DAG_ID.fullmatch(dag_id):
        yield ("dag_id",), f"{dag_id!r} must be only letters, digits, '_', '.' and '-' (no spaces or line breaks)"
    elif len(dag_id) > DAG_ID_MAX:
        yield (
            ("dag_id",),
            f"is {len(dag_id)} characters; at most {DAG_ID_MAX} (Airflow's {AIRFLOW_KEY_MAX} less '{INVALID_SUFFIX}')",
        )
    elif ".." in dag_id:
        yield ("dag_id",), f"'{dag_id}' contains '..', which Airflow refuses in ids (paths are built from them)"
    elif dag_id.endswith(INVALID_SUFFIX):
        yield ("dag_id",), f"'{dag_id}' ends in '{INVALID_SUFFIX}', the name flexflow gives a broken spec's DAG"


def connection_id_problem(conn_id: str) -> str | None:
    """Why Airflow could not hold a connection of this id, or None."""
    if CONN_ID.fullmatch(conn_id):
        return None
    return f"{conn_id!r} is not an Airflow connection id: 1 to 250 of letters, digits and _ # ! ( ) . : / \\ -"


def _connection_id(path: KeyPath, conn_id: object) -> Iterator[Finding]:
    if isinstance(conn_id, str) and conn_id and (problem := connection_id_problem(conn_id)):
        yield path, problem


def _tags(tags: object) -> Iterator[Finding]:
    if not isinstance(tags, list):
        return
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag:
            continue
        if len(tag) > TAG_MAX:
            yield ("tags", index), f"is {len(tag)} characters; Airflow allows at most {TAG_MAX}"
        elif not tag.isprintable() or tag != tag.strip():
            yield ("tags", index), f"{tag!r} has a line break, control character or surrounding space"
        elif tag in RESERVED_TAGS:
            yield ("tags", index), f"'{tag}' is the tag flexflow gives a broken spec's DAG; choose another"


def _image_names(images: list[Any]) -> Iterator[Finding]:
    for index, image in enumerate(images):
        name = image.get("name") if isinstance(image, dict) else None
        if not isinstance(name, str) or not IMAGE_NAME.match(name):
            continue  # the schema reports it
        if not IMAGE_NAME.fullmatch(name):
            yield ("images", index, "name"), f"{name!r} must be only lowercase letters, digits and _ (no line breaks)"
        elif name in RESERVED_NAMES:
            yield (
                ("images", index, "name"),
                f"'{name}' is a task name flexflow uses; choose another (reserved: {', '.join(RESERVED_NAMES)})",
            )


def image_jobs(image: object) -> int:
    """The jobs of one image per run, counted without expanding its variants: the product of the list lengths."""
    variants = image.get("variants") if isinstance(image, dict) else None
    count = 1
    if isinstance(variants, dict):
        for values in variants.values():
            count *= len(values) if isinstance(values, list) and values else 1
    return count


def _job_cap(images: list[Any], cap: int) -> Iterator[Finding]:
    counts = [image_jobs(image) for image in images]
    total = sum(counts)
    if total <= cap:
        return
    largest = max(range(len(counts)), key=counts.__getitem__)
    has_variants = isinstance(images[largest], dict) and "variants" in images[largest]
    path: KeyPath = ("images", largest, "variants") if has_variants else ("images",)
    yield path, f"the spec would make {total:,} jobs per run; a run may make at most {cap:,} ({MAX_JOBS_PER_RUN_ENV})"


def asset_problems(uri: str) -> list[str]:
    """Why Airflow's ``Asset(uri)`` (name and URI both ``uri``) would refuse it, plus two stricter rules.

    Stricter: non-ASCII (a MySQL metadata database refuses it) and a password in the URI (Airflow drops
    it with a warning; a spec holds no secrets).
    """
    problem = _identifier_problem(uri) or ("'self' and 'context' are reserved" if uri in ASSET_RESERVED_NAMES else None)
    if problem:
        return [problem]
    if not uri.isascii():
        return ["must be ASCII (MySQL metadata databases store asset URIs as latin1)"]
    try:
        parsed = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        return [f"is not a URI Airflow reads: {exc}"]
    scheme = parsed.scheme.lower()
    if scheme == "airflow":
        return ["the scheme 'airflow' is reserved by Airflow"]
    if scheme and not scheme.startswith("x-") and parsed.password:
        return ["holds a password; a spec holds no secrets"]
    if scheme == "s3" and not parsed.netloc:  # the Amazon provider's URI check (flexflow[s3] installs it)
        return ["an s3:// asset needs a bucket: s3://bucket/key (Airflow's Amazon provider refuses it otherwise)"]
    normalized = _normalized(parsed, scheme) if scheme and not scheme.startswith("x-") else uri
    problem = _identifier_problem(normalized)
    return [f"as Airflow normalizes it ({normalized!r}), {problem}"] if problem else []


def _identifier_problem(value: str) -> str | None:
    if not value:
        return "cannot be empty"
    if len(value) > ASSET_MAX:
        return f"is {len(value):,} characters; Airflow allows at most {ASSET_MAX}"
    if value.isspace():
        return "cannot be only whitespace"
    return None


def _normalized(parsed: urllib.parse.SplitResult, scheme: str) -> str:
    """The URI as Airflow stores it: lowercase scheme, no trailing slash or fragment, sorted query, no user info."""
    query = urllib.parse.urlencode(sorted(urllib.parse.parse_qsl(parsed.query))) if parsed.query else ""
    netloc = parsed.netloc.rpartition("@")[2] if parsed.password else parsed.netloc
    path = parsed.path.rstrip("/") or "/"
    return urllib.parse.urlunsplit(parsed._replace(scheme=scheme, netloc=netloc, path=path, query=query, fragment=""))


def start_date_problem(start: datetime) -> str | None:
    """A start date outside what every Airflow metadata database stores."""
    moment = start if start.tzinfo else start.replace(tzinfo=UTC)
    if EARLIEST_START <= moment < LATEST_START:
        return None
    first, last = EARLIEST_START.date(), (LATEST_START - _DAY).date()
    return f"'{start.isoformat()}' is outside the dates Airflow stores; write one from {first} to {last}"


def schedule_problem(schedule: str, minimum: timedelta) -> str | None:
    """A valid cron expression or preset that never fires, or fires more often than ``minimum``."""
    expression = PRESET_CRONS.get(schedule, schedule)
    if expression.startswith("@"):
        return None  # @once
    if len(expression.split()) > MAX_CRON_FIELDS:
        # Airflow aligns a schedule to its last fire before now: after the last year listed there is none.
        return f"'{schedule}' names years; a schedule repeats: write minute hour day month weekday"
    try:
        gap = shortest_gap(expression, minimum)
    except CroniterBadDateError:
        return f"'{schedule}' never fires: no date matches it"
    if gap is None:
        return None
    return (
        f"'{schedule}' starts runs {shown(gap)} apart; the shortest interval allowed is "
        f"{shown(minimum)} ({MIN_SCHEDULE_INTERVAL_ENV})"
    )


@lru_cache(maxsize=1024)
def shortest_gap(expression: str, minimum: timedelta) -> timedelta | None:
    """A gap between two fire times shorter than ``minimum``, or None when there is none; bounded work.

    Every matching day has the same times of day, so one whole day shows every gap within a day. A gap
    across midnight is shortest between two consecutive matching days: 24 h less the day's span.
    """
    fires = croniter(expression, _WALK_FROM)
    first = previous = fires.get_next(datetime)
    for _ in range(MAX_FIRES_PER_DAY):
        fire = fires.get_next(datetime)
        if fire - previous < minimum:
            return fire - previous
        if fire.date() != first.date():
            break
        previous = fire
    across = _DAY - (previous - first)
    if across < minimum and _consecutive_days(expression):
        return across
    return None


def _consecutive_days(expression: str) -> bool:
    """Whether two consecutive calendar days match the expression's day fields (within ``MAX_DAYS`` matches)."""
    day_fields = expression.split()[2:5]
    days = croniter(" ".join(["0", "0", *day_fields]), _WALK_FROM)
    previous = days.get_next(datetime)
    for _ in range(MAX_DAYS):
        day = days.get_next(datetime)
        if day - previous == _DAY:
            return True
        previous = day
    return False
