"""A spec's budget: what one run is estimated to cost, against the caps of ``budget:``.

One source for validation (a spec whose own run exceeds a cap is an error at the cap), ``flexflow
plan`` (the budget, the estimate, the headroom) and the run's first task, which refuses a run before
anything is submitted. Credits are the API's count (:func:`flexflow.contract.sizes.credit_cost`, what
the emulator bills); USD is the billed megapixels at the budget's ``price_per_megapixel``.

No trigger-form param can change a run's estimate: templates render only in ``prompt``,
``publish.to`` and ``publish.filename`` (a template elsewhere is a spec error), so the job count and
every resolution are fixed when the spec is validated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flexflow.contract.params import JsonScalar
from flexflow.contract.sizes import billed_megapixels, credit_cost
from flexflow.defaults import PRICE_PER_MEGAPIXEL
from flexflow.spec.model import BudgetSpec, Spec

#: The caps, in the order they are checked and shown; ``_run`` caps one run, ``_day`` a UTC day of runs.
CAPS = ("credits_per_run", "usd_per_run", "credits_per_day", "usd_per_day")


@dataclass(frozen=True)
class Estimate:
    """The cost of one run (or of several runs, added up)."""

    jobs: int
    billed_megapixels: int
    credits: int
    usd: Decimal

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(
            self.jobs + other.jobs,
            self.billed_megapixels + other.billed_megapixels,
            self.credits + other.credits,
            self.usd + other.usd,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "billed_megapixels": self.billed_megapixels,
            "credits": self.credits,
            "usd": str(self.usd),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(int(data["jobs"]), int(data["billed_megapixels"]), int(data["credits"]), Decimal(str(data["usd"])))


NOTHING = Estimate(0, 0, 0, Decimal(0))


def estimate(spec: Spec, price: Decimal) -> Estimate:
    """Every job of one run at its resolution: billed megapixels, credits, and USD at ``price``."""
    return jobs_estimate((flux for _, _, flux in spec.jobs()), price)


def price_of(spec: Spec, given: Decimal | None = None) -> Decimal:
    """The price a spec's runs are estimated at: ``given`` (a flag), else its budget's, else the default.

    ``flexflow plan`` and ``flexflow diff`` both price with this, so their figures agree.
    """
    if given is not None:
        return given
    return spec.budget.price_per_megapixel if spec.budget else PRICE_PER_MEGAPIXEL


def run_estimate(spec: Spec, given: Decimal | None = None) -> Estimate:
    """One run of ``spec`` at :func:`price_of` its price: what ``flexflow plan`` and ``flexflow diff`` show."""
    return estimate(spec, price_of(spec, given))


def jobs_estimate(jobs: Iterable[Mapping[str, JsonScalar]], price: Decimal) -> Estimate:
    """The jobs of these flux params (a run's, or the part of it that reuses nothing) at ``price``."""
    total = NOTHING
    for flux in jobs:
        billed = billed_megapixels(dict(flux))
        total = total + Estimate(1, billed, credit_cost(dict(flux)), price * billed)
    return total


def caps(budget: BudgetSpec) -> dict[str, str]:
    """The caps the budget sets, as text (JSON- and XCom-safe; Decimal keeps ``0.1`` exact)."""
    return {key: str(value) for key in CAPS if (value := getattr(budget, key)) is not None}


def has_day_caps(caps: Mapping[str, Any]) -> bool:
    """Whether ``caps`` (as :func:`caps` gives them) cap a day of runs, not only one run."""
    return any(key.endswith("_per_day") for key in caps)


def over(caps: Mapping[str, str], period: str, cost: Estimate) -> Iterator[tuple[str, str]]:
    """``(cap, message)`` for each cap of ``period`` (``run`` or ``day``) that ``cost`` exceeds."""
    for key in CAPS:
        if key.endswith(f"_per_{period}") and key in caps:
            amount = cost.credits if key.startswith("credits") else cost.usd
            if amount > Decimal(caps[key]):
                yield key, f"estimated at {shown(key, amount)}, over budget.{key} {shown(key, Decimal(caps[key]))}"


def shown(key: str, amount: Decimal | int) -> str:
    return f"{amount} credits" if key.startswith("credits") else f"${Decimal(amount):.2f}"


def headroom(caps: Mapping[str, str], cost: Estimate) -> dict[str, str]:
    """What each per-run cap leaves after one run (negative: over it)."""
    return {
        key: str(Decimal(value) - (cost.credits if key.startswith("credits") else cost.usd))
        for key, value in caps.items()
        if key.endswith("_per_run")
    }


def budget_findings(spec: Spec) -> Iterator[tuple[tuple[str, ...], str]]:
    """A cap one run of the spec already exceeds (a per-day cap too: it would refuse every run)."""
    if spec.budget is None:
        return
    cost = estimate(spec, spec.budget.price_per_megapixel)
    found = caps(spec.budget)
    if not found:
        yield ("budget",), f"the budget sets no cap: give one of {', '.join(CAPS)}"
    for period in ("run", "day"):
        for key, message in over(found, period, cost):
            yield (
                ("budget", key),
                f"one run of this spec is {message} ({describe(cost, spec.budget.price_per_megapixel)});"
                " raise the cap, or make fewer or smaller images",
            )


def describe(cost: Estimate, price: Decimal) -> str:
    return (
        f"{cost.jobs} job(s), {cost.billed_megapixels} billed megapixel(s), {cost.credits} credits,"
        f" ${cost.usd:.2f} at ${price} per megapixel"
    )
