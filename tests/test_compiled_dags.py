"""Every example spec runs end to end with dag.test() against the emulator: images, manifest, asset event."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from flexflow.contract import output_size
from flexflow.emulator import EmulatorServer
from flexflow.spec import load_spec
from tests.airflow_helpers import clear_publish_root, load_module, rows, task_states, xcom
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def compiled_dags() -> dict[str, object]:
    module = load_module(ROOT / "dags/flexflow_dags.py")
    return {name: value for name, value in vars(module).items() if hasattr(value, "test")}


@pytest.mark.parametrize("spec_file", EXAMPLES, ids=[f.stem for f in EXAMPLES])
def test_example_spec_publishes_everything(
    spec_file: Path, emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> None:
    spec = load_spec(spec_file)
    clear_publish_root(spec)
    dag = compiled_dags()[spec.dag_id]
    dag_run = dag.test()
    assert dag_run.state == "success", task_states(airflow_db, spec.dag_id, dag_run.run_id)

    [finalized] = xcom(airflow_db, spec.dag_id, dag_run.run_id, "finalize")
    assert finalized["files"] == spec.job_count
    manifest_path = Path(urlsplit(finalized["manifest"]).path)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dag_id"] == spec.dag_id
    assert manifest["run_id"] == dag_run.run_id
    expected = {(image.name, variant.label): image.job_flux(variant) for image, variant, _ in spec.jobs()}
    assert {(f["image"], f["variant"]) for f in manifest["files"]} == set(expected)
    for entry in manifest["files"]:
        flux = expected[(entry["image"], entry["variant"])]
        assert entry["flux"] == flux, "full flux params, defaults applied"
        data = (manifest_path.parent / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == PIL_FORMATS[flux["output_format"]]
            assert picture.size == output_size(flux) == (entry["width"], entry["height"])
        assert "{{" not in entry["prompt"], "the prompt was rendered"
        assert entry["job_id"] and entry["dag_id"] == spec.dag_id and entry["published_at"]
        assert entry["seed"] == flux.get("seed")

    [(uri, extra)] = rows(
        airflow_db,
        "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE e.source_dag_id = ? AND e.source_run_id = ?",
        spec.dag_id,
        dag_run.run_id,
    )
    assert uri.rstrip("/") == spec.publish.asset, "Airflow normalizes the URI with a trailing slash"
    event = json.loads(extra)
    assert event["run_id"] == dag_run.run_id
    assert len(event["files"]) == spec.job_count
    assert len(event["job_ids"]) == spec.job_count
    accounting = emulator.accounting()
    assert accounting["jobs_billed"] == spec.job_count
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}
