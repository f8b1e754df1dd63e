"""`flexflow run SPEC`: the spec's DAG runs through Airflow end to end, with the embedded emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from flexflow.compiler.dag_file import DAG_FILE_NAME, dag_file_source
from flexflow.spec import load_spec
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


def test_a_failed_run_exits_1_and_names_the_failed_tasks(tmp_path: Path, airflow_db: Path) -> None:
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
