"""Jobs in flight capped by an Airflow pool: the spec's ``pool`` key, the layout, the compiled DAG, ``flexflow pool``.

A compiled spec's submit task holds its pool slot until its job has ended (deferred meanwhile, counted
by a pool with ``include_deferred``), then returns the job id; the wait task finds the job ended.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flexflow import defaults
from flexflow.cli import main as flexflow_main
from flexflow.compiler.dag import compile_spec
from flexflow.compiler.layout import SUBMIT, WAIT, task_layout
from flexflow.emulator import EmulatorServer
from flexflow.spec import load_folder, load_spec
from tests.airflow_helpers import clear_publish_root, load_module, rows, task_states, xcom
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
SPEC = """\
version: 1
dag_id: {dag_id}
{pool}images:
  - name: hero
    prompt: "a lighthouse at dusk"
    flux: {{resolution: 0.5MP, output_format: png, seed: 7}}
    poll_interval: 1s
  - name: set
    prompt: "a teapot, {{{{ params.colour }}}}"
    flux: {{resolution: 0.5MP, output_format: png, seed: 8}}
    variants: {{aspect_ratio: ["1:1", "16:9"]}}
params: {{colour: blue}}
publish:
  to: "file://{target}"
"""


def write_spec(folder: Path, dag_id: str = "pooled_spec", pool: str | None = None) -> Path:
    spec_file = folder / f"{dag_id}.yaml"
    pool_line = f"pool: {pool}\n" if pool is not None else ""
    spec_file.write_text(SPEC.format(dag_id=dag_id, pool=pool_line, target=folder / "out"))
    return spec_file


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_submit_and_wait_run_in_the_default_pool_and_the_submit_holds_its_slot(spec_file: Path) -> None:
    layout = task_layout(load_spec(spec_file))
    for task in layout.tasks:
        if task.kind in (SUBMIT, WAIT):
            assert task.arguments["pool"] == defaults.POOL
            assert task.arguments["deferrable"] is True, "deferred, the task keeps its slot and no worker"
        else:
            assert "pool" not in task.arguments, f"{task.task_id} calls no API: it needs no slot"
        if task.kind == SUBMIT:
            assert task.arguments["wait_for_completion"] is True
            assert task.arguments["return_job_id"] is True, "the wait task reads the job id, as before"


def test_a_spec_names_its_pool_and_the_compiled_operators_use_it(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, pool="team_a.flux-2"))
    assert spec.pool == "team_a.flux-2"
    dag = compile_spec(spec)
    pools = {task.task_id: task.pool for task in dag.tasks}
    for image in ("hero", "set"):  # "set" is a mapped group: the pool is a partial argument
        assert pools[f"{image}.submit"] == pools[f"{image}.wait"] == "team_a.flux-2"
        assert pools[f"{image}.publish"] == "default_pool"
    assert pools["prepare"] == pools["finalize"] == "default_pool"


def test_the_default_pool_comes_from_defaults(tmp_path: Path) -> None:
    assert load_spec(write_spec(tmp_path)).pool == defaults.POOL == "apiframe"


@pytest.mark.parametrize("pool", ["'team a'", "'pool/1'", "''", "'" + "p" * 257 + "'", "7"])
def test_a_pool_that_is_no_airflow_pool_name_is_refused_with_its_path(tmp_path: Path, pool: str) -> None:
    result = load_folder([str(write_spec(tmp_path, pool=pool))])
    assert [problem.path for problem in result.problems] == ["pool"], result.problems


def test_flexflow_run_creates_the_spec_pool_counting_deferred_tasks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec_file = write_spec(tmp_path, "run_pooled", pool="run_pool")
    done = subprocess.run(
        [sys.executable, "-m", "flexflow.cli", "run", str(spec_file), "--home", str(home)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    pools = rows(home / "airflow.db", "SELECT pool, slots, include_deferred FROM slot_pool WHERE pool = 'run_pool'")
    assert pools == [("run_pool", defaults.POOL_SLOTS, 1)]


def test_flexflow_pool_creates_then_updates_the_pool(airflow_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flexflow_main(["pool", "--slots", "3", "--name", "cli_pool"]) == 0
    assert flexflow_main(["pool", "--slots", "10", "--name", "cli_pool"]) == 0
    assert "pool cli_pool: 10 slot(s), counting deferred tasks" in capsys.readouterr().out
    query = "SELECT slots, include_deferred FROM slot_pool WHERE pool = 'cli_pool'"
    assert rows(airflow_db, query) == [(10, 1)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--slots", "0"], "slots must be from 1 to 10000"),
        (["--slots", "10001"], "slots must be from 1 to 10000"),
        (["--slots", "ten"], "slots must be an integer"),
        (["--slots", "5", "--name", "two words"], "is not a pool name"),
        ([], "--slots"),
    ],
)
def test_bad_pool_flags_exit_2(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        flexflow_main(["pool", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def example_dag(dag_id: str = "spring_social_refresh") -> Any:
    """A compiled example DAG, from the DAG file of the project's bundle (dag.test() runs only those), with
    nothing published under its root yet: every job of its run is submitted, none reused."""
    dag = load_module(ROOT / "dags/flexflow_dags.py").__dict__[dag_id]
    clear_publish_root(load_spec(ROOT / "specs" / f"{dag_id}.yaml"))
    return dag


def test_the_submit_waits_for_its_job_and_still_hands_the_job_id_to_the_wait(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    emulator.config.update({"processing_seconds": 0.5})  # the submit defers until the job has ended
    dag = example_dag()
    dag_run = dag.test()
    assert dag_run.state == "success", task_states(airflow_db, dag.dag_id, dag_run.run_id)
    [job_id] = xcom(airflow_db, dag.dag_id, dag_run.run_id, "hero_banner.submit")
    [outcome] = xcom(airflow_db, dag.dag_id, dag_run.run_id, "hero_banner.wait")
    assert isinstance(job_id, str) and outcome["job_id"] == job_id and outcome["status"] == "COMPLETED"
    mapped_ids = xcom(airflow_db, dag.dag_id, dag_run.run_id, "story.submit")
    assert len(mapped_ids) == 3 and all(isinstance(job, str) for job in mapped_ids)
    assert emulator.accounting()["jobs_billed"] == 4


def test_a_failed_job_still_fails_the_wait_not_the_submit(
    emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    emulator.faults.add({"fault": "moderation", "count": 1})
    dag = example_dag()
    dag_run = dag.test()
    states = task_states(airflow_db, dag.dag_id, dag_run.run_id)
    failed = sorted(task for task, (state, _) in states.items() if state == "failed")
    assert len(failed) == 2 and failed[0] == "finalize" and ".wait" in failed[1], states
    assert all(state == "success" for task, (state, _) in states.items() if ".submit" in task), states
