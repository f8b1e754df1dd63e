"""No paying twice for the same picture: a request already published under the root is copied, not submitted.

Runs go through Airflow (``dag.test()``) against the emulator on loopback; each run of a spec lands in its
own folder under one publish root, as a scheduled refresh's do, and the emulator's accounting counts jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flexflow.cli import main as flexflow_main
from flexflow.compiler.loader import SPECS_DIR_ENV
from flexflow.emulator import EmulatorServer
from flexflow.emulator.images import render
from flexflow.publishing.ledger import LEDGER_DIR, ledger_name
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.publishing.reuse import REUSE_DIR, ReuseRefused, find_published, record_published, reused_image
from flexflow.publishing.store import MAX_RECORD_BYTES
from tests.airflow_helpers import load_module, task_states
from tests.conftest import ROOT as REPOSITORY

ROOT = Path("/tmp/flexflow-test-reuse")
FIRST, SECOND, THIRD = (datetime(2026, 11, day, 6, tzinfo=UTC) for day in (2, 3, 4))

SPEC = """\
version: 1
dag_id: flexflow_test_reuse
tags: [flexflow-test]
defaults:
  flux: {resolution: 0.5MP, output_format: png}
  retries: 0
  poll_interval: 50ms
  timeout: 1m
images:
  - name: hero
    prompt: "HERO_PROMPT"
    flux: {seed: 1}
  - name: card
    prompt: "a card for the spring sale"
    variants: {seed: [2, 3]}
publish:
  to: "file:///tmp/flexflow-test-reuse/{{ run_id | replace(':', '_') }}"
  filename: "{image}{variant}.{ext}"
EXTRA
"""
JOBS = 3


def spec_text(hero: str = "a hero image of a bicycle", extra: str = "") -> str:
    return SPEC.replace("HERO_PROMPT", hero).replace("EXTRA", extra)


@pytest.fixture
def reuse_root(spec_folder: Path) -> Iterator[Path]:
    shutil.rmtree(ROOT, ignore_errors=True)
    yield ROOT
    shutil.rmtree(ROOT, ignore_errors=True)


def run(
    text: str, when: datetime, db: Path, conf: dict[str, Any] | None = None
) -> tuple[Any, dict[str, tuple[str, int]]]:
    """The spec, as its DAG file compiles it, run once at ``when`` (with ``conf``: the trigger form's values)."""
    specs = Path(os.environ[SPECS_DIR_ENV])
    (specs / "reuse.yaml").write_text(text)
    dag = load_module(REPOSITORY / "tests/dags/flexflow_reuse_test_dags.py").DAGS["flexflow_test_reuse"]
    dag_run = dag.test(logical_date=when, run_conf=conf)
    return dag_run, task_states(db, dag.dag_id, dag_run.run_id)


def manifest(dag_run: Any) -> dict[str, Any]:
    folder = ROOT / dag_run.run_id.replace(":", "_")
    return json.loads((folder / MANIFEST_NAME).read_text())  # type: ignore[no-any-return]


def by_job(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["image"], f["variant"]): f for f in document["files"]}


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path.removeprefix("file://")).read_bytes()).hexdigest()


# -- through Airflow ----------------------------------------------------------------------------------------


def test_an_unchanged_rerun_submits_nothing_and_publishes_the_same_files(
    reuse_root: Path,
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, states = run(spec_text(), FIRST, airflow_db)
    assert first.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS

    second, states = run(spec_text(), SECOND, airflow_db)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS, "the rerun submitted nothing"
    assert {t: s for t, (s, _) in states.items() if ".submit" in t or ".wait" in t} == {
        **{t: "skipped" for t in ("hero.submit", "hero.wait")},
        **{f"card.{step}[{i}]": "skipped" for step in ("submit", "wait") for i in (0, 1)},
    }
    assert all(s == "success" for t, (s, _) in states.items() if ".publish" in t), states

    before, after = by_job(manifest(first)), by_job(manifest(second))
    assert after.keys() == before.keys() and len(after) == JOBS
    for job, record in after.items():
        assert record["sha256"] == before[job]["sha256"] == sha256(record["file"]), job
        assert record["reused_from"] == before[job]["file"] and record["file"] != before[job]["file"]
        assert record["job_id"] == before[job]["job_id"], "the picture's own job"
        assert record["request_sha256"] == before[job]["request_sha256"]
        assert record["credit_cost"] == 0, "this run paid nothing for it"
    spend = manifest(second)["spend"]
    assert (spend["submitted"], spend["reused"], spend["credits"]) == (0, JOBS, 0)
    ledger = ROOT / LEDGER_DIR / "flexflow_test_reuse" / ledger_name(second.run_id)
    assert json.loads(ledger.read_text())["totals"] == spend
    capsys.readouterr()
    assert flexflow_main(["report", str(ROOT), "--format", "json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["runs"], total["jobs"], total["reused_jobs"]) == (2, JOBS, JOBS), "paid once, reused once"
    assert total["credits"] == emulator.accounting()["credits_billed"]


def test_changing_one_prompt_submits_exactly_that_image(
    reuse_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    first, _ = run(spec_text(), FIRST, airflow_db)
    second, states = run(spec_text(hero="a hero image of a red bicycle"), SECOND, airflow_db)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS + 1, "one job: the changed image"
    assert states["hero.submit"][0] == "success" and states["card.submit[0]"][0] == "skipped"

    before, after = by_job(manifest(first)), by_job(manifest(second))
    assert "reused_from" not in after[("hero", "")] and after[("hero", "")]["prompt"] == "a hero image of a red bicycle"
    assert after[("hero", "")]["sha256"] != before[("hero", "")]["sha256"]
    assert all(after[job]["reused_from"] == before[job]["file"] for job in after if job[0] == "card")
    spend = manifest(second)["spend"]
    assert (spend["submitted"], spend["reused"]) == (1, 2)


def test_a_published_file_that_changed_since_is_generated_again(
    reuse_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    first, _ = run(spec_text(), FIRST, airflow_db)
    tampered = Path(by_job(manifest(first))[("card", "_seed-2")]["file"].removeprefix("file://"))
    tampered.write_bytes(render("something else", {"resolution": "0.5MP", "output_format": "png"}))

    second, states = run(spec_text(), SECOND, airflow_db)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS + 1
    assert states["card.submit[0]"][0] == "success" and states["card.submit[1]"][0] == "skipped"
    regenerated = by_job(manifest(second))[("card", "_seed-2")]
    assert "reused_from" not in regenerated and regenerated["sha256"] != sha256(str(tampered))


def test_reuse_false_pays_for_every_image_again(
    reuse_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    run(spec_text(extra="reuse: false"), FIRST, airflow_db)
    second, states = run(spec_text(extra="reuse: false"), SECOND, airflow_db)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == 2 * JOBS
    assert manifest(second)["spend"]["reused"] == 0
    assert not (ROOT / REUSE_DIR).exists(), "a spec that never reuses writes no index"


def test_two_jobs_of_a_run_asking_for_one_picture_both_publish_it(
    reuse_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    twins = spec_text(hero="a card for the spring sale").replace("flux: {seed: 1}", "flux: {seed: 2}")
    run(twins, FIRST, airflow_db)
    assert emulator.accounting()["submissions"] == JOBS, "not known before: each is submitted"
    second, states = run(twins, SECOND, airflow_db)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS
    files = by_job(manifest(second))
    assert files[("hero", "")]["sha256"] == files[("card", "_seed-2")]["sha256"]
    assert manifest(second)["jobs"] == JOBS


def test_a_per_day_budget_counts_only_what_a_run_submits(
    reuse_root: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    """A day's cap of one run's cost: an unchanged rerun that day costs nothing and goes ahead; a changed one
    would pay for its changed image, so it is refused before submitting."""
    capped = "budget: {credits_per_day: 15}"  # three 0.5MP jobs: 3 x 5 credits
    later = FIRST.replace(hour=18)
    assert run(spec_text(extra=capped), FIRST, airflow_db)[0].state == "success"
    assert run(spec_text(extra=capped), later, airflow_db)[0].state == "success"
    changed, states = run(spec_text(hero="a new hero", extra=capped), later.replace(hour=20), airflow_db)
    assert changed.state == "failed" and states["prepare"][0] == "failed", states
    assert emulator.accounting()["submissions"] == JOBS


def test_a_trigger_form_param_that_makes_a_run_pay_more_than_its_day_allows_is_refused_before_it_submits(
    reuse_root: Path,
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A param the prompt renders decides what a run pays: the same value reuses the day's images (free), a new
    one pays for every image it changes, and the per-day cap refuses that run in prepare, submitting nothing."""
    text = spec_text(hero="a hero image of {{ params.subject }}", extra="budget: {credits_per_day: 15}")
    text = text.replace("tags: [flexflow-test]", "tags: [flexflow-test]\nparams: {subject: a bicycle}")
    assert run(text, FIRST, airflow_db)[0].state == "success"
    same, _ = run(text, FIRST.replace(hour=18), airflow_db, conf={"subject": "a bicycle"})
    assert same.state == "success" and emulator.accounting()["submissions"] == JOBS, "reused: nothing paid"

    capfd.readouterr()
    other, states = run(text, FIRST.replace(hour=20), airflow_db, conf={"subject": "a scooter"})
    assert other.state == "failed" and states["prepare"] == ("failed", 1), states
    assert (
        "spec 'flexflow_test_reuse' is over budget: estimated at 20 credits, over budget.credits_per_day 15 credits"
        in "".join(capfd.readouterr())
    ), "the day's first run (15) and this one's changed image (5)"
    assert states["hero.submit"][0] == "upstream_failed", states
    assert emulator.accounting()["submissions"] == JOBS, "refused before any API call"


# -- what the index holds is checked before it stands for a paid image -----------------------------------------


def published_file(folder: Path, data: bytes) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(data)
    return {
        "file": f"file://{folder}/a.png",
        "name": "a.png",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "job_id": "job-1",
        "index": 1,
        "job_images": 1,
    }


def test_an_index_entry_is_reused_only_when_its_files_are_under_the_root_and_unchanged(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/out/"
    digest = "ab" * 32
    image = render("a cat", {"resolution": "0.5MP", "output_format": "png"})
    record = published_file(tmp_path / "out" / "run1", image)
    assert find_published(root, None, digest).files is None, "nothing published yet"

    record_published(root, None, digest, [record], "dag", "run1")
    assert find_published(root, None, digest).files == [record]

    outside = published_file(tmp_path / "elsewhere", image)
    record_published(root, None, digest, [outside], "dag", "run1")
    refused = find_published(root, None, digest)
    assert refused.files is None and "is not under" in refused.why

    climbing = {**record, "file": f"file://{tmp_path}/out/run1/../../elsewhere/a.png"}
    record_published(root, None, digest, [climbing], "dag", "run1")
    assert find_published(root, None, digest).files is None

    record_published(root, None, digest, [record], "dag", "run1")
    (tmp_path / "out" / "run1" / "a.png").write_bytes(image + b"\0")
    assert "changed" in find_published(root, None, digest).why

    entry = tmp_path / "out" / REUSE_DIR / f"{digest}.json"
    for broken in (b"{not json", b"[]", json.dumps({"request_sha256": "cd" * 32, "files": [record]}).encode()):
        entry.write_bytes(broken)
        assert find_published(root, None, digest).files is None, broken

    # Planted files are never read whole: an entry past the record limit, an image past its recorded size.
    entry.write_bytes(b" " * MAX_RECORD_BYTES + json.dumps({"request_sha256": digest, "files": [record]}).encode())
    refused = find_published(root, None, digest)
    assert refused.files is None and f"larger than {MAX_RECORD_BYTES} bytes" in refused.why
    record_published(root, None, digest, [record], "dag", "run1")
    (tmp_path / "out" / "run1" / "a.png").write_bytes(image + b"\0" * 10_000_000)
    refused = find_published(root, None, digest)
    assert refused.files is None and f"larger than {record['bytes']} bytes" in refused.why


def test_a_copy_is_decoded_whole_so_a_planted_file_that_is_no_image_is_refused(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/out/"
    planted = published_file(tmp_path / "out" / "run1", b"#!/bin/sh\necho not an image\n")
    with pytest.raises(ReuseRefused, match="png"):
        reused_image(planted, root, None, "png", (724, 724))
    image = render("a cat", {"resolution": "0.5MP", "output_format": "png"})
    good = published_file(tmp_path / "out" / "run2", image)
    assert reused_image(good, root, None, "png", None).data == image
