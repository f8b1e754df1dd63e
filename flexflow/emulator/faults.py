"""Fault injection: what goes wrong, on which calls, scripted (the next N) or by a seeded rate.

A rule is ``{"fault": "rate_limit", "count": 2, "route": "submit"}`` (scripted: the next two
matching calls) or ``{"fault": "http_503", "rate": 0.1}`` (each matching call with probability
0.1, drawn from a generator seeded by the plan's ``seed``). Scripted rules are consumed in order
before any rate is drawn. The same rule shape is taken by the Python API, the ``--fault`` flag
(``rate_limit:count=2,route=submit``) and ``POST /_emulator/faults``.

Faults of one HTTP exchange (request faults):

- ``rate_limit``: 429 with ``Retry-After: <retry_after>`` (seconds; ``retry_after_date=true`` sends an
  HTTP-date; ``retry_after=none`` sends no ``Retry-After`` at all)
- ``http_408``, ``http_500``, ``http_502``, ``http_503``, ``http_504``: that status, with a JSON error body
- ``drop``: the connection is closed before the request is handled
- ``slow``: the response comes after ``delay`` seconds
- ``lost_response``: the request is carried out (a submit creates its job), then the connection is cut
- ``cut_transfer``: the response announces its full ``Content-Length``, sends about half the body and
  closes the connection (transient: the next download of the same URL is whole); default route ``file``

Outcomes of a job, decided when it is created (one per job):

- ``fail`` (FAILED, provider error; ``message`` sets the text), ``moderation`` (FAILED by moderation),
  ``cancel`` (CANCELLED)
- ``expired_result`` (COMPLETED, already ``expired``, files 404), ``missing_result`` (COMPLETED, files 404)
- ``wrong_content_type`` (the file URL serves an HTML page)
- ``truncated_image`` (the file is permanently cut short; its ``Content-Length`` is honest and it
  cannot be decoded), ``corrupt_image`` (the file has its full length and intact headers, so it opens
  with the right format and size, but its data is garbled: a full decode fails)
- ``several_images`` (the result holds ``images`` distinct URLs, default 3, 2..10, each a distinct valid
  image of the requested format and size)
- ``extra_keys`` (the job and its ``result`` carry keys the contract does not name)
- ``result_string``, ``result_list`` (the result as a bare URL string, or a list of URLs)

Options: ``count`` (a positive integer) or ``rate`` (a finite number in [0, 1]), exactly one;
``route``: ``submit|poll|list|file|api|any`` (request faults only; ``api`` is submit, poll and list,
the default but for ``cut_transfer``); ``retry_after`` (``none`` or seconds in [0, 3600], default 1);
``retry_after_date`` (true/false); ``delay`` (seconds in [0, 600], default 5); ``images`` (2..10,
default 3); ``message`` (text). A refused rule names the option and what it accepts; a list of rules
is checked whole before any is applied.
"""

from __future__ import annotations

import math
import random
import reprlib
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    # Faults of one HTTP exchange.
    RATE_LIMIT = "rate_limit"  # 429, with Retry-After unless retry_after is None
    HTTP_408 = "http_408"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_504 = "http_504"
    DROP = "drop"  # connection closed before any response
    SLOW = "slow"  # the response comes after `delay` seconds
    LOST_RESPONSE = "lost_response"  # the request is carried out (a job is created), the response is lost
    CUT_TRANSFER = "cut_transfer"  # full Content-Length announced, about half the body sent, connection closed
    # Outcomes of a job, decided when it is created.
    FAIL = "fail"  # FAILED with a provider error text
    MODERATION = "moderation"  # FAILED by content moderation
    CANCEL = "cancel"  # CANCELLED
    EXPIRED_RESULT = "expired_result"  # COMPLETED, but already expired: result URLs 404
    MISSING_RESULT = "missing_result"  # COMPLETED, result URLs 404
    WRONG_CONTENT_TYPE = "wrong_content_type"  # result URL serves an HTML page
    TRUNCATED_IMAGE = "truncated_image"  # result file permanently cut short (honest Content-Length)
    CORRUPT_IMAGE = "corrupt_image"  # result file of full length, headers intact, data garbled
    SEVERAL_IMAGES = "several_images"  # `images` distinct result files
    EXTRA_KEYS = "extra_keys"  # the job and its result carry keys the contract does not name
    RESULT_STRING = "result_string"  # result as a bare URL string
    RESULT_LIST = "result_list"  # result as a list of URLs

    @property
    def is_job_outcome(self) -> bool:
        return self in JOB_OUTCOMES


JOB_OUTCOMES = frozenset(
    {
        Fault.FAIL,
        Fault.MODERATION,
        Fault.CANCEL,
        Fault.EXPIRED_RESULT,
        Fault.MISSING_RESULT,
        Fault.WRONG_CONTENT_TYPE,
        Fault.TRUNCATED_IMAGE,
        Fault.CORRUPT_IMAGE,
        Fault.SEVERAL_IMAGES,
        Fault.EXTRA_KEYS,
        Fault.RESULT_STRING,
        Fault.RESULT_LIST,
    }
)
#: Routes a request fault can be aimed at; "api" is submit, poll and list; "any" adds result files.
ROUTES = ("api", "any", "submit", "poll", "list", "file")
#: The route of a rule that names none: cut_transfer is about downloads, everything else about the API.
DEFAULT_ROUTES = {Fault.CUT_TRANSFER: "file"}
PROVIDER_ERRORS = (
    "Provider error: upstream generation failed (Black Forest Labs returned status 'Error')",
    "Provider error: generation timed out after 300s",
)
MODERATION_ERROR = "Content moderation: the request or the output was flagged and cannot be processed"
MAX_RETRY_AFTER = 3600.0
MAX_DELAY = 600.0
IMAGES_RANGE = (2, 10)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = 4


def shown(value: object) -> str:
    """A value for an error message, cut short: a refusal never echoes a large request back."""
    return _SHORT.repr(value)


def is_int(value: object) -> bool:
    """An int but not a bool: ``true`` given as a count or a setting is a mistake, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """A finite int or float; bools are not numbers here (``True`` as a count is a mistake)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(value: object, low: float, high: float) -> bool:
    return _is_number(value) and low <= value <= high  # type: ignore[operator]


@dataclass
class FaultRule:
    fault: Fault
    count: int | None = None
    rate: float | None = None
    route: str = ""  # "" picks the fault's default route (DEFAULT_ROUTES, else "api")
    retry_after: float | None = 1.0  # for RATE_LIMIT; None sends no Retry-After header
    retry_after_date: bool = False  # send Retry-After as an HTTP-date instead of seconds
    delay: float = 5.0  # for SLOW
    message: str | None = None  # the job error text, for FAIL
    images: int = 3  # for SEVERAL_IMAGES

    def __post_init__(self) -> None:
        try:
            self.fault = Fault(self.fault)
        except (ValueError, TypeError):
            known = ", ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {shown(self.fault)}; known faults: {known}") from None
        if not self.route:
            self.route = DEFAULT_ROUTES.get(self.fault, "api")
        problems = self._problems()
        if problems:
            raise ValueError(f"fault {self.fault.value}: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        problems = []
        if (self.count is None) == (self.rate is None):
            problems.append("give exactly one of count (scripted) or rate (random)")
        if self.count is not None and not (is_int(self.count) and self.count >= 1):
            problems.append(f"count must be a positive integer, not {shown(self.count)}")
        if self.rate is not None and not _in_range(self.rate, 0, 1):
            problems.append(f"rate must be a finite number between 0 and 1, not {shown(self.rate)}")
        if self.route not in ROUTES:
            problems.append(f"route must be one of {', '.join(ROUTES)}, not {shown(self.route)}")
        if self.retry_after is not None and not _in_range(self.retry_after, 0, MAX_RETRY_AFTER):
            problems.append(
                f"retry_after must be none or seconds in [0, {MAX_RETRY_AFTER:g}], not {shown(self.retry_after)}"
            )
        if not isinstance(self.retry_after_date, bool):
            problems.append(f"retry_after_date must be true or false, not {shown(self.retry_after_date)}")
        if not _in_range(self.delay, 0, MAX_DELAY):
            problems.append(f"delay must be seconds in [0, {MAX_DELAY:g}], not {shown(self.delay)}")
        if self.message is not None and not isinstance(self.message, str):
            problems.append(f"message must be text, not {shown(self.message)}")
        if not (is_int(self.images) and IMAGES_RANGE[0] <= self.images <= IMAGES_RANGE[1]):
            problems.append(
                f"images must be an integer from {IMAGES_RANGE[0]} to {IMAGES_RANGE[1]}, not {shown(self.images)}"
            )
        return problems

    def matches(self, route: str) -> bool:
        if self.fault.is_job_outcome or route == "job":
            return self.fault.is_job_outcome and route == "job"
        return self.route == route or self.route == "any" or (self.route == "api" and route != "file")

    @classmethod
    def from_dict(cls, rule: object) -> FaultRule:
        """A rule from JSON: a mapping with a ``fault`` and known options only (unknown ones are named)."""
        if not isinstance(rule, dict):
            raise ValueError(f"a fault rule must be an object like {{'fault': 'drop', 'count': 1}}, not {shown(rule)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(shown(key) for key in rule if key not in known)
        if unknown:
            raise ValueError(f"unknown fault option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "fault" not in rule:
            raise ValueError("a fault rule needs a 'fault' name")
        return cls(**rule)

    @classmethod
    def parse(cls, text: str) -> FaultRule:
        """``rate_limit:count=2,route=submit`` -> a rule (the ``--fault`` flag's syntax)."""
        name, _, options = text.partition(":")
        kwargs: dict[str, Any] = {"fault": name}
        try:
            for option in filter(None, options.split(",")):
                key, sep, value = option.partition("=")
                if not sep:
                    raise ValueError(f"option {option!r} is not key=value")
                kwargs[key] = _option_value(key, value)
            return cls.from_dict(kwargs)
        except ValueError as exc:
            raise ValueError(f"fault {text!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fault": self.fault.value}


def _option_value(key: str, value: str) -> Any:
    """One ``--fault`` option's text as the value the rule takes (checked by the rule itself)."""
    try:
        if key in ("count", "images"):
            return int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if key == "retry_after" and value.lower() == "none":
        return None
    try:
        if key in ("rate", "retry_after", "delay"):
            return float(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {value!r}") from None
    if key == "retry_after_date":
        flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if value.lower() not in flags:
            raise ValueError(f"retry_after_date must be true or false, not {value!r}")
        return flags[value.lower()]
    return value


def parse_rules(rules: object) -> list[FaultRule]:
    """Every rule of a JSON list, all checked before any is used (a refusal changes nothing)."""
    if not isinstance(rules, list):
        raise ValueError(f"rules must be a list of fault rules, not {type(rules).__name__}")
    return [FaultRule.from_dict(rule) for rule in rules]


def check_seed(seed: object) -> int | None:
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed must be an integer, not {shown(seed)}")
    return seed  # type: ignore[return-value]


@dataclass
class FaultPlan:
    """The faults still to inject; safe to change from another thread while the server runs."""

    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def add(self, *rules: FaultRule | dict[str, Any]) -> None:
        # Built in full first: one bad rule must not leave the ones before it applied.
        built = [r if isinstance(r, FaultRule) else FaultRule.from_dict(r) for r in rules]
        with self._lock:
            self.rules.extend(built)

    def replace(self, rules: list[FaultRule], seed: int | None = None) -> None:
        """Clear the plan (and its counts) and apply ``rules``, in one step under the lock."""
        with self._lock:
            self._clear(seed)
            self.rules.extend(rules)

    def reset(self, seed: int | None = None) -> None:
        with self._lock:
            self._clear(seed)

    def _clear(self, seed: int | None) -> None:
        self.rules.clear()
        self.injected.clear()
        if seed is not None:
            self.seed = seed
        self._random = random.Random(self.seed)

    def take(self, route: str) -> FaultRule | None:
        """The fault for this call, if any: the first scripted rule that matches, else a rate draw."""
        with self._lock:
            for rule in self.rules:
                if rule.count is not None and rule.matches(route):
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                    return self._note(rule)
            for rule in self.rules:
                if rule.rate is not None and rule.matches(route) and self._random.random() < rule.rate:
                    return self._note(rule)
        return None

    def _note(self, rule: FaultRule) -> FaultRule:
        self.injected[rule.fault.value] += 1
        return rule

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seed": self.seed,
                "rules": [r.to_dict() for r in self.rules],
                "injected": dict(self.injected),
            }
