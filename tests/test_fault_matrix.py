"""The fault matrix (issue 12): every fault the emulator can inject, run through Airflow with dag.test().

Each row runs tests/specs/faults/pair.yaml (two images) against the session emulator with one fault
injected, and checks the guarantees of docs/guarantees.md on what the run left behind:

1. at most one bill per logical request (the emulator's accounting: no duplicate by key or by body);
2. a run publishes every image of every job, then its manifest and Asset event, or it fails visibly
   (a failed task, a message saying why) and writes neither;
3. nothing partial or corrupt is published (no ``*.partial``; every file decodes whole with PIL, has
   the requested format and pixel size, and matches the manifest's sha256).

A row's expected values are asserted; the values measured are what the ``api-faults`` table of
docs/guarantees.md shows (tests/guarantees_doc.py rewrites it, and fails when it was stale). The key
hunt runs last in this module, so it sees everything the faulted runs left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from flexflow.contract import apply_defaults, output_size
from flexflow.emulator import EmulatorServer
from flexflow.emulator.faults import Fault
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.spec.cache import CACHE_DIR_ENV
from flexflow.spec.checks import RUN_FILES
from tests.airflow_helpers import load_module, rows, task_states
from tests.conftest import AIRFLOW_HOME, ROOT, SECRET_KEY, EmulatedAirflow
from tests.guarantees_doc import publish_table
from tests.test_template_secrets_hunt import leaks

DAG_ID = "flexflow_test_faults_pair"
TARGET = Path("/tmp/flexflow-test-faults")
FLUX = apply_defaults({"resolution": "0.5MP", "output_format": "png"})


@dataclass(frozen=True)
class Case:
    """One row: the fault rule injected and what the run must do about it."""

    row: str
    rule: dict[str, Any]
    outcome: str = "success"
    failed: str = ""  # the kind of task that fails (submit, wait, publish), for a failed run
    message: str = ""  # a fragment of the run's output saying why
    billed: int = 2
    files: int = 2
    extra: dict[str, Any] = field(default_factory=dict)  # connection extras for this row
    late_submits: int = 0  # submits the emulator still carries out after the run (a slow one given up on)

    @property
    def where(self) -> str:
        return str(self.rule.get("route", "job" if self.rule["fault"] in JOB_OUTCOMES else "api"))

    @property
    def rule_text(self) -> str:
        options = ",".join(f"{k}={'none' if v is None else v}" for k, v in self.rule.items() if k != "fault")
        extra = ", ".join(f"{k}={v}" for k, v in self.extra.items())
        return f"`{self.rule['fault']}:{options}`" + (f" (connection extra {extra})" if extra else "")


GONE = "answered 404 (the result has expired or was purged)"
#: What every failed run of a row says, by the kind of task that failed, besides the row's own reason.
SAYS = {
    "wait": "Not retried: clear the submit task to submit a new job deliberately",
    "publish": "that submits ONE new job",  # a paid result lost: what clearing does, and what it costs
}
NOT_PUBLISHED = "so no manifest was written and no Asset event sent"
JOB_OUTCOMES = {fault for fault in Fault if fault.is_job_outcome}

CASES = [
    Case("rate_limit", {"fault": "rate_limit", "count": 2, "route": "submit", "retry_after": 1}),
    Case("rate_limit without Retry-After", {"fault": "rate_limit", "count": 1, "route": "poll", "retry_after": None}),
    Case("http_408 x3", {"fault": "http_408", "count": 3, "route": "submit"}),
    *(
        Case(f"http_503 x3 {route}", {"fault": "http_503", "count": 3, "route": route})
        for route in ("submit", "poll", "file")
    ),
    Case("http_500 x3", {"fault": "http_500", "count": 3, "route": "any"}),
    Case("http_502", {"fault": "http_502", "count": 1, "route": "poll"}),
    Case("http_504", {"fault": "http_504", "count": 1, "route": "submit"}),
    *(Case(f"drop {route}", {"fault": "drop", "count": 1, "route": route}) for route in ("submit", "poll", "file")),
    Case("slow, under the timeout", {"fault": "slow", "count": 1, "route": "submit", "delay": 0.5}),
    Case(
        "slow, over the timeout",
        {"fault": "slow", "count": 1, "route": "submit", "delay": 2.5},
        extra={"request_timeout": 1},
        late_submits=1,
    ),
    Case("lost submit response", {"fault": "lost_response", "count": 1, "route": "submit"}),
    Case("cut transfer", {"fault": "cut_transfer", "count": 1, "route": "file"}),
    Case("fail", {"fault": "fail", "count": 1}, "failed", "wait", "ended FAILED: Provider error", billed=1, files=1),
    Case(
        "moderation",
        {"fault": "moderation", "count": 1},
        "failed",
        "wait",
        "ended FAILED: Content moderation",
        billed=1,
        files=1,
    ),
    Case("cancel", {"fault": "cancel", "count": 1}, "failed", "wait", "ended CANCELLED", billed=1, files=1),
    Case("expired_result", {"fault": "expired_result", "count": 1}, "failed", "publish", GONE, files=1),
    Case("missing_result", {"fault": "missing_result", "count": 1}, "failed", "publish", GONE, files=1),
    Case(
        "wrong_content_type",
        {"fault": "wrong_content_type", "count": 1},
        "failed",
        "publish",
        "is not a png image",
        files=1,
    ),
    Case(
        "truncated_image",
        {"fault": "truncated_image", "count": 1},
        "failed",
        "publish",
        "image file is truncated",
        files=1,
    ),
    Case("corrupt_image", {"fault": "corrupt_image", "count": 1}, "failed", "publish", "broken data stream", files=1),
    Case("several_images", {"fault": "several_images", "count": 1, "images": 3}, files=4),
    Case("extra_keys", {"fault": "extra_keys", "count": 1}),
    Case("result_string", {"fault": "result_string", "count": 1}),
    Case("result_list", {"fault": "result_list", "count": 1}),
]


@dataclass(frozen=True)
class Measured:
    """What one faulted run left behind."""

    state: str
    failed_tasks: dict[str, int]  # task id -> the try it failed in (finalize aside)
    submits: int  # submit requests that reached the API: a retried or replayed one counts again
    billed: int
    duplicates: dict[str, Any]
    injected: int
    images: list[str]
    partial: list[str]
    manifest: bool
    asset_events: int
    output: str
    received: str  # what the emulator kept of the run's requests, for the key hunt

    def cells(self, case: Case) -> list[object]:
        duplicates = len(self.duplicates["by_key"]) + self.duplicates["by_body"]
        failed = ", ".join(sorted({task.split(".")[-1].split("[")[0] for task in self.failed_tasks})) or "-"
        return [
            case.row,
            case.where,
            case.rule_text,
            self.state,
            failed,
            case.message or "-",
            self.injected,
            self.submits,
            self.billed,
            duplicates,
            len(self.images),
            "yes" if self.manifest else "no",
            "yes" if self.asset_events else "no",
        ]


HEADER = [
    "fault",
    "where",
    "rule",
    "run",
    "failed task",
    "message says",
    "faults injected",
    "submits received",
    "jobs billed",
    "duplicates",
    "files",
    "manifest",
    "Asset event",
]

#: Measured rows and captured output, shared by the rows, the table and the key hunt of this module.
MEASURED: dict[str, Measured] = {}


@pytest.fixture(scope="module")
def fault_dags(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    shutil.rmtree(TARGET, ignore_errors=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("spec-cache")))
        patch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
        yield load_module(ROOT / "tests/dags/flexflow_fault_test_dags.py").DAGS
    shutil.rmtree(TARGET, ignore_errors=True)


def with_extras(monkeypatch: pytest.MonkeyPatch, connection_id: str, extra: dict[str, Any]) -> None:
    """The connection of the apiframe_connection fixture with more extras (a shorter request timeout)."""
    variable = f"AIRFLOW_CONN_{connection_id.upper()}"
    connection = json.loads(os.environ[variable])
    connection["extra"] = {**connection["extra"], **extra}
    monkeypatch.setenv(variable, json.dumps(connection))


def asset_event_count(db: Path, dag_id: str, run_id: str) -> int:
    found = rows(db, "SELECT COUNT(*) FROM asset_event WHERE source_dag_id = ? AND source_run_id = ?", dag_id, run_id)
    return int(found[0][0])


def checked_images(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under the folder, each decoded whole and checked; and any partial files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    partial = [p.name for p in files if p.name.endswith(".partial")]
    images = [p for p in files if p.suffix == ".png"]
    others = [p.name for p in files if p not in images and p.name not in RUN_FILES and p.name not in partial]
    assert others == [], f"a run stores its images, manifest and contact sheet, nothing else: {others}"
    expected = output_size(FLUX)
    for path in images:
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated or corrupt file raises here
            assert (image.format, image.size) == ("PNG", expected), f"{path}: {image.format} {image.size}"
    return [p.name for p in images], partial


def check_manifest(folder: Path, images: list[str]) -> bool:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return False
    manifest = json.loads(path.read_text())
    entries = {entry["name"]: entry["sha256"] for entry in manifest["files"]}
    assert sorted(entries) == images, "the manifest lists exactly the files stored"
    for name, sha256 in entries.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256, f"{name} differs from the manifest"
    return True


def received_requests(emulator: EmulatorServer) -> str:
    """The requests the emulator received, as its control route serves them (it leaves out X-API-Key)."""
    response = httpx2.get(f"{emulator.url}/_emulator/requests", timeout=10)
    response.raise_for_status()
    assert response.json()["requests"], "the emulator recorded the run's requests"
    return response.text


def settled(emulator: EmulatorServer, late_submits: int, timeout: float = 15.0) -> None:
    """Wait until the submits the client gave up on have reached the emulator's API too.

    A slow submit the client timed out on is still carried out once its delay has passed. Counted
    after it, the row shows that the late request replayed its key rather than paying again; left
    running, it would land in the next row's freshly reset emulator and look like that row's duplicate.
    """
    deadline = time.monotonic() + timeout
    while True:
        accounting = emulator.accounting()
        if accounting["submissions"] >= accounting["jobs_created"] + late_submits:
            return
        assert time.monotonic() < deadline, f"the {late_submits} late submit(s) never arrived: {accounting}"
        time.sleep(0.05)


def faulted_run(dag: Any, airflow: EmulatedAirflow, case: Case) -> Measured:
    emulator, airflow_db = airflow.emulator, airflow.db
    if case.rule:
        emulator.faults.add(case.rule)
    dag_run = dag.test()
    settled(emulator, case.late_submits)
    output = airflow.output()
    folder = TARGET / "pair" / dag_run.run_id.replace(":", "_")
    states = task_states(airflow_db, DAG_ID, dag_run.run_id)
    images, partial = checked_images(folder)
    accounting = emulator.accounting()
    return Measured(
        state=str(dag_run.state),
        failed_tasks={
            task: tries for task, (state, tries) in states.items() if state == "failed" and task != "finalize"
        },
        submits=accounting["submissions"],
        billed=accounting["jobs_billed"],
        duplicates=accounting["duplicates"],
        injected=sum(accounting["faults_injected"].values()),
        images=images,
        partial=partial,
        manifest=check_manifest(folder, images),
        asset_events=asset_event_count(airflow_db, DAG_ID, dag_run.run_id),
        output=output,
        received=received_requests(emulator),
    )


@pytest.mark.parametrize("case", CASES, ids=[case.row for case in CASES])
def test_a_fault_costs_at_most_one_bill_and_publishes_all_or_nothing(
    case: Case, fault_dags: dict[str, Any], emulated_airflow: EmulatedAirflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_extras(monkeypatch, emulated_airflow.connection_id, case.extra)
    run = faulted_run(fault_dags[DAG_ID], emulated_airflow, case)
    MEASURED[case.row] = run

    assert run.injected >= 1, "the fault was injected"
    assert run.duplicates == {"by_key": {}, "by_body": 0}, "one logical request, one bill"
    assert run.partial == [], "no partial file is left"
    assert run.state == case.outcome, run.failed_tasks
    assert run.billed == case.billed
    assert len(run.images) == case.files
    if case.outcome == "success":
        assert run.manifest and run.asset_events == 1, "a published run announces itself once"
        assert run.failed_tasks == {}
    else:
        assert not run.manifest and run.asset_events == 0, "a failed run writes no manifest, no Asset event"
        assert {task.split(".")[-1].split("[")[0] for task in run.failed_tasks} == {case.failed}
        assert set(run.failed_tasks.values()) == {1}, "failed at once: a retry cannot help"
        for fragment in (case.message, SAYS[case.failed], NOT_PUBLISHED):
            assert fragment in run.output


def test_the_matrix_has_a_row_for_every_fault_the_emulator_can_inject() -> None:
    assert {Fault(case.rule["fault"]) for case in CASES} == set(Fault)


def test_the_api_faults_table_in_docs_guarantees_is_current() -> None:
    missing = [case.row for case in CASES if case.row not in MEASURED]
    assert not missing, f"rows {missing} did not run: run the whole module to rewrite the table"
    publish_table("api-faults", HEADER, [MEASURED[case.row].cells(case) for case in CASES])


# -- the key hunt, after every faulted run of this module -----------------------------------------


def database_values(db: Path) -> dict[str, bytes]:
    """Every value of every table of the metadata database, as bytes; zlib blobs also inflated."""
    dump: dict[str, bytes] = {}
    with sqlite3.connect(db) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            values: list[bytes] = []
            for row in connection.execute(f'SELECT * FROM "{table}"'):  # the names come from sqlite_master
                values.extend(as_bytes(value) for value in row)
            dump[table] = b"\n".join(values)
    return dump


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        try:
            return value + b"\n" + zlib.decompress(value)  # Airflow compresses serialized DAGs
        except zlib.error:
            return value
    return str(value).encode()


def stored_haystacks(db: Path, *folders: Path) -> dict[str, bytes]:
    """Every file under the folders and AIRFLOW_HOME (the database, its journal, logs), and every table."""
    files = [path for folder in (*folders, AIRFLOW_HOME) for path in folder.rglob("*") if path.is_file()]
    haystacks = {str(path): path.read_bytes() for path in files}
    haystacks.update({f"table {table}": values for table, values in database_values(db).items()})
    return haystacks


def holding_the_key(haystacks: dict[str, bytes]) -> list[str]:
    """The haystacks in which the connection's key shows, as written or encoded (base64, hex, URL-quoted)."""
    return sorted(name for name, haystack in haystacks.items() if leaks(haystack, SECRET_KEY))


def test_after_the_fault_matrix_the_key_is_nowhere(
    fault_dags: dict[str, Any], emulated_airflow: EmulatedAirflow
) -> None:
    assert MEASURED, "the hunt runs after the fault matrix, in the same module run"
    emulator = emulated_airflow.emulator
    # One more run whose jobs take a while, so that its waits defer: the trigger's arguments and event
    # go through Airflow's serialization too (dag.test() runs the trigger in line, with no trigger row).
    emulator.config.update({"processing_seconds": 1.5})
    deferred = faulted_run(fault_dags[DAG_ID], emulated_airflow, Case("deferred", {}))
    polls = emulator.accounting()["polls_per_job"].values()
    assert deferred.state == "success" and max(polls) >= 2, "a job still running at the first check: the wait deferred"

    haystacks = stored_haystacks(emulated_airflow.db, TARGET)
    for row, run in [*MEASURED.items(), ("deferred", deferred)]:
        haystacks[f"captured output of {row!r}"] = run.output.encode()
        haystacks[f"requests the emulator received in {row!r}"] = run.received.encode()
    # The hunt looks where the runs wrote: their files, XComs, rendered fields, the tasks' trigger events.
    assert any(name.endswith(MANIFEST_NAME) for name in haystacks) and any(name.endswith(".png") for name in haystacks)
    for table in ("xcom", "rendered_task_instance_fields", "task_instance"):
        assert DAG_ID.encode() in haystacks[f"table {table}"], table
    assert "table trigger" in haystacks and "table connection" in haystacks
    found = holding_the_key(haystacks)
    assert found == [], f"the API key (or an encoding of it) was found in {found}"
