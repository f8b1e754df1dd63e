"""Every default flexflow applies, in one place.

The spec model and its JSON Schema's ``default``s, the hook, the ``apiframe`` connection form and the
generated table in ``docs/spec.md`` all read these values (``python -m flexflow.defaults`` prints the
table; a test fails when the page is stale).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TypeVar

from flexflow.contract.wire import job_path

#: The Airflow connection (type ``apiframe``) specs and operators use unless they name another.
CONNECTION_ID = "apiframe_default"
#: The Airflow pool a compiled spec's submit and wait tasks run in: its slots cap the jobs in flight.
POOL = "apiframe"
#: The slots ``flexflow run`` gives a pool its private Airflow home lacks (a deployment sets its own).
POOL_SLOTS = 10
#: Longest wait for one API response, in seconds (the official SDK's), and for connecting.
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
#: Attempts per API call for rate limits and outages, backoff in between.
MAX_ATTEMPTS = 5
#: Where the "Apiframe job" link points; ``{base_url}`` and ``{job_id}`` are filled in.
JOB_LINK = "{base_url}" + job_path("{job_id}")
#: First interval between status checks; it grows by half each poll, up to the maximum.
POLL_INTERVAL = timedelta(seconds=2)
MAX_POLL_INTERVAL = timedelta(seconds=30)
#: Longest wait for one job, from its submission.
JOB_TIMEOUT = timedelta(minutes=20)
RETRIES = 2
RETRY_DELAY = timedelta(minutes=1)
OWNER = "flexflow"
FILENAME = "{image}{variant}.{ext}"
MANIFEST = True
#: ``publish.review``: "none" publishes as soon as every image is stored; "required" waits for a person.
REVIEW = "none"
#: Longest wait for that person, and the bounds a spec's ``publish.review_timeout`` must keep: at least a
#: minute (a person has to see the request), at most 30 days (a run parked longer is forgotten).
REVIEW_TIMEOUT = timedelta(days=3)
MIN_REVIEW_TIMEOUT = timedelta(minutes=1)
MAX_REVIEW_TIMEOUT = timedelta(days=30)
CATCHUP = False
#: Deployment limits (not spec keys): the shortest gap between two scheduled runs, the most jobs one run
#: may submit. A deployment sets them with the environment variables below (read by ``deployment_limits``).
MIN_SCHEDULE_INTERVAL = timedelta(hours=1)
MAX_JOBS_PER_RUN = 500
MIN_SCHEDULE_INTERVAL_ENV = "FLEXFLOW_MIN_SCHEDULE_INTERVAL"
MAX_JOBS_PER_RUN_ENV = "FLEXFLOW_MAX_JOBS_PER_RUN"
#: USD per billed megapixel (Black Forest Labs' FLUX.2 [flex]: about $0.05 per started megapixel): what
#: ``flexflow plan`` estimates with and a spec's ``budget.price_per_megapixel`` defaults to.
PRICE_PER_MEGAPIXEL = Decimal("0.05")
#: Far above any real price: a larger value is a typo (or an attempt to overflow the estimate).
MAX_PRICE_PER_MEGAPIXEL = Decimal(1000)


@dataclass(frozen=True)
class Limits:
    """What one deployment allows a spec: the validation rules and the spec cache's key both read these."""

    min_schedule_interval: timedelta = MIN_SCHEDULE_INTERVAL
    max_jobs_per_run: int = MAX_JOBS_PER_RUN


_ENV_DURATION = re.compile(r"(\d{1,9})([smhd]?)")  # bounded digits: an environment value, never spec text
_ENV_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_T = TypeVar("_T")


def deployment_limits() -> Limits:
    """The limits set in the environment (``FLEXFLOW_MIN_SCHEDULE_INTERVAL=30m``, ``FLEXFLOW_MAX_JOBS_PER_RUN=200``).

    Read on every call (cheap), so a changed setting applies at the next parse. A value that is not a
    positive duration or count keeps the default, with a warning: a typo must not lift a limit.
    """
    return Limits(_env_interval(), _env_jobs())


def _env_interval() -> timedelta:
    text = os.environ.get(MIN_SCHEDULE_INTERVAL_ENV, "").strip()
    match = _ENV_DURATION.fullmatch(text)
    if not text:
        return MIN_SCHEDULE_INTERVAL
    if not match or int(match.group(1)) == 0:
        return _ignored(MIN_SCHEDULE_INTERVAL_ENV, text, MIN_SCHEDULE_INTERVAL)
    return timedelta(seconds=int(match.group(1)) * _ENV_UNITS[match.group(2)])


def _env_jobs() -> int:
    text = os.environ.get(MAX_JOBS_PER_RUN_ENV, "").strip()
    if not text:
        return MAX_JOBS_PER_RUN
    if not text.isdecimal() or len(text) > 9 or int(text) == 0:
        return _ignored(MAX_JOBS_PER_RUN_ENV, text, MAX_JOBS_PER_RUN)
    return int(text)


def _ignored(name: str, text: str, default: _T) -> _T:
    warnings.warn(f"{name}={text!r} is not valid; using the default {shown(default)}", stacklevel=3)
    return default


@dataclass(frozen=True)
class Default:
    """One row of the documented table: where the value is set, the value, what it means."""

    where: str
    key: str
    value: object
    meaning: str


def shown(value: object) -> str:
    """A default as docs and error messages write it: durations like a spec does (``2s``, ``20m``)."""
    if isinstance(value, timedelta):
        seconds = int(value.total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: What each key of the table means, as the docs say it.
_MEANINGS: dict[str, str] = {
    "connection_id": "Airflow connection (type apiframe): base URL and key",
    "owner": "Airflow owner of the DAG's tasks",
    "catchup": "run missed intervals after a pause",
    "pool": "Airflow pool of the submit and wait tasks: its slots cap the jobs in flight",
    "retries": "Airflow task retries",
    "retry_delay": "wait between task retries",
    "timeout": "longest wait for one job",
    "poll_interval": "first interval between status checks; it grows on long jobs",
    "filename": "file name pattern: {image} {variant} {ext} {job_id}",
    "manifest": "write manifest.json beside the images",
    "review": "none: publish when stored; required: wait for an approval in Airflow first",
    "review_timeout": "longest wait for that approval; then nothing is published",
    "request_timeout": "longest wait for one API response, seconds",
    "max_attempts": "attempts per API call for rate limits and outages",
    "job_link": "where the 'Apiframe job' button points",
    "max_poll_interval": "longest interval between status checks",
}


def _part(where: str, **values: object) -> tuple[Default, ...]:
    """The rows of one part of the table (where a spec or the connection sets them), in the order given."""
    return tuple(Default(where, key, value, _MEANINGS[key]) for key, value in values.items())


TABLE: tuple[Default, ...] = (
    *_part("spec", connection_id=CONNECTION_ID, owner=OWNER, catchup=CATCHUP),
    *_part("spec", pool=POOL),
    *_part("image", retries=RETRIES, retry_delay=RETRY_DELAY, timeout=JOB_TIMEOUT, poll_interval=POLL_INTERVAL),
    *_part("publish", filename=FILENAME, manifest=MANIFEST, review=REVIEW, review_timeout=REVIEW_TIMEOUT),
    *_part("connection", request_timeout=REQUEST_TIMEOUT, max_attempts=MAX_ATTEMPTS, job_link=JOB_LINK),
    *_part("wait", max_poll_interval=MAX_POLL_INTERVAL),
)

TABLE_START = "<!-- defaults:start (generated by `python -m flexflow.defaults`) -->"
TABLE_END = "<!-- defaults:end -->"


def defaults_markdown() -> str:
    """The table docs/spec.md embeds between ``TABLE_START`` and ``TABLE_END``."""
    rows = [f"| {d.where} | `{d.key}` | `{shown(d.value)}` | {d.meaning} |" for d in TABLE]
    return "\n".join([TABLE_START, "| where | key | default | meaning |", "|---|---|---|---|", *rows, TABLE_END])


if __name__ == "__main__":
    print(defaults_markdown())  # noqa: T201
