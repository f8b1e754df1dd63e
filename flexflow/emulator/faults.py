"""Fault injection: what goes wrong, on which calls, scripted (the next N) or by a seeded rate.

A rule is ``{"fault": "rate_limit", "count": 2, "route": "submit"}`` (scripted: the next two
matching calls) or ``{"fault": "http_503", "rate": 0.1}`` (each matching call with probability
0.1, drawn from a generator seeded by the plan's ``seed``). Scripted rules are consumed in order
before any rate is drawn. The same rule shape is taken by the Python API, the ``--fault`` flag
(``rate_limit:count=2,route=submit``) and ``POST /_emulator/faults``.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    # Faults of one HTTP exchange.
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"
    HTTP_504 = "http_504"
    DROP = "drop"  # connection closed before any response
    SLOW = "slow"  # the response comes after `delay` seconds
    LOST_RESPONSE = "lost_response"  # the request is carried out (a job is created), the response is lost
    # Outcomes of a job, decided when it is created.
    FAIL = "fail"  # FAILED with a provider error text
    MODERATION = "moderation"  # FAILED by content moderation
    CANCEL = "cancel"  # CANCELLED
    EXPIRED_RESULT = "expired_result"  # COMPLETED, but already expired: result URLs 404
    MISSING_RESULT = "missing_result"  # COMPLETED, result URLs 404
    WRONG_CONTENT_TYPE = "wrong_content_type"  # result URL serves an HTML page
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
        Fault.RESULT_STRING,
        Fault.RESULT_LIST,
    }
)
#: Routes a request fault can be aimed at; "api" is submit, poll and list; "any" adds result files.
ROUTES = ("api", "any", "submit", "poll", "list", "file")
PROVIDER_ERRORS = (
    "Provider error: upstream generation failed (Black Forest Labs returned status 'Error')",
    "Provider error: generation timed out after 300s",
)
MODERATION_ERROR = "Content moderation: the request or the output was flagged and cannot be processed"


@dataclass
class FaultRule:
    fault: Fault
    count: int | None = None
    rate: float | None = None
    route: str = "api"
    retry_after: float = 1.0
    retry_after_date: bool = False  # send Retry-After as an HTTP-date instead of seconds
    delay: float = 5.0  # for SLOW
    message: str | None = None  # the job error text, for FAIL

    def __post_init__(self) -> None:
        self.fault = Fault(self.fault)
        if (self.count is None) == (self.rate is None):
            raise ValueError(f"fault {self.fault.value}: give exactly one of count (scripted) or rate (random)")
        if self.count is not None and self.count < 1:
            raise ValueError(f"fault {self.fault.value}: count must be at least 1")
        if self.rate is not None and not 0 <= self.rate <= 1:
            raise ValueError(f"fault {self.fault.value}: rate must be between 0 and 1")
        if self.route not in ROUTES:
            raise ValueError(f"fault {self.fault.value}: route must be one of {', '.join(ROUTES)}")

    def matches(self, route: str) -> bool:
        if self.fault.is_job_outcome or route == "job":
            return self.fault.is_job_outcome and route == "job"
        return self.route == route or self.route == "any" or (self.route == "api" and route != "file")

    @classmethod
    def parse(cls, text: str) -> FaultRule:
        """``rate_limit:count=2,route=submit`` -> a rule (the ``--fault`` flag's syntax)."""
        name, _, options = text.partition(":")
        kwargs: dict[str, Any] = {}
        for option in filter(None, options.split(",")):
            key, sep, value = option.partition("=")
            if not sep:
                raise ValueError(f"fault option {option!r} is not key=value")
            kwargs[key] = _option_value(key, value)
        try:
            return cls(fault=Fault(name), **kwargs)
        except TypeError as exc:
            raise ValueError(f"fault {text!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fault": self.fault.value}


def _option_value(key: str, value: str) -> Any:
    if key == "count":
        return int(value)
    if key in ("rate", "retry_after", "delay"):
        return float(value)
    if key == "retry_after_date":
        return value.lower() in ("1", "true", "yes")
    return value


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
        with self._lock:
            self.rules.extend(r if isinstance(r, FaultRule) else FaultRule(**r) for r in rules)

    def reset(self, seed: int | None = None) -> None:
        with self._lock:
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
