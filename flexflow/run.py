"""``flexflow run SPEC``: one run of a spec's DAG through Airflow itself, on this machine.

The DAG runs with ``dag.test()`` in a child process, in a private AIRFLOW_HOME with a SQLite
database (created on first use), from a DAG bundle holding only this spec. Without
``--connection`` the embedded emulator stands in for the API: no key, no network. The parent
process shows progress from the run's task states, then a summary, the manifest and a contact
sheet. Airflow's own log of the run goes to a file, whose path is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flexflow.compiler.dag_file import DAG_FILE_NAME, SPECS_DIR_ENV, dag_file_source
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer
from flexflow.publishing.contact_sheet import render_contact_sheet
from flexflow.spec import Spec, SpecError, load_spec
from flexflow.spec.report import render_text, use_color

BUNDLE_FILE = DAG_FILE_NAME
RESULT_FILE = "last-run.json"
#: The embedded emulator's jobs: quick, but slow enough to see them queue and process.
DEMO_EMULATOR = EmulatorConfig(queue_seconds=0.5, processing_seconds=2.0)
#: How a task's failure reads in Airflow's log: the exception's class, then its message, on one line.
_FAILURE = re.compile(r"\b(?:AirflowFailException|AirflowException|AirflowSensorTimeout|DownloadError): ([^\n]+)")


@dataclass(frozen=True)
class RunHome:
    root: Path

    @property
    def dags(self) -> Path:
        return self.root / "dags"

    @property
    def db(self) -> Path:
        return self.root / "airflow.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def env(self) -> dict[str, str]:
        bundle = {
            "name": "flexflow-run",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(self.dags)},
        }
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.root),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
            SPECS_DIR_ENV: "",  # the bundle's DAG file names its one spec; a deployment's folder must not win
        }


def prepare(home: RunHome, spec_file: Path, connection_id: str | None) -> None:
    """A bundle with one DAG file that compiles only this spec, the same way the DAG-folder loader does."""
    home.dags.mkdir(parents=True, exist_ok=True)
    home.logs.mkdir(parents=True, exist_ok=True)
    for stale in home.dags.glob("*.py"):
        stale.unlink()
    (home.dags / BUNDLE_FILE).write_text(dag_file_source(str(spec_file), connection_id))


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(render_text(exc.problems, use_color(sys.stderr)), file=sys.stderr)
        return 1
    home = RunHome(Path(args.home).resolve())
    prepare(home, Path(args.spec).resolve(), args.connection)
    env = home.env()
    log_file = home.logs / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    with log_file.open("w") as log:
        if not home.db.exists():
            print(f"creating the Airflow database in {home.root} (first run only) ...", flush=True)
            subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"], env=env, stdout=log, stderr=log, check=True
            )
        emulator = None if args.connection else EmulatorServer(DEMO_EMULATOR).start()
        try:
            if emulator is not None:
                env[f"AIRFLOW_CONN_{spec.connection_id.upper()}"] = json.dumps(_emulator_connection(emulator.url))
                print(f"no --connection given: the embedded emulator at {emulator.url} stands in for the API")
            print(f"running {spec.dag_id}: {spec.job_count} job(s) ...", flush=True)
            before = _run_ids(home.db, spec.dag_id)
            child = subprocess.Popen(
                [sys.executable, "-m", "flexflow.run", str(home.root), spec.dag_id],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _show_progress(child, home.db, spec, before)
        finally:
            if emulator is not None:
                emulator.stop()
    return _report(home, spec, log_file)


def _emulator_connection(url: str) -> dict[str, Any]:
    return {
        "conn_type": "apiframe",
        "host": url,
        "password": DEFAULT_TEST_KEY,
        "extra": {"job_link": "{base_url}/_emulator/jobs/{job_id}"},
    }


# -- progress, from the run's task states --------------------------------------------------------


def _query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute(sql, args).fetchall()
    except sqlite3.Error:  # not created yet, or busy: the next tick reads again
        return []


def _run_ids(db: Path, dag_id: str) -> set[str]:
    return {row[0] for row in _query(db, "SELECT run_id FROM dag_run WHERE dag_id = ?", dag_id)}


def _show_progress(child: subprocess.Popen[bytes], db: Path, spec: Spec, before: set[str]) -> None:
    shown = ""
    started = time.monotonic()
    while child.poll() is None:
        time.sleep(0.5)
        run_id = next(iter(_run_ids(db, spec.dag_id) - before), None)
        if run_id is None:
            continue
        states = _query(
            db, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", spec.dag_id, run_id
        )
        line = _progress_line(states, spec.job_count)
        if line != shown:
            print(f"  [{time.monotonic() - started:5.1f}s] {line}", flush=True)
            shown = line


def _progress_line(states: list[tuple[str, str | None]], jobs: int) -> str:
    def count(step: str, *wanted: str) -> int:
        return sum(1 for task_id, state in states if task_id.endswith(f".{step}") and state in wanted)

    waiting = count("wait", "running", "deferred", "up_for_reschedule", "queued", "scheduled")
    failed = sum(1 for _, state in states if state in ("failed", "upstream_failed"))
    line = (
        f"submitted {count('submit', 'success')}/{jobs} | waiting {waiting} | "
        f"done {count('wait', 'success')}/{jobs} | published {count('publish', 'success')}/{jobs}"
    )
    return line + (f" | FAILED {failed}" if failed else "")


# -- the report ------------------------------------------------------------------------------------


def _report(home: RunHome, spec: Spec, log_file: Path) -> int:
    result_file = home.root / RESULT_FILE
    result = json.loads(result_file.read_text()) if result_file.exists() else {"state": "unknown"}
    result_file.unlink(missing_ok=True)
    if result.get("state") != "success":
        print(f"\nthe run of {spec.dag_id} ended {result.get('state')}: {result.get('error') or ''}".rstrip())
        for task_id, map_index, state in _query(
            home.db,
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "AND state IN ('failed', 'upstream_failed')",
            spec.dag_id,
            result.get("run_id", ""),
        ):
            print(f"  {task_id}{'' if map_index < 0 else f'[{map_index}]'}: {state}")
        for reason in _failure_reasons(log_file.read_text(errors="replace")):
            print(f"  why: {reason}")
        print(f"Airflow's log of the run: {log_file}")
        return 1
    [(value,)] = _query(
        home.db,
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'finalize' AND key = 'return_value'",
        spec.dag_id,
        result["run_id"],
    ) or [("{}",)]
    manifest_url = json.loads(value).get("manifest")
    print(f"\n{spec.dag_id}: run {result['run_id']} succeeded")
    if not manifest_url or urlsplit(manifest_url).scheme not in ("file", ""):
        print(f"published to {spec.publish.to} (manifest: {manifest_url or 'not written'})")
        print(f"Airflow's log of the run: {log_file}")
        return 0
    manifest_path = Path(urlsplit(manifest_url).path)
    manifest = json.loads(manifest_path.read_text())
    _summary(manifest)
    sheet = manifest_path.parent / "index.html"
    sheet.write_text(render_contact_sheet(manifest))
    print(f"\nmanifest:      {manifest_path}\ncontact sheet: {sheet}\nAirflow's log: {log_file}")
    return 0


def _failure_reasons(log: str, most: int = 5) -> list[str]:
    """The messages tasks failed with, first seen first: a refused target or a failed job, in a line each."""
    reasons = dict.fromkeys(match.group(1).strip() for match in _FAILURE.finditer(log))
    return list(reasons)[:most]


def _summary(manifest: dict[str, Any]) -> None:
    header = ["image", "variant", "size", "format", "bytes", "job id", "file"]
    rows = [
        [
            f["image"],
            f["variant"] or "-",
            f"{f['width']}x{f['height']}",
            f["format"],
            f"{f['bytes']:,}",
            f["job_id"],
            f["name"],
        ]
        for f in manifest["files"]
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- the child: Airflow runs the DAG ---------------------------------------------------------------


def child_main(home_root: str, dag_id: str) -> int:
    """Runs in the child process, with the private AIRFLOW_HOME in its environment."""
    import runpy

    home = RunHome(Path(home_root))
    dags = runpy.run_path(str(home.dags / BUNDLE_FILE))
    dag = dags[dag_id]
    result: dict[str, Any]
    try:
        now = datetime.now(UTC)
        # A manual run before the DAG's start_date would have no tasks: run it as of the start.
        logical_date = dag.start_date if dag.start_date and dag.start_date > now else None
        dag_run = dag.test(logical_date=logical_date) if logical_date else dag.test()
        result = {"state": str(dag_run.state), "run_id": dag_run.run_id}
    except Exception as exc:
        result = {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
    (home.root / RESULT_FILE).write_text(json.dumps(result))
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(child_main(*sys.argv[1:3]))
