"""The billing oracle: exactly one billed job per image, each submitted once, by the emulator's accounting."""

from __future__ import annotations

from typing import Any


def billing_problems(accounting: dict[str, Any], jobs: int) -> list[str]:
    """What keeps the emulator's ``accounting`` from "exactly one billed job per image, each submitted once"."""
    submissions = sorted(accounting["submissions_per_key"].values())
    checks = {
        f"{accounting['jobs_created']} jobs created, not {jobs}": accounting["jobs_created"] == jobs,
        f"{accounting['jobs_billed']} jobs billed, not {jobs}": accounting["jobs_billed"] == jobs,
        f"duplicates {accounting['duplicates']}": accounting["duplicates"] == {"by_key": {}, "by_body": 0},
        f"a request was resubmitted: submissions per key {submissions}": submissions == [1] * jobs,
    }
    return [problem for problem, holds in checks.items() if not holds]
