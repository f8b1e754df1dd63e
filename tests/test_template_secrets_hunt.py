"""The key hunt (issue 11): after a run of every template the allow-list accepts, the API key is nowhere.

The spec in tests/specs/secrets_hunt uses every run value, both forms of params, every filter, a
``{% raw %}`` block that writes ``{{ conn... }}`` as text, and the example specs' prompts. It runs with
dag.test() against the emulator, with the connection's key (tests/conftest.py SECRET_KEY); then the key,
as written and encoded (base64 in every alignment, URL-encoded, hex), is searched in the published
files, the manifest, the contact sheet, every file under AIRFLOW_HOME (the database with its journal, the
log folder when there is one: dag.test() logs to the captured output, which is searched too), and the
bodies and headers the emulator received (the API-key header aside: that is where the key belongs).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jinja2 import nodes

from flexflow.emulator import EmulatorServer
from flexflow.emulator import app as emulator_app
from flexflow.publishing.contact_sheet import render_contact_sheet
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.spec import load_spec
from flexflow.spec.cache import CACHE_DIR_ENV
from flexflow.spec.templates import ALLOWED_FILTERS, RUN_VALUES, parse_template
from tests.airflow_helpers import load_module, task_states
from tests.conftest import AIRFLOW_HOME, ROOT, SECRET_KEY

DAG_ID = "flexflow_test_secrets_hunt"
HUNT_SPEC = ROOT / "tests/specs/secrets_hunt/accepted_templates.yaml"
TARGET = Path("/tmp/flexflow-test-hunt")


def key_forms(key: str) -> set[bytes]:
    """The key as bytes in the forms a leak takes: as written, URL-encoded, hex, base64 at any offset."""
    raw = key.encode()
    forms = {
        raw,
        raw.lower(),
        raw.upper(),
        quote(key, safe="").encode(),
        raw.hex().encode(),
        raw.hex().upper().encode(),
    }
    for offset in range(3):  # base64 of a longer text holds the key's middle, aligned one of three ways
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + raw)
            forms.add(encoded[4 if offset else 0 : -4])
    return forms


def leaks(haystack: bytes, key: str = SECRET_KEY) -> list[bytes]:
    return [form for form in key_forms(key) if form in haystack]


def test_the_hunt_finds_the_key_however_it_is_encoded() -> None:
    for text in (
        SECRET_KEY,
        f"Authorization: {quote(SECRET_KEY)}",
        SECRET_KEY.encode().hex(),
        base64.b64encode(f"user:{SECRET_KEY}".encode()).decode(),
        base64.urlsafe_b64encode(f"xx{SECRET_KEY}yy".encode()).decode(),
    ):
        assert leaks(text.encode()), text
    assert not leaks(b"afk_flexflow_emulator_test_key and other text")


def test_the_hunt_runs_every_accepted_name_filter_and_example_prompt() -> None:
    spec = load_spec(HUNT_SPEC)
    templates = [image.prompt for image in spec.images] + [spec.publish.to, spec.publish.filename]
    trees = [parse_template(text) for text in templates]
    names = {node.name for tree in trees for node in tree.find_all(nodes.Name)}
    filters = {node.name for tree in trees for node in tree.find_all(nodes.Filter)}
    assert {*RUN_VALUES, "params"} == names
    assert set(ALLOWED_FILTERS) == filters
    examples = {image.prompt for file in (ROOT / "specs").glob("*.yaml") for image in load_spec(file).images}
    assert examples <= {image.prompt for image in spec.images}


@pytest.fixture
def received_headers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """Every request's headers as the emulator saw them (it keeps only a hash of the key)."""
    seen: list[dict[str, str]] = []
    owner = emulator_app._Api._owner

    def recording(self: Any, request: Any) -> Any:
        seen.append(dict(request.headers))
        return owner(self, request)

    monkeypatch.setattr(emulator_app._Api, "_owner", recording)
    return seen


@pytest.fixture
def target() -> Iterator[Path]:
    shutil.rmtree(TARGET, ignore_errors=True)
    yield TARGET
    shutil.rmtree(TARGET, ignore_errors=True)


def files_under(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        yield from (path for path in folder.rglob("*") if path.is_file())


def test_after_every_accepted_template_ran_the_key_is_nowhere(
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    received_headers: list[dict[str, str]],
    target: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    dag = load_module(ROOT / "tests/dags/flexflow_hunt_test_dags.py").DAGS[DAG_ID]
    dag_run = dag.test()
    assert dag_run.state == "success", task_states(airflow_db, DAG_ID, dag_run.run_id)
    output = "".join(capfd.readouterr())

    [manifest_file] = target.rglob(MANIFEST_NAME)
    manifest = json.loads(manifest_file.read_text())
    prompts = {entry["image"]: entry["prompt"] for entry in manifest["files"]}
    # The templates did render, and text in {% raw %} stayed text: nothing rendered it a second time.
    assert prompts["raw_block"] == "written as text: {{ conn.apiframe_default.password }} {{ var.value.x }}"
    assert prompts["params_filters"] == "SPRING 2027 aurora headphones Hear The Quiet Hear the quiet 30% Aurora 30%"
    assert all("{{" not in prompt for image, prompt in prompts.items() if image != "raw_block")

    bodies = [job.body for job in emulator.state.jobs.values()]
    assert len(bodies) == load_spec(HUNT_SPEC).job_count
    assert {body["prompt"] for body in bodies} == set(prompts.values())
    headers = [{k: v for k, v in h.items() if k.lower() != "x-api-key"} for h in received_headers]
    assert received_headers and all(h.get("x-api-key") == SECRET_KEY for h in received_headers), "the key was used"

    haystacks: dict[str, bytes] = {
        "captured output": output.encode(),
        "contact sheet": render_contact_sheet(manifest).encode(),
        "request bodies": json.dumps(bodies).encode(),
        "request headers (the API-key header aside)": json.dumps(headers).encode(),
    }
    for file in files_under(target, AIRFLOW_HOME):  # published files, manifest, Airflow's DB and logs
        haystacks[str(file)] = file.read_bytes()
    assert any(name.endswith(MANIFEST_NAME) for name in haystacks)
    # The hunt looks where the run wrote: the database (and its journal) holds the run's rendered prompts.
    assert any(prompts["example_7"].encode() in haystacks[str(file)] for file in files_under(AIRFLOW_HOME))
    assert DAG_ID in output
    found = {name: leaks(haystack) for name, haystack in haystacks.items() if leaks(haystack)}
    assert found == {}, f"the API key was found in {sorted(found)}"
