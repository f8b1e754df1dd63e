"""The ``webhook_events`` spec key, from the YAML to the request body the API receives.

Its invalid forms are in the corpus (``tests/specs/invalid/webhook_events_*.yaml``); here a valid
spec is followed through the model, the compiled submit task and a real submit to the emulator,
which keeps each job's body as its ``input``.
"""

from __future__ import annotations

import httpx2
import pytest

from flexflow.client import FluxClient
from flexflow.compiler.dag import compile_spec
from flexflow.compiler.layout import task_layout
from flexflow.contract import wire
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer
from flexflow.spec import Spec, parse_spec

HOOK = "https://hooks.example.com/flexflow"  # not loopback: the emulator records it and delivers nothing
SPEC = f"""\
version: 1
dag_id: webhook_events_demo
defaults:
  flux: {{resolution: 0.5MP, output_format: png}}
  webhook_url: {HOOK}
  webhook_events: [completed, failed]
images:
  - name: hero
    prompt: "Hero banner, bold type"
    webhook_events: [progress, completed]
  - name: square
    prompt: "Square tile"
  - name: quiet
    prompt: "No webhook here"
    webhook_url: https://hooks.example.com/other
  - name: detail
    prompt: "Macro detail"
    variants: {{seed: [1, 2]}}
publish:
  to: "file:///tmp/flexflow/webhook_events_demo"
  filename: "{{image}}{{variant}}.{{ext}}"
"""
PLAIN = """\
version: 1
dag_id: webhook_plain
images:
  - name: hero
    prompt: "Hero banner, bold type"
    webhook_url: https://hooks.example.com/flexflow
publish:
  to: "file:///tmp/flexflow/webhook_plain"
"""


@pytest.fixture(scope="module")
def spec() -> Spec:
    return parse_spec(SPEC, "webhook_events_demo.yaml")


def submit_body(spec: Spec, image: str) -> dict[str, object]:
    """The body the compiled submit task of ``image`` would send (its prompt holds no template)."""
    task = compile_spec(spec).get_task(f"{image}.submit")
    return task.build_request()  # type: ignore[no-any-return, attr-defined]


def test_an_image_takes_its_own_events_else_the_defaults(spec: Spec) -> None:
    events = {image.name: image.webhook_events for image in spec.images}
    assert events == {
        "hero": ("progress", "completed"),
        "square": ("completed", "failed"),
        "quiet": ("completed", "failed"),
        "detail": ("completed", "failed"),
    }
    assert parse_spec(PLAIN, "plain.yaml").images[0].webhook_events is None


def test_the_plan_passes_the_events_to_the_submit_task(spec: Spec) -> None:
    submits = {task.image: task.arguments for task in task_layout(spec).tasks if task.kind == "submit"}
    assert submits["hero"]["webhook_events"] == ["progress", "completed"]
    assert submits["square"]["webhook_events"] == ["completed", "failed"]
    plain = task_layout(parse_spec(PLAIN, "plain.yaml"))
    assert [t.arguments["webhook_events"] for t in plain.tasks if t.kind == "submit"] == [None]


def test_the_request_body_carries_the_events_beside_the_url(spec: Spec) -> None:
    hero = submit_body(spec, "hero")
    assert hero[wire.WEBHOOK_URL_FIELD] == HOOK
    assert hero[wire.WEBHOOK_EVENTS_FIELD] == ["progress", "completed"]
    mapped = compile_spec(spec).get_task("detail.submit")  # its flux is filled per variant at run time
    assert mapped.webhook_events == ["completed", "failed"]  # type: ignore[attr-defined]


def test_without_the_key_the_body_is_as_before() -> None:
    """No webhookEvents sent: the API's default applies, and the Idempotency-Key (a hash of the body) is unchanged."""
    body = submit_body(parse_spec(PLAIN, "plain.yaml"), "hero")
    assert wire.WEBHOOK_EVENTS_FIELD not in body
    assert set(body) == {"prompt", "model", wire.PARAMS_FIELD, wire.WEBHOOK_URL_FIELD}


def test_the_api_receives_the_events(spec: Spec, client: FluxClient, emulator: EmulatorServer) -> None:
    job_id = client.submit(submit_body(spec, "hero"), "webhook-events")
    response = httpx2.get(f"{emulator.url}{wire.job_path(job_id)}", headers={wire.API_KEY_HEADER: DEFAULT_TEST_KEY})
    received = response.json()["input"]
    assert received[wire.WEBHOOK_URL_FIELD] == HOOK
    assert received[wire.WEBHOOK_EVENTS_FIELD] == ["progress", "completed"]
    assert emulator.accounting()["jobs_created"] == 1
