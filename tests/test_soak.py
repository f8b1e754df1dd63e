"""The seeded soak (issue 12): 500 images through Airflow while 20% of the API's calls are faulted.

tests/specs/soak/soak.yaml is one image in 100 seeds, and every job returns 5 images
(``several_images:images=5``): 500 images, each downloaded and checked on its own, in 100 billed jobs.
(dag.test() spends about a third of a second per task instance: 500 one-image jobs took 9.5 minutes.)
It runs with dag.test() against the session emulator. The fault plan mixes the transient faults a real
API shows (429 with a zero Retry-After, 5xx, dropped connections, lost submit responses, transfers cut
half-way), drawn at rates from a generator seeded by the plan's seed, so a failure replays. Whatever
was faulted, every image must be published exactly once: one bill per job, no duplicate by key or by
body, no partial file, and a manifest listing all 500 with the sha256 of the file on disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flexflow.contract import apply_defaults, output_size
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.spec.cache import CACHE_DIR_ENV
from flexflow.spec.checks import RUN_FILES
from tests.airflow_helpers import load_module, rows, task_states
from tests.conftest import ROOT, EmulatedAirflow
from tests.test_fault_matrix import holding_the_key, received_requests, stored_haystacks

DAG_ID = "flexflow_test_soak"
TARGET = Path("/tmp/flexflow-test-soak")
JOBS, PER_JOB = 100, 5
SEED = 20261207
#: Per route about one call in five is faulted: submit 5+5+4+6 %, poll 5+5+4+6 %, file 5+4+6+5+5 %.
FAULTS: list[dict[str, Any]] = [
    {"fault": "rate_limit", "rate": 0.05, "route": "api", "retry_after": 0},
    {"fault": "http_503", "rate": 0.05, "route": "any"},
    {"fault": "drop", "rate": 0.04, "route": "any"},
    {"fault": "lost_response", "rate": 0.06, "route": "submit"},
    {"fault": "http_502", "rate": 0.06, "route": "poll"},
    {"fault": "http_500", "rate": 0.06, "route": "file"},
    {"fault": "rate_limit", "rate": 0.05, "route": "file", "retry_after": 0},
    {"fault": "cut_transfer", "rate": 0.05, "route": "file"},
    {"fault": "several_images", "rate": 1.0, "images": PER_JOB},  # a job outcome: every job returns 5
]


@pytest.fixture
def soak_dag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    shutil.rmtree(TARGET, ignore_errors=True)
    yield load_module(ROOT / "tests/dags/flexflow_fault_test_dags.py").DAGS[DAG_ID]
    shutil.rmtree(TARGET, ignore_errors=True)


def check_published(folder: Path) -> list[dict[str, Any]]:
    """Exactly the run's 500 images, its manifest and contact sheet, each image whole and as the manifest says."""
    files = sorted(p.name for p in folder.iterdir())
    assert [name for name in files if name.endswith(".partial")] == []
    names = sorted(f"tile_seed-{seed}-{n}.png" for seed in range(1, JOBS + 1) for n in range(1, PER_JOB + 1))
    assert files == sorted([*names, *RUN_FILES])
    entries: list[dict[str, Any]] = json.loads((folder / MANIFEST_NAME).read_text())["files"]
    assert sorted(entry["name"] for entry in entries) == names
    size = output_size(apply_defaults({"resolution": "0.5MP", "output_format": "png"}))
    for entry in entries:
        data = (folder / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["name"]
        with Image.open(folder / entry["name"]) as image:
            image.load()  # decodes every byte: a truncated or corrupt file raises here
            assert (image.format, image.size) == ("PNG", size), entry["name"]
    return entries


@pytest.mark.slow
def test_500_images_through_20_percent_faults_are_each_published_once(
    soak_dag: Any, emulated_airflow: EmulatedAirflow
) -> None:
    emulator, airflow_db = emulated_airflow.emulator, emulated_airflow.db
    emulator.faults.reset(seed=SEED)
    emulator.faults.add(*FAULTS)
    dag_run = soak_dag.test()
    states = task_states(airflow_db, DAG_ID, dag_run.run_id)
    assert dag_run.state == "success", sorted(task for task, (state, _) in states.items() if state != "success")

    entries = check_published(TARGET / dag_run.run_id.replace(":", "_"))
    assert len({entry["sha256"] for entry in entries}) == JOBS * PER_JOB, "500 distinct images"
    per_job = Counter(entry["job_id"] for entry in entries)
    assert len(per_job) == JOBS and set(per_job.values()) == {PER_JOB}, "every image of every job"
    events = "SELECT COUNT(*) FROM asset_event WHERE source_dag_id = ? AND source_run_id = ?"
    assert rows(airflow_db, events, DAG_ID, dag_run.run_id) == [(1,)], "one Asset event for the published run"

    accounting = emulator.accounting()
    injected = accounting["faults_injected"]
    transient = sum(count for fault, count in injected.items() if fault != "several_images")
    # Each job takes at least a submit and a poll, each image a download: a fifth of those, roughly.
    assert transient >= 0.15 * (2 * JOBS + JOBS * PER_JOB), injected
    assert accounting["jobs_billed"] == accounting["jobs_created"] == JOBS, "one bill per job"
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}

    # The key hunt after the soak: its files, Airflow's home and database, its output, the requests.
    haystacks = stored_haystacks(airflow_db, TARGET)
    haystacks["captured output"] = emulated_airflow.output().encode()
    haystacks["requests the emulator received"] = received_requests(emulator).encode()
    assert DAG_ID.encode() in haystacks["captured output"] and b"tile_seed-100-5.png" in haystacks["table xcom"]
    found = holding_the_key(haystacks)
    assert found == [], f"the API key (or an encoding of it) was found in {found}"
