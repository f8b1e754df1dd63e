"""What the deployment tests share: their specs, and helpers over the REST API and the emulator.

The specs are written for these tests; the emulator stands in for the API, and its accounting says
what was submitted and billed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from PIL import Image

from flexflow.contract import output_size
from flexflow.defaults import POOL
from flexflow.spec import Spec, load_spec
from tests.deployment.harness.billing import billing_problems
from tests.deployment.harness.deployment import Deployment
from tests.deployment.harness.measure import task_processes
from tests.deployment.harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

PARALLELISM = 4  # executor slots: LocalExecutor processes, or the scheduler's cap with Celery
WORKERS, WORKER_CONCURRENCY = 2, 2  # Celery: 2 workers x 2 slots
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
MEASURED: dict[str, dict[str, Any]] = {}
PAUSED_AT_START: dict[tuple[str, str], bool] = {}

COMMON = """
defaults:
  flux: {{resolution: 1MP, output_format: png}}
  retries: 2
  retry_delay: 5s
  poll_interval: 1s
  timeout: 10m
publish:
  to: "file://{root}/{dag_id}/{{{{ run_id | replace(':', '_') }}}}"
  filename: "{{image}}{{variant}}.{{ext}}"
  manifest: true
  asset: flexflow://{dag_id}
"""
SPECS = {
    # An ordinary run: one single image, one with variants.
    "deploy_smoke": """
params: {subject: lighthouse}
images:
  - name: poster
    prompt: "Poster of a {{ params.subject }} at dusk"
    flux: {aspect_ratio: "3:4", seed: 3}
  - name: tile
    prompt: "Square tile with a wave pattern"
    flux: {output_format: jpg}
    variants: {seed: [1, 2]}
""",
    # Twenty jobs waiting at once: 4 images x 5 seeds.
    "deploy_twenty": "images:\n"
    + "".join(
        f'  - name: {name}\n    prompt: "{name} banner, flat colours"\n    variants: {{seed: [1, 2, 3, 4, 5]}}\n'
        for name in ("north", "south", "east", "west")
    ),
    # Twenty jobs whose tasks may not retry.
    "deploy_noretry": "images:\n"
    + "".join(
        f'  - name: {name}\n    prompt: "{name} icon"\n    retries: 0\n    variants: {{seed: [1, 2, 3, 4, 5]}}\n'
        for name in ("up", "down", "left", "right")
    ),
    # One 1MP job a run (5 credits), and a day's budget of one run: two runs triggered together.
    "deploy_daily_budget": """
images:
  - name: badge
    prompt: "A round badge with a star"
budget: {credits_per_day: 5}
""",
    # Two images approved, or not, by a person before they are published (publish settings below).
    "deploy_review": """
reuse: false  # each run pays for its own two images, whichever test ran it first
images:
  - name: banner
    prompt: "A wide banner of a harbour at dawn"
    flux: {seed: 11}
  - name: square
    prompt: "A square card with a sailing boat"
    flux: {seed: 12}
""",
    # One job, for the failure and worker-kill tests.
    "deploy_single": """
images:
  - name: hero
    prompt: "A hero image of a mountain lake"
""",
}

#: Twenty one-image specs triggered together against a pool and an API limit of ten jobs in flight.
POOL_SPECS = {
    f"deploy_pool_{n:02d}": f"""
images:
  - name: tile
    prompt: "Pool tile number {n}, flat colours"
    flux: {{resolution: 0.5MP, seed: {n}}}
"""
    for n in range(20)
}
SPECS.update(POOL_SPECS)

#: A spec that fails validation: it must show up as a DAG tagged ``invalid``, not hide the others.
BROKEN_SPECS = {
    "deploy_broken": """
images:
  - name: hero
    prompt: "A hero image"
    flux: {guidance: 12}
""",
}
BROKEN_PROBLEM = "images[0].flux.guidance: must be a number from 1.5 to 10 in steps of 0.1; got 12"


#: Publish settings a spec adds to COMMON's (its last block is ``publish``).
PUBLISH_EXTRA = {"deploy_review": "  review: required\n  review_timeout: 30m\n"}

#: The project's example specs (specs/), shipped into the deployment verbatim: dag_id -> the spec.
EXAMPLES = {spec.dag_id: spec for spec in map(load_spec, sorted((ROOT / "specs").glob("*.yaml")))}


def write_specs(folder: Path, publish_root: Path) -> None:
    """The deployment's specs folder: the tests' own specs, the broken one, and the project's examples."""
    folder.mkdir(parents=True, exist_ok=True)
    for dag_id, images in (SPECS | BROKEN_SPECS).items():
        text = (
            f"version: 1\ndag_id: {dag_id}\nschedule: null\n"
            + images
            + COMMON.format(root=publish_root, dag_id=dag_id)
            + PUBLISH_EXTRA.get(dag_id, "")
        )
        (folder / f"{dag_id}.yaml").write_text(text)
    for spec in EXAMPLES.values():
        shutil.copyfile(spec.path, folder / Path(spec.path).name)


# -- helpers over the REST API and the emulator ------------------------------------------------------


def measured(deployment: Deployment) -> dict[str, Any]:
    return MEASURED.setdefault(deployment.config, {})


def spec_file(deployment: Deployment, dag_id: str) -> Path:
    return deployment.specs_dir / (Path(EXAMPLES[dag_id].path).name if dag_id in EXAMPLES else f"{dag_id}.yaml")


def trigger(deployment: Deployment, dag_id: str, **conf: Any) -> str:
    return str(deployment.api.trigger(dag_id, conf=conf)["dag_run_id"])


def finish(deployment: Deployment, dag_id: str, run_id: str, timeout: float = 240.0) -> str:
    return deployment.api.wait_for_run(dag_id, run_id, timeout=timeout, check=deployment.check_alive)


def waits(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ti for ti in tis if ti["task_id"].endswith(".wait")]


def job_tasks(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The submit and wait tasks: a compiled spec's submit defers until its job has ended (docs/spec.md)."""
    return [ti for ti in tis if ti["task_id"].endswith((".submit", ".wait"))]


def wait_until_deferred(deployment: Deployment, dag_id: str, run_id: str, count: int, timeout: float) -> None:
    """Until ``count`` job tasks (submit or wait) are deferred at once (while every job of the run still runs)."""
    assert deployment.emulator is not None
    emulator = deployment.emulator

    def deferred() -> bool:
        tis = job_tasks(deployment.api.task_instances(dag_id, run_id))
        return sum(ti["state"] == "deferred" for ti in tis) == count

    def jobs_still_running() -> None:
        deployment.check_alive()
        ended = {k: v for k, v in emulator.accounting()["jobs_by_status"].items() if k not in ("QUEUED", "PROCESSING")}
        assert not ended, f"jobs ended ({ended}) before {count} waits deferred: make the emulator's jobs longer"

    wait_until(deferred, timeout, f"{count} deferred wait tasks of {run_id}", interval=0.5, check=jobs_still_running)


def wait_until_parked(deployment: Deployment, dag_id: str, run_id: str, task_id: str, timeout: float = 180) -> None:
    """Until ``task_id`` waits in ``awaiting_input`` and the scheduler has taken in the exit of the process that
    parked it. Answered before that, Airflow 3.3's scheduler reads the parked process's late "success" as a task
    killed behind its back and fails the resumed task (apache/airflow#72716, docs/spec.md): a person never
    answers within that second, a test does."""
    wait_until(
        lambda: deployment.api.task_states(dag_id, run_id).get(task_id) == "awaiting_input",
        timeout,
        f"{run_id}'s {task_id} waits for input",
        check=deployment.check_alive,
    )
    exit_seen = (
        f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
        f"task_id='{task_id}', run_id='{run_id}'"
    )
    wait_until(
        lambda: exit_seen in deployment.service("scheduler").log_path.read_text(errors="replace"),
        timeout,
        f"the scheduler took in the exit of {run_id}'s parked {task_id}",
        check=deployment.check_alive,
    )


def assert_waits_hold_no_slot(deployment: Deployment, dag_id: str, run_id: str, count: int) -> dict[str, Any]:
    """All ``count`` job tasks deferred: each holds a slot of flexflow's pool (that caps jobs in flight),
    but no slot of the default pool, no executor slot and no process."""
    before = deployment.api.task_instances(dag_id, run_id)
    pool = deployment.api.pool(POOL)
    default = deployment.api.pool("default_pool")
    processes = task_processes(deployment.executor_services())
    after = deployment.api.task_instances(dag_id, run_id)
    for snapshot in (before, after):
        assert sum(ti["state"] == "deferred" for ti in job_tasks(snapshot)) == count
    active = {ti["id"] for ti in before + after if ti["state"] in ("running", "queued")}
    assert pool["deferred_slots"] >= count, f"the pool counts deferred tasks: {pool}"
    assert pool["occupied_slots"] <= pool["slots"], pool
    assert default["occupied_slots"] <= len(active), f"deferred tasks take no default pool slot: {default}"
    assert len(processes) <= len(active), "no task process runs for a deferred wait"
    assert count > PARALLELISM or not active, "more tasks wait than the executor has slots"
    return {"pool": pool, "task_processes": len(processes), "other_active_tasks": len(active)}


def published_folder(spec: Spec, run: dict[str, Any]) -> Path:
    """The folder the spec's ``publish.to`` names for this run (as the REST API lists it), rendered here."""
    context = {"run_id": run["dag_run_id"]}
    if run["logical_date"]:
        context["ds"] = run["logical_date"][:10]
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(spec.publish.to).render(context)
    assert rendered.startswith("file://"), "the deployment tests publish to files"
    return Path(urlsplit(rendered).path)


def check_published(deployment: Deployment, dag_id: str, run_id: str) -> dict[str, Any]:
    """Images, manifest and asset event are where the spec said, as Airflow's REST API reports them."""
    spec = load_spec(spec_file(deployment, dag_id))
    finalized = deployment.api.xcom(dag_id, run_id, "finalize")
    folder = published_folder(spec, deployment.api.dag_run(dag_id, run_id))
    manifest_path = folder / "manifest.json"
    assert Path(urlsplit(finalized["manifest"]).path) == manifest_path
    assert finalized["files"] == spec.job_count
    manifest = json.loads(manifest_path.read_text())
    assert (manifest["dag_id"], manifest["run_id"]) == (spec.dag_id, run_id)
    expected = {(image.name, variant.label): image.job_flux(variant) for image, variant, _ in spec.jobs()}
    assert {(f["image"], f["variant"]) for f in manifest["files"]} == set(expected)
    for entry in manifest["files"]:
        flux = expected[(entry["image"], entry["variant"])]
        data = (folder / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        with Image.open(io.BytesIO(data)) as picture:
            assert picture.format == PIL_FORMATS[flux["output_format"]]
            assert picture.size == output_size(flux)
        assert "{{" not in entry["prompt"]
    [event] = deployment.api.asset_events(source_dag_id=spec.dag_id, source_run_id=run_id)
    assert event["uri"].rstrip("/") == spec.publish.asset
    assert event["source_task_id"] == "finalize"
    assert event["extra"]["run_id"] == run_id
    stored = sorted(urlsplit(url).path for url in event["extra"]["files"])
    assert stored == sorted(str(folder / f["name"]) for f in manifest["files"])
    assert sorted(event["extra"]["job_ids"]) == sorted(f["job_id"] for f in manifest["files"])
    return manifest


def assert_one_billed_job_per_image(accounting: dict[str, Any], jobs: int) -> None:
    assert billing_problems(accounting, jobs) == [], accounting
