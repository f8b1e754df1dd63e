"""What runs spent: the ledger finalize writes for every run, the manifest's ``spend``, and ``flexflow report``.

The report over several real runs (``dag.test()`` against the emulator on loopback, one of them failing
with a billed job whose result is missing) must match the emulator's own billing exactly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flexflow.cli import main
from flexflow.contract.sizes import credit_cost
from flexflow.emulator import EmulatorServer
from flexflow.publishing.ledger import (
    LEDGER_DIR,
    JobSpend,
    job_spend,
    ledger_name,
    merged_jobs,
    spend_totals,
)
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.spec.cache import CACHE_DIR_ENV
from tests.airflow_helpers import load_module, task_states
from tests.conftest import ROOT
from tests.test_publishing import rerun_cleared

PUBLISH_ROOT = Path("/tmp/flexflow-test-publish")
SPECS = ROOT / "tests/specs/publish"
#: The three specs the report test runs: two publish (one with variants), one loses a paid result.
KINDS = ("several_images", "retried", "lost_result")
HALF_MP = {"resolution": "0.5MP", "output_format": "png"}


# -- the record, without Airflow ----------------------------------------------------------------------------


def test_a_completed_job_costs_what_the_api_billed_and_an_unfinished_one_nothing() -> None:
    billed = job_spend("j1", "poster", "", {"status": "COMPLETED", "credit_cost": 10}, HALF_MP, published=False)
    unknown = job_spend("j2", "poster", "", {"status": "COMPLETED", "credit_cost": None}, HALF_MP, published=True)
    failed = job_spend("j3", "poster", "_seed-1", {"status": "FAILED", "credit_cost": 0}, HALF_MP, published=False)
    lost = job_spend("j4", "poster", "_seed-2", None, HALF_MP, published=False)

    assert (billed.credits, billed.megapixels) == (10, 1)
    assert unknown.credits == credit_cost(dict(HALF_MP)), "no credit_cost from the API: the price table's count"
    assert (failed.credits, failed.megapixels, lost.credits, lost.status) == (0, 0, 0, "NOT_COMPLETED")
    assert spend_totals([billed, unknown, failed, lost]) == {
        "submitted": 4,
        "reused": 0,
        "failed": 3,
        "megapixels": 2,
        "credits": 15,
        "failed_credits": 10,
    }


def test_a_job_replaced_by_clearing_its_submit_stays_in_the_ledger_unpublished() -> None:
    first = JobSpend("old", "only", "", "COMPLETED", 5, 1, published=False)
    earlier = {"jobs": [first.to_stored()]}
    again = JobSpend("new", "only", "", "COMPLETED", 5, 1, published=True)

    assert merged_jobs([again], earlier) == [first, again]
    assert merged_jobs([again], {"jobs": [again.to_stored()]}) == [again], "a job is never counted twice"


@pytest.mark.parametrize("run_id", ["manual__2026-12-07T12:00:00+00:00", "../../etc/passwd", ".hidden"])
def test_a_ledger_file_name_is_one_plain_name(run_id: str) -> None:
    name = ledger_name(run_id)
    assert "/" not in name and not name.startswith(".") and name.endswith(".json")


# -- flexflow report: bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["/no/such/folder"], "no such file or folder: /no/such/folder"),
        (["file://elsewhere/x"], "names another machine"),
        (["s3:///x"], "'s3:///x' names no bucket; give s3://bucket/folder"),
        (["s3://no-such-bucket/x", "--conn-id", "no_such_conn"], "connection 'no_such_conn' is not defined"),
        (["--since", "yesterday", "/tmp"], "'yesterday' is not a day: give YYYY-MM-DD"),
        (["--since", "2026-13-01", "/tmp"], "is not a day"),
    ],
)
def test_bad_report_input_exits_2_with_a_message(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def exit_code(argv: list[str]) -> int | str | None:
    """What the command exits with: its return value, or argparse's SystemExit code for a bad flag."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_a_broken_record_is_named_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / LEDGER_DIR / "some_dag" / "run.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"day": "not a day"}')
    assert main(["report", str(tmp_path)]) == 2
    assert f"{broken}: not a ledger record" in capsys.readouterr().err


# -- real runs --------------------------------------------------------------------------------------------


@pytest.fixture
def publish_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    return load_module(ROOT / "tests/dags/flexflow_publish_test_dags.py").DAGS  # type: ignore[no-any-return]


@pytest.fixture
def fresh_roots() -> Iterator[list[Path]]:
    """The publish roots of KINDS, emptied before and after: the report then reads this test's runs only."""
    roots = [PUBLISH_ROOT / kind for kind in KINDS]
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)
    yield roots
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def three_runs(
    publish_dags: dict[str, Any],
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    fresh_roots: list[Path],
) -> dict[str, Any]:
    """Run several_images and retried (both publish), then lost_result with its paid result missing (fails)."""
    runs = {}
    for kind in KINDS:
        if kind == "lost_result":
            emulator.faults.add({"fault": "missing_result", "count": 1})
        dag_id = f"flexflow_test_publish_{kind}"
        runs[kind] = publish_dags[dag_id].test()
        states = task_states(airflow_db, dag_id, runs[kind].run_id)
        assert runs[kind].state == ("failed" if kind == "lost_result" else "success"), states
    return runs


def ledger_of(kind: str, run: Any) -> dict[str, Any]:
    path = PUBLISH_ROOT / kind / LEDGER_DIR / f"flexflow_test_publish_{kind}" / ledger_name(run.run_id)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def report(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What ``flexflow report ARGV`` prints (the runs' own output, captured before, is left out)."""
    capsys.readouterr()
    assert main(["report", *argv]) == 0
    return capsys.readouterr().out


def test_every_run_records_what_it_spent_and_a_failed_run_still_writes_no_manifest(
    three_runs: dict[str, Any], emulator: EmulatorServer
) -> None:
    lost = ledger_of("lost_result", three_runs["lost_result"])
    [job] = lost["jobs"]
    assert lost["status"] == "failed" and job["status"] == "COMPLETED" and job["published"] is False
    assert job["credits"] > 0, "the missing result was billed: the ledger says so"
    assert lost["totals"]["failed_credits"] == job["credits"]
    assert not list((PUBLISH_ROOT / "lost_result").rglob(MANIFEST_NAME)), "guarantee 2: no manifest"

    for kind in ("several_images", "retried"):
        record = ledger_of(kind, three_runs[kind])
        [manifest_file] = (PUBLISH_ROOT / kind).rglob(MANIFEST_NAME)
        manifest = json.loads(manifest_file.read_text())
        assert record["status"] == "published" and all(j["published"] for j in record["jobs"])
        assert manifest["spend"] == record["totals"], "the manifest and the ledger say the same"
        assert manifest["spend"]["failed"] == 0 and manifest["spend"]["reused"] == 0
        run = three_runs[kind]
        assert record["day"] == (run.logical_date or run.run_after).astimezone(UTC).date().isoformat()
    retried = ledger_of("retried", three_runs["retried"])
    assert sorted(j["variant"] for j in retried["jobs"]) == ["_seed-1", "_seed-2"], "each variant, by map index"


def test_the_report_over_several_runs_matches_the_emulators_billing_exactly(
    three_runs: dict[str, Any], emulator: EmulatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    accounting = emulator.accounting()
    billed = accounting["credits_billed"]
    roots = [str(PUBLISH_ROOT / kind) for kind in KINDS]

    as_json = json.loads(report(capsys, *roots, "--format", "json"))
    total = as_json["total"]
    assert total["credits"] == billed > 0
    assert (total["runs"], total["failed_runs"], total["jobs"]) == (3, 1, accounting["jobs_billed"])
    assert sum(spec["credits"] for spec in as_json["by_spec"].values()) == billed
    assert sum(day["credits"] for day in as_json["by_day"].values()) == billed
    lost = as_json["by_spec"]["flexflow_test_publish_lost_result"]
    assert lost["failed_credits"] == lost["credits"] > 0 and total["failed_credits"] == lost["credits"]
    assert Decimal(total["cost"]) == Decimal("0.05") * total["megapixels"], "plan's price per megapixel"
    assert as_json["top_specs"][0] == min(as_json["by_spec"], key=lambda k: (-as_json["by_spec"][k]["credits"], k))

    text = report(capsys, *roots)
    assert text.startswith(f"3 run(s), {total['jobs']} job(s) (1 not published): {billed} credits")
    assert "where the money went:" in text
    assert f"jobs billed but not published: {lost['credits']} credits" in text

    by_specs = json.loads(report(capsys, *(str(SPECS / f"{kind}.yaml") for kind in KINDS), "--format", "json"))
    assert by_specs == as_json, "spec files lead to the same ledgers (their publish roots)"
    as_urls = json.loads(report(capsys, *(f"file://{root}" for root in roots), "--format", "json"))
    assert as_urls == as_json

    later = json.loads(report(capsys, *roots, "--since", "2999-01-01", "--format", "json"))
    assert later["total"]["runs"] == 0 and later["by_spec"] == {}


def test_clearing_a_lost_result_keeps_the_first_paid_job_in_the_ledger_and_the_report(
    publish_dags: dict[str, Any],
    emulator: EmulatorServer,
    apiframe_connection: str,
    fresh_roots: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The lost result is paid for, and so is the new job clearing ``only.submit`` submits: both are counted."""
    emulator.faults.add({"fault": "missing_result", "count": 1})
    dag = publish_dags["flexflow_test_publish_lost_result"]
    run = dag.test()
    assert run.state == "failed"
    assert rerun_cleared(dag, run.run_id, "only.submit") == "success"

    record = ledger_of("lost_result", run)
    first, second = record["jobs"]
    assert (first["published"], second["published"], record["status"]) == (False, True, "published")
    [manifest_file] = (PUBLISH_ROOT / "lost_result").rglob(MANIFEST_NAME)
    spend = json.loads(manifest_file.read_text())["spend"]
    billed = emulator.accounting()["credits_billed"]
    assert (spend["submitted"], spend["failed"], spend["credits"], spend["failed_credits"]) == (
        2,
        1,
        billed,
        billed // 2,
    )
    total = json.loads(report(capsys, str(PUBLISH_ROOT / "lost_result"), "--format", "json"))["total"]
    assert (total["runs"], total["jobs"], total["credits"]) == (1, 2, billed)
