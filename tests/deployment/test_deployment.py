"""flexflow in a real Airflow deployment: every service a separate process, driven through the REST API.

One deployment per configuration (module scope), shared by the tests below:

- ``local``: LocalExecutor on SQLite (what ``airflow standalone`` runs); needs nothing installed.
- ``celery``: CeleryExecutor, PostgreSQL metadata database, Redis broker, two Celery workers;
  skipped (saying why) when PostgreSQL on 127.0.0.1:5432 or Redis on :6379 is not reachable.

The specs are written for these tests; the emulator stands in for the API, and its accounting says
what was submitted and billed. ``FLEXFLOW_DEPLOY_REPORT=path.json`` writes what was measured;
``FLEXFLOW_DEPLOY_KEEP=1`` keeps each deployment's AIRFLOW_HOME (service and task logs) for a look.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from flexflow.contract import output_size
from flexflow.deploy.harness import Deployment, ServicesUnavailable, services_available, wait_until
from flexflow.spec import load_spec

pytestmark = pytest.mark.deployment

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
    # One job, for the failure and worker-kill tests.
    "deploy_single": """
images:
  - name: hero
    prompt: "A hero image of a mountain lake"
""",
}


def write_specs(folder: Path, publish_root: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for dag_id, images in SPECS.items():
        text = (
            f"version: 1\ndag_id: {dag_id}\nschedule: null\n" + images + COMMON.format(root=publish_root, dag_id=dag_id)
        )
        files[dag_id] = folder / f"{dag_id}.yaml"
        files[dag_id].write_text(text)
    return files


@pytest.fixture(scope="module", params=["local", "celery"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    config = request.param
    if config == "celery" and (problem := services_available()):
        pytest.skip(f"Celery configuration skipped: {problem}")
    root = tmp_path_factory.mktemp(f"deploy-{config}")
    write_specs(root / "specs", root / "published")
    started = time.monotonic()
    deployment = Deployment(
        config,
        specs_dir=root / "specs",
        workers=WORKERS,
        parallelism=PARALLELISM,
        worker_concurrency=WORKER_CONCURRENCY,
        processing_seconds=10.0,
        keep_home=bool(os.environ.get("FLEXFLOW_DEPLOY_KEEP")),
    )
    try:
        deployment.start()
    except ServicesUnavailable as exc:  # e.g. PostgreSQL answers but refuses to create a database
        pytest.skip(f"Celery configuration skipped: {exc}")
    redis_db = deployment.redis_db
    try:
        measured(deployment)["startup_seconds"] = round(deployment.timings["startup"], 1)
        # Unpause the DAGs through the REST API, as an operator would (they arrive paused).
        for dag in deployment.api.dags():
            PAUSED_AT_START[(config, dag["dag_id"])] = dag["is_paused"]
            deployment.api.unpause(dag["dag_id"])
        yield deployment
    finally:
        deployment.stop()
    measured(deployment)["module_seconds"] = round(time.monotonic() - started, 1)
    measured(deployment)["teardown"] = {k: v for k, v in deployment.timings.items() if k.startswith("stop ")}
    assert deployment.remaining_processes() == [], "a process of the deployment outlived its teardown"
    assert deployment.leftovers == [], f"processes escaped their service's process group: {deployment.leftovers}"
    if config == "celery":
        assert_databases_cleaned(deployment, redis_db)
    report = os.environ.get("FLEXFLOW_DEPLOY_REPORT")
    if report:
        Path(report).write_text(json.dumps(MEASURED, indent=2) + "\n")


def assert_databases_cleaned(deployment: Deployment, redis_db: int | None) -> None:
    import psycopg2
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=redis_db or 0)
    try:
        assert list(client.scan_iter(f"*{deployment.id}*")) == [], "Redis keys of the deployment outlived it"
    finally:
        client.close()

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (deployment.database,))
            assert cursor.fetchone() is None, f"database {deployment.database} was not dropped"
    finally:
        connection.close()


@pytest.fixture
def emulator(deployment: Deployment) -> Any:
    """The deployment's emulator with no jobs, no faults and its default job durations."""
    assert deployment.emulator is not None
    deployment.emulator.reset()
    deployment.emulator.configure(queue_seconds=1.0, processing_seconds=10.0)
    return deployment.emulator


# -- helpers ------------------------------------------------------------------------------------------------


def measured(deployment: Deployment) -> dict[str, Any]:
    return MEASURED.setdefault(deployment.config, {})


def spec_file(deployment: Deployment, dag_id: str) -> Path:
    return deployment.specs_dir / f"{dag_id}.yaml"


def trigger(deployment: Deployment, dag_id: str, **conf: Any) -> str:
    return str(deployment.api.trigger(dag_id, conf=conf)["dag_run_id"])


def finish(deployment: Deployment, dag_id: str, run_id: str, timeout: float = 240.0) -> str:
    return deployment.api.wait_for_run(dag_id, run_id, timeout=timeout, check=deployment.check_alive)


def waits(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [ti for ti in tis if ti["task_id"].endswith(".wait")]


def wait_until_deferred(deployment: Deployment, dag_id: str, run_id: str, count: int, timeout: float) -> None:
    """Until ``count`` wait tasks are deferred at once (while every job of the run still runs)."""
    assert deployment.emulator is not None
    emulator = deployment.emulator

    def deferred() -> bool:
        return sum(ti["state"] == "deferred" for ti in waits(deployment.api.task_instances(dag_id, run_id))) == count

    def jobs_still_running() -> None:
        deployment.check_alive()
        ended = {k: v for k, v in emulator.accounting()["jobs_by_status"].items() if k not in ("QUEUED", "PROCESSING")}
        assert not ended, f"jobs ended ({ended}) before {count} waits deferred: make the emulator's jobs longer"

    wait_until(deferred, timeout, f"{count} deferred wait tasks of {run_id}", interval=0.5, check=jobs_still_running)


def assert_waits_hold_no_slot(deployment: Deployment, dag_id: str, run_id: str, count: int) -> dict[str, Any]:
    """All ``count`` waits deferred, and neither the pool nor an executor slot nor a process is held for them."""
    before = deployment.api.task_instances(dag_id, run_id)
    pool = deployment.api.pool("default_pool")
    processes = deployment.task_processes()
    after = deployment.api.task_instances(dag_id, run_id)
    for snapshot in (before, after):
        assert [ti["state"] for ti in waits(snapshot)] == ["deferred"] * count
    active = {ti["id"] for ti in before + after if ti["state"] in ("running", "queued")}
    assert pool["deferred_slots"] >= count, pool
    assert pool["occupied_slots"] <= len(active), f"deferred tasks take no pool slot: {pool}"
    assert len(processes) <= len(active), "no task process runs for a deferred wait"
    assert count > PARALLELISM or not active, "more tasks wait than the executor has slots"
    return {"pool": pool, "task_processes": len(processes), "other_active_tasks": len(active)}


def check_published(deployment: Deployment, dag_id: str, run_id: str) -> dict[str, Any]:
    """Images, manifest and asset event are where the spec said, as Airflow's REST API reports them."""
    spec = load_spec(spec_file(deployment, dag_id))
    finalized = deployment.api.xcom(dag_id, run_id, "finalize")
    # publish.to is file://<root>/<dag_id>/{{ run_id | replace(':', '_') }}
    folder = deployment.specs_dir.parent / "published" / dag_id / run_id.replace(":", "_")
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
    assert accounting["jobs_created"] == jobs, accounting
    assert accounting["jobs_billed"] == jobs, accounting
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}, accounting
    assert sorted(accounting["submissions_per_key"].values()) == [1] * jobs, "no request was resubmitted"


def slot_seconds(deployment: Deployment, tis: list[dict[str, Any]]) -> dict[str, float]:
    """Executor slot-seconds per task kind (submit, wait, publish, finalize) of a run's task instances."""
    workloads = deployment.workload_seconds()
    totals: dict[str, float] = {}
    for ti in tis:
        kind = ti["task_id"].rsplit(".", 1)[-1]
        for seconds, final_state in workloads.get(ti["id"], []):
            label = f"{kind} ({final_state})" if kind == "wait" else kind
            totals[label] = totals.get(label, 0.0) + seconds
    return {kind: round(seconds, 2) for kind, seconds in totals.items()}


# -- the tests ----------------------------------------------------------------------------------------------


def test_services_are_separate_healthy_processes(deployment: Deployment) -> None:
    health = deployment.api.health()
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health
    names = ["emulator", "api-server", "scheduler", "dag-processor", "triggerer"]
    if deployment.config == "celery":
        names += [f"worker-{n}" for n in range(1, WORKERS + 1)]
    pids = [deployment.service(name).pid for name in names]
    assert len(set(pids)) == len(pids) and all(deployment.service(name).alive() for name in names)
    assert deployment.api.import_errors() == []
    dags = {dag["dag_id"]: dag for dag in deployment.api.dags()}
    assert set(dags) == set(SPECS)
    assert all(PAUSED_AT_START[(deployment.config, dag_id)] for dag_id in SPECS), "DAGs arrive paused"
    assert not any(dag["is_paused"] for dag in dags.values()), "the fixture unpaused them through the REST API"
    for dag in dags.values():
        assert {tag["name"] for tag in dag["tags"]} == {"flexflow"}, f"{dag['dag_id']} compiled from a valid spec"


def test_a_run_publishes_everything_while_waits_hold_no_slot(deployment: Deployment, emulator: Any) -> None:
    run_id = trigger(deployment, "deploy_smoke")
    wait_until_deferred(deployment, "deploy_smoke", run_id, 3, timeout=120)
    slots = assert_waits_hold_no_slot(deployment, "deploy_smoke", run_id, 3)
    assert finish(deployment, "deploy_smoke", run_id) == "success", deployment.api.task_states("deploy_smoke", run_id)
    manifest = check_published(deployment, "deploy_smoke", run_id)
    assert_one_billed_job_per_image(emulator.accounting(), 3)
    assert {f["prompt"] for f in manifest["files"] if f["image"] == "poster"} == {"Poster of a lighthouse at dusk"}
    measured(deployment)["smoke"] = {"while_waiting": slots}


def test_killing_the_triggerer_while_twenty_jobs_wait_resubmits_nothing(deployment: Deployment, emulator: Any) -> None:
    # Long enough that the last of 20 waits defers while the first job still runs (that took 15 s
    # with the LocalExecutor, 31 s with Celery on 2 cores); a job that ends sooner fails the test.
    emulator.configure(processing_seconds=60.0)
    dag_id = "deploy_twenty"
    idle_rss = deployment.rss_bytes("triggerer")
    started = time.monotonic()
    run_id = trigger(deployment, dag_id)
    wait_until_deferred(deployment, dag_id, run_id, 20, timeout=150)
    all_deferred = time.monotonic() - started
    slots = assert_waits_hold_no_slot(deployment, dag_id, run_id, 20)
    triggerer_rss = deployment.rss_bytes("triggerer")

    deployment.kill("triggerer")  # SIGKILL: no chance to hand its triggers over
    killed = deployment.api.task_states(dag_id, run_id)
    assert sum(state == "deferred" for task, state in killed.items() if ".wait" in task) == 20
    deployment.start_triggerer()

    assert finish(deployment, dag_id, run_id, timeout=240) == "success", deployment.api.task_states(dag_id, run_id)
    elapsed = time.monotonic() - started
    check_published(deployment, dag_id, run_id)
    accounting = emulator.accounting()
    assert_one_billed_job_per_image(accounting, 20)
    tis = deployment.api.task_instances(dag_id, run_id)
    assert {ti["try_number"] for ti in tis if ti["task_id"].endswith(".submit")} == {1}, "no submit ran again"
    polls = sorted(accounting["polls_per_job"].values())
    measured(deployment)["twenty"] = {
        "wall_seconds": round(elapsed, 1),
        "seconds_until_20_deferred": round(all_deferred, 1),
        "while_waiting": slots,
        "triggerer_rss_mb": {"idle": round(idle_rss / 2**20, 1), "20_triggers": round(triggerer_rss / 2**20, 1)},
        "triggerer_processes": 1 + len(deployment.service("triggerer").process_tree()),
        "polls_per_job": {"min": polls[0], "max": polls[-1], "mean": round(sum(polls) / len(polls), 1)},
        "slot_seconds_per_kind": slot_seconds(deployment, tis),
        "wait_task_seconds": round(sum(ti["duration"] or 0 for ti in waits(tis)), 1),
    }


def test_a_failed_job_fails_its_task_with_the_api_error_and_clearing_resubmits(
    deployment: Deployment, emulator: Any
) -> None:
    emulator.configure(processing_seconds=6.0)
    emulator.add_faults({"fault": "fail", "count": 1})
    dag_id = "deploy_single"
    run_id = trigger(deployment, dag_id)
    assert finish(deployment, dag_id, run_id) == "failed"
    states = deployment.api.task_states(dag_id, run_id)
    assert states["hero.wait"] == "failed" and states["hero.publish"] == "upstream_failed", states
    assert states["finalize"] == "failed", "no manifest and no asset event for a failed run"
    assert deployment.api.asset_events(source_dag_id=dag_id, source_run_id=run_id) == []

    [job] = emulator.accounting()["polls_per_job"]
    error = emulator.job(job)["error"]
    assert error and error.startswith("Provider error")
    [wait] = [ti for ti in deployment.api.task_instances(dag_id, run_id) if ti["task_id"] == "hero.wait"]
    log = deployment.api.task_log(dag_id, run_id, "hero.wait", wait["try_number"])
    assert error in log, "the API's error text is in the task log"
    assert "clear the submit task" in log

    deployment.api.clear_task_instances(
        dag_id, dag_run_id=run_id, task_ids=["hero.submit"], include_downstream=True, only_failed=False
    )
    assert finish(deployment, dag_id, run_id) == "success", deployment.api.task_states(dag_id, run_id)
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 2, "clearing the submit task submitted a new job deliberately"
    assert accounting["jobs_billed"] == 1, "the failed job is not billed"
    assert sorted(accounting["submissions_per_key"].values()) == [1, 1], "the new job has a new Idempotency-Key"
    new_job = deployment.api.xcom(dag_id, run_id, "hero.submit")
    assert new_job != job
    check_published(deployment, dag_id, run_id)


@pytest.mark.parametrize("deployment", ["celery"], indirect=True)  # workers exist in the celery configuration only
def test_killing_a_celery_worker_mid_submit_reconnects_to_the_same_job(deployment: Deployment, emulator: Any) -> None:
    # The first submit attempt creates the job but its response is lost; the client retries with
    # the same Idempotency-Key, and that retry is held at the emulator while the worker is killed.
    emulator.add_faults(
        {"fault": "lost_response", "count": 1, "route": "submit"},
        {"fault": "slow", "count": 1, "route": "submit", "delay": 15},
    )
    dag_id = "deploy_single"
    run_id = trigger(deployment, dag_id)

    def held() -> bool:
        accounting = emulator.accounting()
        return accounting["jobs_created"] == 1 and accounting["faults_injected"].get("slow") == 1

    wait_until(held, 120, "the submit's retry to be held at the emulator", interval=0.2, check=deployment.check_alive)
    [created] = emulator.accounting()["polls_per_job"]
    [submit] = [ti for ti in deployment.api.task_instances(dag_id, run_id) if ti["task_id"] == "hero.submit"]
    assert submit["state"] == "running" and submit["try_number"] == 1
    worker = deployment.service_of(submit["pid"]) if submit["pid"] else None
    assert worker is not None and worker.name.startswith("worker-"), f"no worker runs pid {submit['pid']}"
    killed_at = time.monotonic()
    deployment.kill(worker.name.split("#")[0])
    deployment.start_worker()

    assert finish(deployment, dag_id, run_id, timeout=240) == "success", deployment.api.task_states(dag_id, run_id)
    [submit] = [ti for ti in deployment.api.task_instances(dag_id, run_id) if ti["task_id"] == "hero.submit"]
    assert submit["try_number"] == 2, "the killed try was retried"
    assert deployment.api.xcom(dag_id, run_id, "hero.submit") == created, "the retry reconnected to the same job"
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1 and accounting["jobs_billed"] == 1, accounting
    assert len(accounting["submissions_per_key"]) == 1, "every attempt carried the same Idempotency-Key"
    check_published(deployment, dag_id, run_id)
    measured(deployment)["worker_kill"] = {"recovered_seconds": round(time.monotonic() - killed_at, 1)}


@pytest.mark.parametrize("deployment", ["local"], indirect=True)  # the race needs the LocalExecutor
def test_a_wait_whose_job_already_ended_neither_defers_nor_fails_spuriously(
    deployment: Deployment, emulator: Any
) -> None:
    """FAILS with flexflow as it is: FluxJobSensor defers even when its job has already ended.

    The trigger's first poll is immediate, so the task is back in ``scheduled``/``queued`` a second
    or two after deferring. With Airflow's default ``[workers] min_heartbeat_interval`` (5 s) the
    LocalExecutor often reports the deferring try's exit ("success") only after that, and Airflow
    3.3.2's scheduler then fails the re-queued try ("finished with state success, but the task
    instance's state attribute is queued"). Each such wait loses a try; with ``retries: 0`` the run
    fails although every job completed and was billed (here 1 to 13 of 20 waits per run). Fix:
    in ``FluxJobSensor.execute`` poll the job once before ``self.defer`` and return
    ``execute_complete`` at once when it is terminal (0 of 40 waits failed with that change).
    """
    emulator.configure(queue_seconds=0.0, processing_seconds=0.0)  # each job has ended before its wait starts
    deployment.restart("scheduler", env={"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5"})  # Airflow's default
    dag_id = "deploy_noretry"
    try:
        run_id = trigger(deployment, dag_id)
        state = finish(deployment, dag_id, run_id)
        log = deployment.service("scheduler").log_path.read_text(errors="replace")
        mismatches = log.count("finished with state success, but the task instance's state attribute is")
        tis = deployment.api.task_instances(dag_id, run_id)
        failed = sorted(f"{ti['task_id']}[{ti['map_index']}]" for ti in tis if ti["state"] == "failed")
        assert (state, mismatches) == ("success", 0), (
            f"run {state}; {mismatches} tries failed by the executor-event race; failed: {failed}"
        )
        assert_one_billed_job_per_image(emulator.accounting(), 20)
        deferred = [
            f"{ti['task_id']}[{ti['map_index']}]"
            for ti in waits(tis)
            if "Pausing task as DEFERRED" in deployment.api.task_log(dag_id, run_id, ti["task_id"], 1, ti["map_index"])
        ]
        assert deferred == [], f"waits deferred for jobs that had already ended: {deferred}"
    finally:
        deployment.restart("scheduler")
