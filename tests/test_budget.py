"""Budgets: refused before spending, at validation, in ``flexflow plan`` and by each run's first task.

The run-time tests go through Airflow (``dag.test()``) against the emulator on loopback: a run over a
cap fails at ``prepare`` with the spec, the estimate and the cap, and the emulator sees no submission.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from flexflow.cli import main as flexflow_main
from flexflow.compiler.dag import compile_spec
from flexflow.contract.sizes import credit_cost
from flexflow.publishing.budget import DAYS_DIR, day_total, read_reservations
from flexflow.publishing.ledger import LEDGER_DIR
from flexflow.publishing.store import MAX_RECORD_BYTES, target_folder
from flexflow.spec import SpecError, load_spec, parse_spec
from flexflow.spec.budget import Estimate, estimate, over
from flexflow.spec.cache import CACHE_DIR_ENV
from flexflow.spec.checks import TEMPLATED
from tests.airflow_helpers import load_module, task_states
from tests.conftest import ROOT, EmulatedAirflow

EXAMPLE = ROOT / "specs" / "spring_social_refresh.yaml"
BUDGET_ROOT = Path("/tmp/flexflow-test-budget")

SPEC = """\
version: 1
dag_id: budget_params
params: {size: 1MP, count: 2}
images:
  - name: card
    prompt: "a card for {{ params.size }}"
{extra}
publish:
  to: "file:///tmp/flexflow/budget/{{ ds }}"
budget:
  credits_per_run: 10
"""


def spec_text(extra: str) -> str:
    """SPEC with ``extra`` lines in its image (replace, not format: the spec holds Jinja braces)."""
    return SPEC.replace("{extra}", extra)


# -- validation and the estimate ----------------------------------------------------------------------


def test_the_estimate_counts_credits_as_the_api_bills_them() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.budget is not None
    cost = estimate(spec, spec.budget.price_per_megapixel)
    assert cost.credits == sum(credit_cost(flux) for _, _, flux in spec.jobs()) == 25
    assert (cost.jobs, cost.billed_megapixels, cost.usd) == (4, 5, Decimal("0.25"))


def test_a_spec_within_its_budget_is_valid_and_one_over_it_names_the_estimate_and_the_cap() -> None:
    parse_spec(spec_text(""))  # one job at the default 2MP: 10 credits, at the cap
    with pytest.raises(SpecError) as info:
        parse_spec(spec_text("    variants: {seed: [1, 2]}"), "over.yaml")
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (11, 3)  # at the cap
    assert "estimated at 20 credits, over budget.credits_per_run 10 credits" in problem.message


def test_only_prompt_and_publish_are_templated_so_no_param_changes_a_runs_estimate() -> None:
    """Job count and resolution come from flux and variants; a param there is a spec error, not a render."""
    assert {key for _, key in TEMPLATED} == {"prompt", "to", "filename"}
    attempts = [
        '    flux: {resolution: "{{ params.size }}"}',
        '    variants: {resolution: ["{{ params.size }}"]}',
        '    variants: {seed: ["{{ params.count }}"]}',
        '    flux: {image_prompt: "https://example.com/{{ params.size }}.png"}',
    ]
    for extra in attempts:
        with pytest.raises(SpecError) as info:
            parse_spec(spec_text(extra))
        assert all(p.path.startswith("images[0].") for p in info.value.problems), extra


# -- flexflow plan ---------------------------------------------------------------------------------


def test_plan_shows_the_budget_the_estimate_and_the_headroom(capsys: pytest.CaptureFixture[str]) -> None:
    assert flexflow_main(["plan", str(EXAMPLE)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (
        "budget: credits_per_run 40 credits (headroom 15 credits), usd_per_day $10.00"
        " | estimate per run: 25 credits, $0.25 at $0.05 per megapixel"
    )
    assert flexflow_main(["plan", str(EXAMPLE), "--format", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)["budget"]
    assert planned == {
        "caps": {"credits_per_run": "40", "usd_per_day": "10.0"},
        "price_per_megapixel": "0.05",
        "estimate_per_run": {"jobs": 4, "billed_megapixels": 5, "credits": 25, "usd": "0.25"},
        "headroom_per_run": {"credits_per_run": "15"},
    }


def test_plan_without_a_budget_says_none_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert flexflow_main(["plan", str(ROOT / "specs" / "product_launch.yaml"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] is None


# -- at run time, through Airflow -------------------------------------------------------------------


@pytest.fixture
def budget_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    shutil.rmtree(BUDGET_ROOT, ignore_errors=True)  # no reservation of an earlier session counts against a day
    yield load_module(ROOT / "tests/dags/flexflow_budget_test_dags.py").DAGS
    shutil.rmtree(BUDGET_ROOT, ignore_errors=True)


def refused_run(dag: Any, airflow: EmulatedAirflow, logical_date: datetime, submissions: int, says: str) -> Any:
    """Run ``dag`` once, expecting ``prepare`` to refuse it over budget; the failed run.

    Every refusal: the run fails at ``prepare`` (once, never retried) before any submit task runs, the
    emulator's ``submissions`` stay as they were, and the run's output ``says`` why.
    """
    airflow.capfd.readouterr()  # only this run's output
    dag_run = dag.test(logical_date=logical_date)
    output = "".join(airflow.capfd.readouterr())
    states = task_states(airflow.db, dag.dag_id, dag_run.run_id)

    assert dag_run.state == "failed", states
    assert states["prepare"] == ("failed", 1), "refused once, never retried"
    assert all(state == "upstream_failed" for task, (state, _) in states.items() if "submit" in task), states
    assert airflow.emulator.accounting()["submissions"] == submissions, "a refused run submits nothing"
    assert says in output
    return dag_run


def test_a_run_over_its_per_run_budget_fails_at_prepare_and_submits_nothing(
    budget_dags: dict[str, Any], emulated_airflow: EmulatedAirflow
) -> None:
    """The spec was compiled without validation (which refuses it): the run-time check stands on its own."""
    refused_run(
        budget_dags["flexflow_test_budget_over_run"],
        emulated_airflow,
        datetime(2026, 11, 2, 6, tzinfo=UTC),
        submissions=0,  # a refused run costs nothing
        says=(
            "nothing was submitted: spec 'flexflow_test_budget_over_run' is over budget:"
            " estimated at 10 credits, over budget.credits_per_run 5 credits;"
            " estimated at $0.10, over budget.usd_per_run $0.05"
        ),
    )
    assert not (BUDGET_ROOT / "over_run").exists()


def test_a_per_day_budget_refuses_the_second_run_of_a_day_before_it_submits(
    budget_dags: dict[str, Any], emulated_airflow: EmulatedAirflow
) -> None:
    dag_id = "flexflow_test_budget_daily"
    dag = budget_dags[dag_id]
    emulator, db = emulated_airflow.emulator, emulated_airflow.db

    first = dag.test(logical_date=datetime(2026, 11, 2, 6, tzinfo=UTC))
    assert first.state == "success", task_states(db, dag_id, first.run_id)
    billed = emulator.accounting()
    assert (billed["submissions"], billed["credits_billed"]) == (2, 10), "the estimate is what the API bills"
    assert reservations(dag_id, "2026-11-02") == [
        {
            "day": "2026-11-02",
            "run_id": first.run_id,
            "estimate": {"jobs": 2, "billed_megapixels": 2, "credits": 10, "usd": "0.10"},
        }
    ]

    refused_run(
        dag,
        emulated_airflow,
        datetime(2026, 11, 2, 18, tzinfo=UTC),
        submissions=2,  # the first run's
        says=(
            "nothing was submitted: spec 'flexflow_test_budget_daily' is over budget: estimated at 20 credits,"
            " over budget.credits_per_day 15 credits for 2026-11-02 (UTC), with this DAG's earlier runs that day"
        ),
    )
    assert [r["run_id"] for r in reservations(dag_id, "2026-11-02")] == [first.run_id], "a refused run reserves nothing"

    next_day = dag.test(logical_date=datetime(2026, 11, 3, 6, tzinfo=UTC))
    assert next_day.state == "success", task_states(db, dag_id, next_day.run_id)
    assert emulator.accounting()["submissions"] == 4


def test_a_per_day_cap_counts_every_run_of_the_day_whatever_order_they_ran_in(
    budget_dags: dict[str, Any], emulated_airflow: EmulatedAirflow
) -> None:
    """A run of the evening that ran first counts against the morning's run that runs after it (a backfill,
    a run triggered for an earlier time): the day's reservations are summed, not only the earlier runs'."""
    dag = budget_dags["flexflow_test_budget_daily"]
    evening = dag.test(logical_date=datetime(2026, 11, 2, 18, tzinfo=UTC))
    assert evening.state == "success"
    refused_run(
        dag,
        emulated_airflow,
        datetime(2026, 11, 2, 6, tzinfo=UTC),
        submissions=2,  # the evening run's
        says="estimated at 20 credits, over budget.credits_per_day 15 credits for 2026-11-02 (UTC)",
    )


def reservations(dag_id: str, day: str) -> list[dict[str, Any]]:
    """The day's reservations of the runs that went ahead, under the spec's publish root."""
    folder = BUDGET_ROOT / "daily" / LEDGER_DIR / dag_id / DAYS_DIR / day
    return [json.loads(file.read_text()) for file in sorted(folder.iterdir())]


def test_an_unreadable_reservation_refuses_the_run_rather_than_guessing_the_days_spend(tmp_path: Path) -> None:
    (tmp_path / "manual__1.json").write_text('{"day": "2026-11-02", "estimate": {"credits": "lots"}}')
    with pytest.raises(
        AirflowFailException, match=r"nothing was submitted: .*manual__1.json is not a budget reservation"
    ):
        read_reservations(target_folder(f"file://{tmp_path}", None))
    assert read_reservations(target_folder(f"file://{tmp_path}/no-such-day", None)) == [], "no run yet that day"
    # A planted giant is refused the same way, without being read into memory whole.
    (tmp_path / "manual__1.json").write_bytes(b" " * (MAX_RECORD_BYTES + 1))
    with pytest.raises(AirflowFailException, match=f"larger than {MAX_RECORD_BYTES} bytes"):
        read_reservations(target_folder(f"file://{tmp_path}", None))


def test_a_per_day_cap_makes_prepare_run_one_at_a_time_so_runs_started_together_see_each_other() -> None:
    daily = load_spec(ROOT / "tests/specs/budget/daily.yaml")
    assert compile_spec(daily).get_task("prepare").max_active_tis_per_dag == 1
    per_run_only = parse_spec(spec_text(""))  # credits_per_run alone: runs do not share a cap
    assert compile_spec(per_run_only).get_task("prepare").max_active_tis_per_dag is None


def test_a_days_total_counts_each_other_run_of_that_day_once() -> None:
    cost = {"jobs": 1, "billed_megapixels": 2, "credits": 10, "usd": "0.10"}
    records = [
        None,  # no earlier run
        {"day": "2026-11-02", "run_id": "a", "estimate": cost},
        {"day": "2026-11-02", "run_id": "a", "estimate": cost},  # the same run read twice
        {"day": "2026-11-01", "run_id": "b", "estimate": cost},  # another day
        {"day": "2026-11-02", "run_id": "own", "estimate": cost},  # this run itself
        "not a record",
    ]
    assert day_total(records, "2026-11-02", "own") == Estimate(1, 2, 10, Decimal("0.10"))
    assert [key for key, _ in over({"usd_per_day": "0.15"}, "day", Estimate(2, 4, 20, Decimal("0.20")))] == [
        "usd_per_day"
    ]
