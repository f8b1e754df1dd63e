"""`flexflow run SPEC`: the spec's DAG runs through Airflow end to end, with the embedded emulator."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from flexflow.compiler.dag_file import DAG_FILE_NAME, dag_file_source
from flexflow.run import RESULT_FILE, RunHome, RunRecord, SubmittedJob, _this_run, home_lock
from flexflow.spec import load_spec
from tests.airflow_helpers import clear_publish_root
from tests.conftest import ROOT

SPEC = ROOT / "specs/spring_social_refresh.yaml"


def flexflow_run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLEXFLOW_SPECS"))}
    return subprocess.run(
        [sys.executable, "-m", "flexflow.cli", "run", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_run_publishes_the_spec_and_writes_a_contact_sheet(tmp_path: Path, airflow_db: Path) -> None:
    clear_publish_root(load_spec(SPEC))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(airflow_db, home / "airflow.db")  # an already migrated database: the run skips creating one
    result = flexflow_run(home, str(SPEC))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the embedded emulator" in out
    assert "published 4/4" in out, "progress was shown"
    manifest_line = next(line for line in out.splitlines() if line.startswith("manifest:"))
    manifest_path = Path(manifest_line.split(":", 1)[1].strip())
    manifest = json.loads(manifest_path.read_text())
    spec = load_spec(SPEC)
    assert len(manifest["files"]) == spec.job_count
    for entry in manifest["files"]:
        assert entry["job_id"] in out, "the summary table lists every job"
    sheet = (manifest_path.parent / "index.html").read_text()
    assert sheet.count("<figure>") == spec.job_count
    assert 'src="story_seed-1.png"' in sheet
    assert "Vertical story background for Spring 2027" in sheet, "the rendered prompt is shown"
    assert (home / "dags" / DAG_FILE_NAME).read_text() == dag_file_source(str(SPEC.resolve())), "the one DAG-file stub"
    assert "\nspend: 4 job(s) submitted, 0 reused from earlier runs (not paid again), 25 credits" in out

    again = flexflow_run(home, str(SPEC))  # unchanged, and every image has a fixed seed: reused, not paid again
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted 0/4 | reused 4 |" in again.stdout and "published 4/4" in again.stdout
    assert "\nspend: 0 job(s) submitted, 4 reused from earlier runs (not paid again), 0 credits" in again.stdout


def test_a_failed_run_exits_1_and_names_the_failed_tasks(tmp_path: Path, airflow_db: Path) -> None:
    clear_publish_root(load_spec(SPEC))  # else its images are reused from an earlier run: nothing needs the API
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(airflow_db, home / "airflow.db")
    result = flexflow_run(home, str(SPEC), "--connection", "no_such_connection")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "hero_banner.submit: failed" in result.stdout
    assert "why: the Apiframe connection 'no_such_connection' is not usable" in result.stdout, result.stdout
    assert "Airflow's log of the run:" in result.stdout
    log_path = Path(result.stdout.rsplit("Airflow's log of the run:", 1)[1].strip())
    assert "no_such_connection" in log_path.read_text()


def test_run_of_an_invalid_spec_shows_its_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("seed: 42", "seed: 42, guidance: 3.33"))
    result = flexflow_run(tmp_path / "home", str(bad))
    assert result.returncode == 1
    assert "guidance: must be a number from 1.5 to 10 in steps of 0.1; got 3.33" in result.stderr
    assert not (tmp_path / "home").exists(), "nothing is set up for an invalid spec"


# -- resuming: which run a second `flexflow run` of a spec continues -------------------------------

VARIANT_SPEC = ROOT / "specs/spring_social_refresh.yaml"  # `story` has three seed variants


def _record(home: RunHome, spec_file: Path, **changes: object) -> RunRecord:
    record = RunRecord(
        dag_id="spring_social_refresh",
        logical_date="2026-12-01T06:00:00+00:00",
        run_after="2026-12-01T06:00:00+00:00",
        spec_sha256=hashlib.sha256(spec_file.read_bytes()).hexdigest(),
        connection=None,
        conf=None,
    )
    record = replace(record, **changes)  # type: ignore[arg-type]
    record.save(home.record_file(record.dag_id))
    return record


def _submitted(home: RunHome, run_id: str, *rows: tuple[str, int, str | None]) -> None:
    """task_state_store rows as the submit tasks write them (the columns flexflow run reads)."""
    with sqlite3.connect(home.db) as db:
        db.execute("CREATE TABLE task_state_store (dag_id, run_id, task_id, map_index, key, value)")
        for task_id, map_index, job_id in rows:
            value = json.dumps({"request": {}, "idempotency_key": "k", "generation": 0, "job_id": job_id})
            db.execute(
                "INSERT INTO task_state_store VALUES (?, ?, ?, ?, 'flexflow_job', ?)",
                ("spring_social_refresh", run_id, task_id, map_index, value),
            )


def test_an_interrupted_run_of_the_same_spec_is_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = RunHome(tmp_path)
    previous = _record(home, VARIANT_SPEC)
    _submitted(home, previous.run_id, ("hero_banner.submit", -1, "job-1"), ("story.submit", 1, None))
    resumed = _this_run(home, load_spec(VARIANT_SPEC), VARIANT_SPEC, None)
    assert replace(resumed, earlier_jobs=()) == previous
    assert resumed.earlier_jobs == (SubmittedJob("hero_banner", "", "job-1"), SubmittedJob("story", "_seed-2", None))
    out = capsys.readouterr().out
    assert f"resuming the interrupted run {previous.run_id} of spring_social_refresh: 2 job(s)" in out


def test_a_resumed_run_still_lists_the_jobs_its_earlier_attempts_paid_for(tmp_path: Path) -> None:
    """dag.test() recreates a resumed run, and the old run's submit records go with it: the run record keeps
    them, so a stop of the resumed attempt lists every job paid for, the newest record of each first."""
    home = RunHome(tmp_path)
    spec = load_spec(VARIANT_SPEC)
    earlier = (SubmittedJob("story", "_seed-3", "job-3"), SubmittedJob("hero_banner", "", None))
    record = _record(home, VARIANT_SPEC, earlier_jobs=earlier)
    assert RunRecord.load(home.record_file(record.dag_id)) == record, "saved and loaded whole"
    _submitted(home, record.run_id, ("hero_banner.submit", -1, "job-1"), ("story.submit", 0, "job-2"))
    assert record.jobs(home.db, spec) == [
        SubmittedJob("hero_banner", "", "job-1"),  # the resumed try's answer, over the earlier "sent" record
        SubmittedJob("story", "_seed-1", "job-2"),
        SubmittedJob("story", "_seed-3", "job-3"),  # its record went with the recreated run
    ]


def test_a_finished_run_is_not_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = RunHome(tmp_path)
    for state in ("success", "failed"):
        previous = _record(home, VARIANT_SPEC, state=state)
        fresh = _this_run(home, load_spec(VARIANT_SPEC), VARIANT_SPEC, None)
        assert fresh.run_id != previous.run_id and fresh.state == "running"
    assert capsys.readouterr().out == ""


def test_a_changed_spec_or_connection_says_why_it_cannot_resume_and_what_was_paid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = RunHome(tmp_path)
    previous = _record(home, VARIANT_SPEC, spec_sha256="0" * 64)
    _submitted(home, previous.run_id, ("hero_banner.submit", -1, "job-1"), ("story.submit", 2, "job-3"))
    fresh = _this_run(home, load_spec(VARIANT_SPEC), VARIANT_SPEC, None)
    assert fresh.run_id != previous.run_id
    out = capsys.readouterr().out
    assert "cannot resume the interrupted run" in out and "the spec file changed since it started" in out
    assert "Its 2 submitted job(s) were already paid; this is a new run." in out
    assert "  hero_banner: job-1\n" in out and "  story_seed-3: job-3\n" in out, "each job named by image and variant"

    _record(home, VARIANT_SPEC, connection="apiframe_eu")
    _this_run(home, load_spec(VARIANT_SPEC), VARIANT_SPEC, None)
    assert "the --connection changed since it started" in capsys.readouterr().out


def test_a_second_run_on_a_busy_home_is_refused(tmp_path: Path) -> None:
    home = RunHome(tmp_path)
    with home_lock(home) as held:
        assert held is not None
        with home_lock(home) as second:
            assert second is None, "the home is busy"
        result = flexflow_run(tmp_path, str(SPEC))
    assert result.returncode == 2
    assert f"flexflow run (pid {os.getpid()}) is already using {tmp_path}" in result.stderr


def test_a_run_that_ended_while_its_command_was_killed_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = RunHome(tmp_path)
    previous = _record(home, VARIANT_SPEC)  # still "running": the command never read the result
    (tmp_path / RESULT_FILE).write_text(json.dumps({"state": "success", "run_id": previous.run_id}))
    assert _this_run(home, load_spec(VARIANT_SPEC), VARIANT_SPEC, None).run_id != previous.run_id
    assert not (tmp_path / RESULT_FILE).exists(), "read once: a later run cannot mistake it for its own"
    assert f"the run {previous.run_id} of spring_social_refresh ended (success) after its command" in (
        capsys.readouterr().out
    ), "says why it does not resume"
