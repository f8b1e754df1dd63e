"""Golden snapshots of the compiled example DAGs: a change to what a spec compiles to shows up as a diff.

Each example spec in ``specs/`` is compiled and described as deterministic JSON (DAG settings, and
per task its operator, edges and key arguments), then compared with ``tests/golden/<dag_id>.json``.
After an intended change, refresh the snapshots and review the diff::

    FLEXFLOW_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_dags.py

The same snapshot must come out of every way a DAG is built: ``compile_spec``, the DAG-folder
loader (``dags/flexflow_dags.py``, parsed cold and from the spec cache), the bundle ``flexflow run``
writes, and the plan ``flexflow plan`` prints (``task_layout``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.definitions._internal.expandinput import MappedArgument
from airflow.sdk.definitions.mappedoperator import MappedOperator
from airflow.sdk.definitions.xcom_arg import XComArg

from flexflow.cli import main as flexflow_main
from flexflow.compiler.dag import compile_spec
from flexflow.compiler.dag_file import SPECS_DIR_ENV
from flexflow.compiler.layout import task_layout
from flexflow.spec import load_spec
from flexflow.spec.cache import CACHE_DIR_ENV
from tests.airflow_helpers import load_module
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "golden"
UPDATE_ENV = "FLEXFLOW_UPDATE_GOLDEN"
REFRESH_HINT = (
    f"the compiled DAG differs from its golden snapshot; if the change is intended, refresh the snapshots with "
    f"`{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/test_golden_dags.py` and review the diff of tests/golden/"
)

#: The arguments a snapshot records, when the operator has them (plain attribute or partial/expand kwarg).
KEY_ARGUMENTS = (
    "prompt",
    "flux",
    "flux_overrides",
    "webhook_url",
    "apiframe_conn_id",
    "poll_interval",
    "timeout",
    "job_timeout",
    "retries",
    "retry_delay",
    "to",
    "root",
    "filename",
    "files",
    "params_used",
    "target",
    "conn_id",
    "image",
    "variant",
    "request",
    "deferrable",
    "publish_task_ids",
    "expected_files",
    "asset",
    "manifest",
    "trigger_rule",
    "job_id",
    "job",
    "requests",
    "reusable_requests",
    "reusable",
    "reuse_root",
    "max_active_tis_per_dag",
)


def plain(value: Any) -> Any:
    """JSON-ready and deterministic: durations in seconds, enums by value, XCom inputs by their task."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, XComArg):
        [(operator, key)] = list(value.iter_references())
        return {"xcom_from": operator.task_id, "key": key}
    if isinstance(value, MappedArgument):
        return {"variant_field": value._key}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"no snapshot form for {type(value).__name__}: {value!r}")


def mapped_records(task: Any) -> list[Any] | None:
    """The variant records of the mapped task group the task is in; None outside one."""
    group = task.get_closest_mapped_task_group()
    return None if group is None else list(group._expand_input.value)


def task_snapshot(task: Any) -> dict[str, Any]:
    assert not isinstance(task, MappedOperator), "variants map whole task groups, not single tasks"
    return {
        "task_id": task.task_id,
        "operator": task.task_type,
        "mapped_over": plain(mapped_records(task)),
        "upstream": sorted(task.upstream_task_ids),
        "downstream": sorted(task.downstream_task_ids),
        "arguments": plain({k: getattr(task, k) for k in KEY_ARGUMENTS if hasattr(task, k)}),
    }


def dag_snapshot(dag: Any) -> dict[str, Any]:
    return {
        "dag_id": dag.dag_id,
        "description": dag.description,
        "schedule": dag.schedule if dag.schedule is None or isinstance(dag.schedule, str) else repr(dag.schedule),
        "start_date": plain(dag.start_date),
        "catchup": dag.catchup,
        "tags": sorted(dag.tags),
        "params": plain(dag.params.dump()),
        "owner": dag.default_args.get("owner"),
        "tasks": [task_snapshot(t) for t in sorted(dag.tasks, key=lambda t: t.task_id)],
    }


def render(snapshot: dict[str, Any]) -> str:
    return json.dumps(snapshot, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def compiled(spec_file: Path) -> Any:
    return compile_spec(load_spec(spec_file))


def dags_in(module: Any) -> dict[str, Any]:
    return {dag.dag_id: dag for dag in vars(module).values() if hasattr(dag, "test") and hasattr(dag, "tasks")}


@pytest.fixture(scope="module")
def loader_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The DAGs dags/flexflow_dags.py defines over the example specs: parsed cold, then from the spec cache."""
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SPECS_DIR_ENV, str(ROOT / "specs"))
        cache = tmp_path_factory.mktemp("spec-cache")
        patch.setenv(CACHE_DIR_ENV, str(cache))
        patch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
        for _ in range(2):
            runs.append(dags_in(load_module(ROOT / "dags" / "flexflow_dags.py")))
            assert len(list(cache.glob("*.json"))) == len(EXAMPLES), "the second parse reads the spec cache"
    return runs


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_compiled_dag_matches_its_golden_snapshot(spec_file: Path) -> None:
    dag = compiled(spec_file)
    text = render(dag_snapshot(dag))
    golden = GOLDEN / f"{dag.dag_id}.json"
    if os.environ.get(UPDATE_ENV) == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
        return
    assert golden.exists(), f"no golden snapshot {golden.relative_to(ROOT)}: {REFRESH_HINT}"
    assert text == golden.read_text(encoding="utf-8"), REFRESH_HINT


def test_every_golden_snapshot_belongs_to_an_example_spec() -> None:
    expected = {f"{load_spec(f).dag_id}.json" for f in EXAMPLES}
    assert {p.name for p in GOLDEN.glob("*.json")} == expected, f"stale or missing snapshots: {REFRESH_HINT}"


def test_snapshots_are_deterministic() -> None:
    for spec_file in EXAMPLES:
        assert render(dag_snapshot(compiled(spec_file))) == render(dag_snapshot(compiled(spec_file)))


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_compiled_tasks_are_the_planned_layout(spec_file: Path) -> None:
    spec = load_spec(spec_file)
    dag = compile_spec(spec)
    planned = {t.task_id: t for t in task_layout(spec).tasks}
    assert set(planned) == set(dag.task_ids)
    for task in dag.tasks:
        plan = planned[task.task_id]
        assert set(task.upstream_task_ids) == set(plan.upstream), task.task_id
        assert task.task_type == plan.operator, task.task_id
        records = mapped_records(task)
        assert (records is None) == (plan.mapped is None), task.task_id
        if records is not None:
            assert len(records) == plan.mapped, "one mapped instance per variant"


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_plan_command_shows_the_compiled_tasks(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flexflow_main(["plan", str(spec_file), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    dag = compiled(spec_file)
    assert plan["dag_id"] == dag.dag_id
    shown = {t["task_id"]: (t["operator"], sorted(t["upstream"]), t["mapped"] is not None) for t in plan["tasks"]}
    built = {t.task_id: (t.task_type, sorted(t.upstream_task_ids), mapped_records(t) is not None) for t in dag.tasks}
    assert shown == built


@pytest.mark.parametrize("parse", ["cold", "cached"])
def test_loader_file_builds_the_same_dags_as_compile_spec(loader_runs: list[dict[str, Any]], parse: str) -> None:
    by_id = loader_runs[0 if parse == "cold" else 1]
    assert sorted(by_id) == sorted(load_spec(f).dag_id for f in EXAMPLES), "every example, nothing invalid"
    for spec_file in EXAMPLES:
        expected = compiled(spec_file)
        assert render(dag_snapshot(by_id[expected.dag_id])) == render(dag_snapshot(expected)), expected.dag_id
        assert by_id[expected.dag_id].doc_md == expected.doc_md


def run_bundle_dags(tmp_path: Path, spec_file: Path, connection_id: str | None) -> dict[str, Any]:
    """The DAG file `flexflow run` writes into its private bundle, loaded the way Airflow would."""
    from flexflow.run import BUNDLE_FILE, RunHome, prepare

    home = RunHome(tmp_path / "run-home")
    prepare(home, spec_file.resolve(), connection_id)
    return dags_in(load_module(home.dags / BUNDLE_FILE))


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_flexflow_run_builds_the_same_dag(spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    expected = dag_snapshot(compiled(spec_file))
    [dag] = run_bundle_dags(tmp_path, spec_file, None).values()
    assert render(dag_snapshot(dag)) == render(expected)

    # --connection changes the connection of the API tasks, and nothing else.
    [dag] = run_bundle_dags(tmp_path, spec_file, "apiframe_staging").values()
    swapped = dag_snapshot(dag)
    for task in expected["tasks"]:
        arguments = task["arguments"]
        if "apiframe_conn_id" in arguments:
            arguments["apiframe_conn_id"] = "apiframe_staging"
    assert render(swapped) == render(expected)
