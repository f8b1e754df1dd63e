"""The DAG-folder loader: every valid spec becomes a DAG, a broken one a flagged DAG, none hides another."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

import flexflow.compiler.loader as loader_module
import flexflow.spec.folder as spec_loader
from flexflow.compiler.dag import INVALID_TAG
from flexflow.compiler.dag_file import DAG_FILE_NAME, SPECS_DIR_ENV, dag_file_source
from flexflow.compiler.layout import FLEXFLOW_TAG
from flexflow.compiler.loader import load_dags, specs_path
from flexflow.spec.cache import CACHE_DIR_ENV
from tests.airflow_helpers import load_module
from tests.conftest import ROOT

PARSING_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
PARSING_TASK_ID = "_AIRFLOW_PARSING_CONTEXT_TASK_ID"

VALID = {
    "alpha.yaml": """\
version: 1
dag_id: loader_alpha
images:
  - name: hero
    prompt: "alpha hero"
publish:
  to: "file:///tmp/flexflow-test-loader/alpha/{{ ds }}"
""",
    "nested/beta.yml": """\
version: 1
dag_id: loader_beta
schedule: "@daily"
start_date: 2026-11-01
images:
  - name: story
    prompt: "beta story"
    variants: {seed: [1, 2]}
publish:
  to: "file:///tmp/flexflow-test-loader/beta/{{ ds }}"
""",
}
# Schema errors: guidance out of range, an unknown resolution and an unknown key.
BROKEN = (
    "broken.yaml",
    """\
version: 1
dag_id: loader_broken
images:
  - name: hero
    prompt: "broken hero"
    flux: {guidance: 42, resolution: 3MP}
    colour: red
publish:
  to: "file:///tmp/flexflow-test-loader/broken/{{ ds }}"
""",
)
BROKEN_PROBLEMS = [
    ("broken.yaml", 6, 12, "images[0].flux.guidance: must be a number from 1.5 to 10 in steps of 0.1; got 42"),
    ("broken.yaml", 6, 26, 'images[0].flux.resolution: must be one of "0.5MP", "1MP", "2MP", "4MP"; got "3MP"'),
    (
        "broken.yaml",
        7,
        5,
        "images[0].colour: unknown key 'colour'; allowed: name, prompt, variants, flux, retries, "
        "retry_delay, timeout, poll_interval, webhook_url, webhook_events",
    ),
]
DUPLICATES = {
    name: f"""\
version: 1
description: {word} copy sharing its dag_id
dag_id: loader_shared
images:
  - name: banner
    prompt: "{word} banner"
publish:
  to: "file:///tmp/flexflow-test-loader/{word}/{{{{ ds }}}}"
"""
    for name, word in (("shared_daily.yaml", "daily"), ("shared_weekly.yaml", "weekly"))
}
VALID_IDS = {"loader_alpha", "loader_beta"}


def write_specs(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def spec_folder(tmp_path: Path) -> Path:
    """Two valid specs (one in a subfolder), one broken by schema errors, two sharing a dag_id."""
    return write_specs(tmp_path / "specs", {**VALID, BROKEN[0]: BROKEN[1], **DUPLICATES})


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No parsing context from the environment, and a private spec cache (never the user's)."""
    monkeypatch.delenv(PARSING_DAG_ID, raising=False)
    monkeypatch.delenv(PARSING_TASK_ID, raising=False)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))


def doc_problems(doc_md: str) -> list[str]:
    """The problem lines inside the broken DAG's doc (the fenced block)."""
    block = doc_md.split("```\n", 1)[1].split("\n```", 1)[0]
    return block.splitlines()


# -- (a) load_dags over a folder with valid, broken and duplicate specs --------------------------


def test_every_valid_spec_becomes_a_dag_and_broken_ones_are_flagged(spec_folder: Path) -> None:
    dags = load_dags(__file__, str(spec_folder))
    assert set(dags) == {*VALID_IDS, "loader_broken", "loader_shared"}
    for dag_id in VALID_IDS:
        assert dags[dag_id].dag_id == dag_id
        assert INVALID_TAG not in dags[dag_id].tags
        assert "invalid_spec" not in dags[dag_id].task_ids
    group = dags["loader_beta"].get_task("story.submit").get_closest_mapped_task_group()
    assert len(group._expand_input.value) == 2, "one mapped chain per variant"


def test_a_broken_spec_is_a_dag_under_its_id_that_shows_and_fails_with_its_problems(spec_folder: Path) -> None:
    broken = load_dags(__file__, str(spec_folder))["loader_broken"]
    assert broken.dag_id == "loader_broken"
    assert set(broken.tags) == {FLEXFLOW_TAG, INVALID_TAG}
    assert broken.schedule is None, "a broken spec's DAG never runs by itself"
    expected = [f"{spec_folder / name}:{line}:{column}: {message}" for name, line, column, message in BROKEN_PROBLEMS]
    assert doc_problems(broken.doc_md) == expected
    assert f"`{spec_folder / 'broken.yaml'}`" in broken.doc_md
    assert broken.description.startswith("INVALID flexflow spec (3 problem(s)): ")
    assert broken.task_ids == ["invalid_spec"]
    task = broken.get_task("invalid_spec")
    assert task.retries == 0
    with pytest.raises(AirflowFailException) as failed:
        task.execute({})
    assert str(failed.value).splitlines()[1:] == expected


def test_duplicate_dag_ids_report_both_files_and_neither_wins(spec_folder: Path) -> None:
    shared = load_dags(__file__, str(spec_folder))["loader_shared"]
    assert INVALID_TAG in shared.tags
    assert shared.task_ids == ["invalid_spec"], "neither copy was compiled"
    daily, weekly = (str(spec_folder / name) for name in sorted(DUPLICATES))
    problems = doc_problems(shared.doc_md)
    assert sorted(problems) == sorted(
        [
            f"{daily}:3:1: dag_id: 'loader_shared' is also the dag_id of {weekly}",
            f"{weekly}:3:1: dag_id: 'loader_shared' is also the dag_id of {daily}",
        ]
    )
    with pytest.raises(AirflowFailException) as failed:
        shared.get_task("invalid_spec").execute({})
    assert sorted(str(failed.value).splitlines()[1:]) == sorted(problems)


def test_a_broken_spec_claiming_a_valid_spec_id_does_not_replace_it(tmp_path: Path) -> None:
    folder = write_specs(
        tmp_path,
        {"alpha.yaml": VALID["alpha.yaml"], "alpha_broken.yaml": BROKEN[1].replace("loader_broken", "loader_alpha")},
    )
    dags = load_dags(__file__, str(folder))
    assert set(dags) == {"loader_alpha", "loader_alpha__invalid"}
    assert INVALID_TAG not in dags["loader_alpha"].tags
    assert INVALID_TAG in dags["loader_alpha__invalid"].tags


# -- (b) Airflow's own CLI lists the same DAGs; `flexflow validate` reports the same problems -----


def airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def json_from(stdout: str) -> Any:
    """The JSON document in a command's stdout: its own line (Airflow may print warnings around it)."""
    for line in reversed(stdout.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"no JSON line in:\n{stdout}")


@pytest.fixture(scope="module")
def airflow_listing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh Airflow home whose only DAG bundle holds a copy of dags/flexflow_dags.py, over temp specs."""
    root = tmp_path_factory.mktemp("airflow-cli")
    specs = write_specs(root / "specs", {**VALID, BROKEN[0]: BROKEN[1], **DUPLICATES})
    dags_folder = root / "dags"
    dags_folder.mkdir()
    shutil.copy(ROOT / "dags" / "flexflow_dags.py", dags_folder / "flexflow_dags.py")
    home = root / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "_AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(
                [
                    {
                        "name": "flexflow-loader-test",
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(dags_folder)},
                    }
                ]
            ),
            SPECS_DIR_ENV: str(specs),
            CACHE_DIR_ENV: str(root / "spec-cache"),
            "PYTHONPATH": str(ROOT),
        }
    )
    airflow(env, "db", "migrate")
    # `dags list` reads the serialized DAGs from the database: parse the bundle into it first.
    airflow(env, "dags", "reserialize")
    listed = json_from(airflow(env, "dags", "list", "-o", "json", "--columns", "dag_id,tags,description").stdout)
    with sqlite3.connect(home / "airflow.db") as db:
        serialized = {}
        for dag_id, data, compressed in db.execute("SELECT dag_id, data, data_compressed FROM serialized_dag"):
            serialized[dag_id] = json.loads(data if data is not None else zlib.decompress(compressed))
        import_errors = db.execute("SELECT filename, stacktrace FROM import_error").fetchall()
    validate = subprocess.run(
        [sys.executable, "-m", "flexflow.cli", "validate", str(specs), "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {
        "specs": specs,
        "listed": {d["dag_id"]: d for d in listed},
        "serialized": serialized,
        "import_errors": import_errors,
        "validate": validate,
    }


def tag_names(listed_dag: dict[str, Any]) -> set[str]:
    return {t["name"] if isinstance(t, dict) else t for t in listed_dag["tags"]}


def test_airflow_dags_list_shows_every_valid_dag_and_the_broken_ones(airflow_listing: dict[str, Any]) -> None:
    listed = airflow_listing["listed"]
    assert set(listed) == {*VALID_IDS, "loader_broken", "loader_shared"}
    assert airflow_listing["import_errors"] == [], "a broken spec is never an import error that hides the others"
    for dag_id in VALID_IDS:
        assert tag_names(listed[dag_id]) == {FLEXFLOW_TAG}
    for dag_id in ("loader_broken", "loader_shared"):
        assert tag_names(listed[dag_id]) == {FLEXFLOW_TAG, INVALID_TAG}
        assert listed[dag_id]["description"].startswith("INVALID flexflow spec")


def test_flexflow_validate_reports_the_problems_the_broken_dags_show(airflow_listing: dict[str, Any]) -> None:
    validate = airflow_listing["validate"]
    assert validate.returncode == 1, validate.stderr
    report = json.loads(validate.stdout)
    assert report["valid"] is False
    reported = {f"{p['file']}:{p['line']}:{p['column']}: {p['message']}" for p in report["problems"]}
    shown = {
        line
        for dag_id in ("loader_broken", "loader_shared")
        for line in doc_problems(airflow_listing["serialized"][dag_id]["dag"]["doc_md"])
    }
    assert reported == shown
    specs = airflow_listing["specs"]
    assert {f"{specs / name}:{line}:{column}: {message}" for name, line, column, message in BROKEN_PROBLEMS} < shown


# -- (c) Airflow's parsing context: a running task compiles only its own spec --------------------


@pytest.fixture
def loaded_files(monkeypatch: pytest.MonkeyPatch) -> tuple[list[list[Path]], list[Path]]:
    """The files each load_folder call was given, and every file load_spec read."""
    calls: list[list[Path]] = []
    read: list[Path] = []
    real_load_folder, real_load_spec = loader_module.load_folder, spec_loader.load_spec

    def load_folder(paths: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append([Path(p) for p in paths])
        return real_load_folder(calls[-1], *args, **kwargs)

    def load_spec(path: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(Path(path))
        return real_load_spec(path, *args, **kwargs)

    monkeypatch.setattr(loader_module, "load_folder", load_folder)
    monkeypatch.setattr(spec_loader, "load_spec", load_spec)
    return calls, read


def test_parsing_context_compiles_only_the_running_dags_spec(
    spec_folder: Path, monkeypatch: pytest.MonkeyPatch, loaded_files: tuple[list[list[Path]], list[Path]]
) -> None:
    calls, read = loaded_files
    monkeypatch.setenv(PARSING_DAG_ID, "loader_alpha")
    monkeypatch.setenv(PARSING_TASK_ID, "hero.submit")
    dags = load_dags(__file__, str(spec_folder))
    assert list(dags) == ["loader_alpha"]
    assert calls == [[spec_folder / "alpha.yaml"]]
    assert read == [spec_folder / "alpha.yaml"], "the broken and the other specs were not even loaded"


@pytest.mark.parametrize(
    ("dag_id", "files"),
    [
        ("loader_broken", ["broken.yaml"]),  # a broken DAG still shows its problems
        ("loader_shared", sorted(DUPLICATES)),  # both copies of a duplicate id: still neither wins
    ],
)
def test_parsing_context_of_a_flagged_dag_loads_its_files_and_flags_it(
    spec_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    loaded_files: tuple[list[list[Path]], list[Path]],
    dag_id: str,
    files: list[str],
) -> None:
    _, read = loaded_files
    monkeypatch.setenv(PARSING_DAG_ID, dag_id)
    dags = load_dags(__file__, str(spec_folder))
    assert list(dags) == [dag_id]
    assert INVALID_TAG in dags[dag_id].tags
    assert dags[dag_id].task_ids == ["invalid_spec"]
    assert sorted(read) == [spec_folder / name for name in files]


def test_parsing_context_for_an_id_no_file_claims_loads_everything(
    spec_folder: Path, monkeypatch: pytest.MonkeyPatch, loaded_files: tuple[list[list[Path]], list[Path]]
) -> None:
    _, read = loaded_files
    monkeypatch.setenv(PARSING_DAG_ID, "loader_broken__invalid")
    assert set(load_dags(__file__, str(spec_folder))) == {*VALID_IDS, "loader_broken", "loader_shared"}
    assert len(read) == 5


def test_parsing_context_gives_the_dag_the_scheduler_has_even_for_an_unusual_dag_id_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quoted ``"dag_id":`` key is valid YAML the lenient reader does not recognise. Without a parsing
    context the two files are duplicates (one invalid DAG); a worker running that DAG's task must get the
    same DAG, not one copy compiled as if it were alone (its ``invalid_spec`` task would not even exist)."""
    folder = write_specs(
        tmp_path / "specs",
        {
            "plain.yaml": DUPLICATES["shared_daily.yaml"],
            "quoted.yaml": DUPLICATES["shared_weekly.yaml"].replace("\ndag_id:", '\n"dag_id":'),
        },
    )
    scheduler = load_dags(__file__, str(folder))
    assert scheduler["loader_shared"].task_ids == ["invalid_spec"]
    monkeypatch.setenv(PARSING_DAG_ID, "loader_shared")
    monkeypatch.setenv(PARSING_TASK_ID, "invalid_spec")
    worker = load_dags(__file__, str(folder))
    assert worker["loader_shared"].task_ids == ["invalid_spec"], (
        "with the parsing context only plain.yaml was compiled: the duplicate in quoted.yaml was missed"
    )
    assert worker["loader_shared"].doc_md == scheduler["loader_shared"].doc_md


# -- (d) FLEXFLOW_SPECS_DIR ----------------------------------------------------------------------


def dags_of(module: Any) -> dict[str, Any]:
    return {dag.dag_id: dag for dag in vars(module).values() if hasattr(dag, "tasks") and hasattr(dag, "test")}


def test_the_project_dag_file_is_the_one_stub() -> None:
    assert (ROOT / "dags" / DAG_FILE_NAME).read_text() == dag_file_source("../specs")


def test_the_dag_folder_file_reads_flexflow_specs_dir(spec_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPECS_DIR_ENV, str(spec_folder))
    assert specs_path(ROOT / "dags" / DAG_FILE_NAME, "../specs") == spec_folder
    dags = dags_of(load_module(ROOT / "dags" / "flexflow_dags.py"))
    assert set(dags) == {*VALID_IDS, "loader_broken", "loader_shared"}, "the examples in specs/ are not loaded"


def test_without_flexflow_specs_dir_the_default_folder_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPECS_DIR_ENV, raising=False)
    assert specs_path(ROOT / "dags" / DAG_FILE_NAME, "../specs") == ROOT / "specs"
    monkeypatch.setenv(SPECS_DIR_ENV, "")
    assert specs_path(ROOT / "dags" / DAG_FILE_NAME, "../specs") == ROOT / "specs", "an empty value means unset"


def test_a_missing_specs_folder_gives_no_dags_and_no_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-folder"
    assert load_dags(__file__, str(missing)) == {}
    monkeypatch.setenv(SPECS_DIR_ENV, str(missing))
    assert dags_of(load_module(ROOT / "dags" / "flexflow_dags.py")) == {}


def test_an_empty_specs_folder_gives_no_dags(tmp_path: Path) -> None:
    assert load_dags(__file__, str(tmp_path)) == {}


# -- (e) bounded work: the folder's cost is proportional to its specs ----------------------------


def test_each_spec_file_is_read_once_and_compiled_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flexflow.spec.pipeline as pipeline
    from flexflow.compiler.dag import compile_spec as real_compile

    count = 40
    write_specs(
        tmp_path,
        {f"s{n:02d}.yaml": VALID["alpha.yaml"].replace("loader_alpha", f"loader_{n:02d}") for n in range(count)},
    )
    reads: list[Path] = []
    compiled: list[str] = []
    real_read = pipeline.read_spec_text

    def read(file: Path, *args: Any) -> bytes:
        reads.append(file)
        return real_read(file, *args)

    def compile_spec(spec: Any) -> Any:
        compiled.append(spec.dag_id)
        return real_compile(spec)

    monkeypatch.setattr(pipeline, "read_spec_text", read)
    monkeypatch.setattr(loader_module, "compile_spec", compile_spec)
    assert len(load_dags(__file__, str(tmp_path))) == count
    assert sorted(reads) == sorted(tmp_path.glob("*.yaml")), "one read per file"
    assert len(compiled) == count, "one compile per spec"
