"""An approval before publishing (``publish.review: required``), through Airflow's own human-in-the-loop task.

Runs go through ``dag.test()`` against the emulator. ``dag.test()`` keeps a run alive while a task waits for
input; the test answers it as Airflow's HITL REST API does (``tests.airflow_helpers.answer_review``), from
another thread, once the review task is parked in ``awaiting_input``. The deployment suite answers through
the REST API itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flexflow.cli import main as flexflow_main
from flexflow.compiler.layout import task_layout
from flexflow.compiler.loader import SPECS_DIR_ENV
from flexflow.emulator import EmulatorServer
from flexflow.publishing.ledger import LEDGER_DIR, ledger_name
from flexflow.publishing.reuse import REUSE_DIR
from flexflow.publishing.review import (
    MAX_REASON_CHARS,
    STAGING_DIR,
    Decision,
    ReviewRunOperator,
    gallery_url,
    review_body,
    staging_folder,
)
from flexflow.spec import SpecError, load_spec
from flexflow.spec.checks import CONTACT_SHEET_NAME, MANIFEST_NAME
from tests.airflow_helpers import answer_review, load_module, ready_to_answer_from_a_thread, rows, task_states, xcom
from tests.conftest import ROOT as REPOSITORY
from tests.conftest import EmulatedAirflow

# A run waits for its answer: on a busy machine its jobs may take minutes before the review asks.
pytestmark = pytest.mark.timeout(900)
ROOT = Path("/tmp/flexflow-test-review")
FIRST, SECOND = (datetime(2026, 11, day, 6, tzinfo=UTC) for day in (2, 3))
SPEC = """\
version: 1
dag_id: flexflow_test_review
tags: [flexflow-test]
params: {campaign: spring}
defaults:
  flux: {resolution: 0.5MP, output_format: png}
  retries: 0
  poll_interval: 50ms
  timeout: 1m
images:
  - name: hero
    prompt: "a hero image of a bicycle"
    flux: {seed: 1}
  - name: card
    prompt: "a card for the {{ params.campaign }} sale"
    variants: {seed: [2, 3]}
publish:
  to: "file:///tmp/flexflow-test-review/{{ run_id | replace(':', '_') }}"
  filename: "{image}{variant}.{ext}"
  review: required
  review_timeout: 10m
"""
JOBS = 3
NAMES = ["card_seed-2.png", "card_seed-3.png", "hero.png"]


@pytest.fixture
def review_root(spec_folder: Path) -> Iterator[Path]:
    shutil.rmtree(ROOT, ignore_errors=True)
    yield ROOT
    shutil.rmtree(ROOT, ignore_errors=True)


def run_answered(text: str, when: datetime, answer: str, reason: str = "") -> tuple[Any, dict[str, Any]]:
    """The spec's DAG run once at ``when``, its review answered ``answer`` by a person once it waits."""
    specs = Path(os.environ[SPECS_DIR_ENV])
    (specs / "review.yaml").write_text(text)
    dag = load_module(REPOSITORY / "tests/dags/flexflow_reuse_test_dags.py").DAGS["flexflow_test_review"]
    answered: dict[str, Any] = {}

    def seen(run_id: str) -> dict[str, Any]:
        folder = ROOT / run_id.replace(":", "_")
        staging = Path(staging_folder(str(folder), run_id))
        return {
            "staged_files": sorted(p.name for p in staging.iterdir()),
            "published_then": sorted(p.name for p in folder.iterdir() if p.name != STAGING_DIR),
        }

    def answer_it() -> None:
        who = ("reviewer-7", "Rita Reviewer")
        answered.update(answer_review(dag.dag_id, answer, reason, user=who, seen=seen))

    ready_to_answer_from_a_thread()
    responder = threading.Thread(target=answer_it, daemon=True)
    responder.start()
    dag_run = dag.test(logical_date=when)
    responder.join(timeout=30)
    assert answered, "the review task waited for input and was answered"
    return dag_run, answered


def folder_of(dag_run: Any) -> Path:
    return ROOT / dag_run.run_id.replace(":", "_")


def test_approved_images_wait_in_staging_then_are_promoted_whole_with_the_manifest(
    review_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    dag_run, answered = run_answered(SPEC, FIRST, "Approve", "looks on brand")
    states = task_states(airflow_db, dag_run.dag_id, dag_run.run_id)
    assert dag_run.state == "success", states
    assert answered["state_seen"] == "awaiting_input", "the review waited parked, holding no worker slot"
    staged_then = answered["staged_files"]
    assert sorted(staged_then) == sorted([*NAMES, MANIFEST_NAME, CONTACT_SHEET_NAME]), (
        "while it waited, the images, their manifest and sheet were in the staging folder"
    )
    assert answered["published_then"] == [], "and nothing was in the target"

    folder = folder_of(dag_run)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*NAMES, MANIFEST_NAME, CONTACT_SHEET_NAME, STAGING_DIR])
    staging = Path(staging_folder(str(folder), dag_run.run_id))
    assert not staging.exists() or list(staging.iterdir()) == [], "promoted: nothing left staged"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert sorted(f["name"] for f in manifest["files"]) == NAMES
    for record in manifest["files"]:
        assert record["file"] == f"file://{folder}/{record['name']}", "the manifest names the published files"
        assert (folder / record["name"]).is_file()
    sheet = (folder / CONTACT_SHEET_NAME).read_text()
    assert sheet.count("<figure>") == JOBS

    accounting = emulator.accounting()
    assert accounting["jobs_created"] == accounting["jobs_billed"] == JOBS, "one job per image, none again"
    [review] = xcom(airflow_db, dag_run.dag_id, dag_run.run_id, "review")
    assert review["chosen_options"] == ["Approve"]
    assert review["responded_by_user"]["name"] == "Rita Reviewer"
    assert (
        len(rows(airflow_db, "SELECT id FROM asset_event WHERE extra LIKE ?", f'%"run_id": "{dag_run.run_id}"%')) == 1
    )
    # The promoted files are what later runs may reuse; the staged ones never were.
    entries = [json.loads(p.read_text()) for p in (ROOT / REUSE_DIR).iterdir()]
    assert sorted(f["file"] for entry in entries for f in entry["files"]) == [
        f"file://{folder}/{name}" for name in NAMES
    ]


def test_a_rejected_run_publishes_nothing_and_says_who_rejected_it_and_why(
    review_root: Path, emulated_airflow: EmulatedAirflow
) -> None:
    emulator, airflow_db = emulated_airflow.emulator, emulated_airflow.db
    dag_run, _ = run_answered(SPEC, FIRST, "Reject", "the bicycle is off brand")
    output = emulated_airflow.output()
    states = task_states(airflow_db, dag_run.dag_id, dag_run.run_id)
    assert dag_run.state == "failed"
    assert states["review"][0] == "success", "a person answered: the review itself did its job"
    assert states["finalize"][0] == "failed"
    folder = folder_of(dag_run)
    assert sorted(p.name for p in folder.iterdir()) == [STAGING_DIR], "no image, manifest or sheet in the target"
    staging = Path(staging_folder(str(folder), dag_run.run_id))
    assert sorted(p.name for p in staging.iterdir()) == sorted([*NAMES, MANIFEST_NAME, CONTACT_SHEET_NAME])
    assert "rejected by Rita Reviewer: 'the bicycle is off brand'" in output
    assert "Nothing was published" in output
    assert not (ROOT / REUSE_DIR).exists(), "nothing rejected is offered for reuse"

    accounting = emulator.accounting()
    assert accounting["jobs_created"] == accounting["jobs_billed"] == JOBS, "the review billed nothing"
    ledger = json.loads((ROOT / LEDGER_DIR / "flexflow_test_review" / ledger_name(dag_run.run_id)).read_text())
    assert len(ledger["jobs"]) == JOBS and not any(job["published"] for job in ledger["jobs"])
    assert not rows(airflow_db, "SELECT id FROM asset_event WHERE extra LIKE ?", f'%"run_id": "{dag_run.run_id}"%')


def test_the_review_is_a_task_of_its_own_between_the_images_and_finalize(tmp_path: Path) -> None:
    spec_file = tmp_path / "review.yaml"
    spec_file.write_text(SPEC)
    layout = task_layout(load_spec(spec_file))
    assert layout.review is not None
    assert layout.review.operator == "ReviewRunOperator"
    assert set(layout.review.upstream) == {"prepare", "hero.publish", "card.publish"}
    assert "review" in layout.finalize.upstream
    assert layout.prepare.arguments["review"] is True
    assert layout.review.arguments["response_timeout"].total_seconds() == 600

    spec_file.write_text(SPEC.replace("  review: required\n  review_timeout: 10m\n", ""))
    plain = task_layout(load_spec(spec_file))
    assert plain.review is None and "review" not in plain.prepare.arguments, "off by default"


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("  review: maybe\n", "publish.review"),
        ("  review_timeout: 2d\n", "publish.review_timeout: has no effect without review: required"),
        ("  review: required\n  review_timeout: 10s\n", "the review waits from 1m to 30d; 10s is too short"),
        ("  review: required\n  review_timeout: 31d\n", "publish.review_timeout"),
    ],
)
def test_a_review_setting_that_cannot_work_is_a_spec_error(tmp_path: Path, setting: str, problem: str) -> None:
    spec_file = tmp_path / "review.yaml"
    spec_file.write_text(SPEC.replace("  review: required\n  review_timeout: 10m\n", setting))
    with pytest.raises(SpecError) as raised:
        load_spec(spec_file)
    assert problem in str(raised.value)


def test_the_request_shows_spec_and_api_text_inert() -> None:
    hostile = "[click](javascript:alert(1)) ![x](http://evil/x.png) <img src=x onerror=alert(1)> `code`\nnext"
    records = [
        {"name": "a.png", "width": 1, "height": 1, "job_id": "j`1", "prompt": hostile, "credit_cost": 4, "index": 1}
    ]
    body = review_body(records, {"contact_sheet": "file:///x/index.html"}, timedelta(minutes=30))
    assert "](" not in body.replace("\\](", ""), "no link or image syntax survives"
    assert re.search(r"(?<!\\)<img", body) is None and "\\<img" in body, "no HTML either"
    assert "j'1" in body, "a backtick cannot end the job id's code span"
    assert "4 credit(s) already spent" in body
    assert "Without an answer within 30m, nothing is published." in body


def test_the_request_links_the_runs_gallery_page_with_its_ids_encoded_whole() -> None:
    pattern = "/flexflow/dags/{DAG_ID}/gallery?run_id={RUN_ID}"
    run_id = "manual__x) [evil](javascript:alert(1)) <b>&"
    url = gallery_url(pattern, "https://airflow.example.com/base/", "flexflow_test_review", run_id)
    assert url == (
        "https://airflow.example.com/base/flexflow/dags/flexflow_test_review/gallery?run_id="
        "manual__x%29%20%5Bevil%5D%28javascript%3Aalert%281%29%29%20%3Cb%3E%26"
    )
    body = review_body([], {"contact_sheet": "file:///x/index.html"}, None, url)
    assert body.count("](") == 1 and f"[See them in the gallery]({url})" in body, "one link, ours, whole"
    assert gallery_url(pattern, None, "d", "r") is None, "no [api] base_url: no page to name"
    assert "gallery" not in review_body([], {"contact_sheet": "file:///x/index.html"}, None, None)


def test_the_documented_example_plans_its_review(capsys: pytest.CaptureFixture[str]) -> None:
    example = REPOSITORY / "docs/examples/reviewed_campaign.yaml"
    assert flexflow_main(["plan", str(example)]) == 0
    out = capsys.readouterr().out
    assert "review        ReviewRunOperator       prepare, hero.publish, card.publish" in out
    assert "review: required: images wait in a staging folder for an approval in Airflow (up to 2d)" in out
    assert flexflow_main(["plan", "--format", "json", str(example)]) == 0
    assert json.loads(capsys.readouterr().out)["review"] == {"required": True, "timeout_seconds": 172800.0}


def test_flexflow_run_refuses_a_reviewed_spec_before_it_pays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = REPOSITORY / "docs/examples/reviewed_campaign.yaml"
    assert flexflow_main(["run", "--home", str(tmp_path / "home"), str(example)]) == 2
    assert "has publish.review: required" in capsys.readouterr().err
    assert not (tmp_path / "home").exists(), "nothing was set up, nothing submitted"


def test_a_decision_says_who_answered_what_and_why_in_bounded_inert_text() -> None:
    decision = Decision.from_result(
        {
            "chosen_options": ["Reject"],
            "params_input": {"reason": "off brand\n[INFO] fake log line" + "x" * 5000},
            "responded_by_user": {"id": "7", "name": "rita\u202e"},
            "responded_at": "2026-12-07T10:00:00+00:00",
        }
    )
    assert decision is not None and not decision.approved
    said = decision.said()
    assert said.startswith("rejected by rita[U+202E]: 'off brand[U+000A][INFO] fake log line")
    assert len(decision.reason) == MAX_REASON_CHARS + len("[U+000A]") - 1, "kept to the limit, then made visible"
    assert Decision.from_result(None) is None and Decision.from_result({"chosen_options": "Approve"}) is None


def test_an_answer_whose_params_the_form_could_not_send_still_counts() -> None:
    """The REST API passes an answer's params on unchecked: a reason that is not a string, or a field the
    form lacks, must not fail a review that was answered (it would leave the run unpublished)."""
    review = ReviewRunOperator(
        task_id="review",
        publish_task_ids=["banner.publish"],
        expected_files=1,
        target=None,
        response_timeout=timedelta(days=1),
    )
    event = {
        "chosen_options": ["Approve"],
        "params_input": {"reason": {"why": ["on", "brand"]}, "extra": 7},
        "responded_at": datetime(2026, 12, 7, 10, tzinfo=UTC),
        "responded_by_user": {"id": "7", "name": "rita"},
    }
    decision = Decision.from_result(review.execute_complete({}, event))  # type: ignore[arg-type]
    assert decision is not None and decision.approved
    assert decision.said() == "approved by rita: \"{'why': ['on', 'brand']}\""
    with pytest.raises(ValueError, match="not in"):  # an option the request did not offer still fails
        review.execute_complete({}, {**event, "chosen_options": ["Publish everything"]})  # type: ignore[arg-type]
