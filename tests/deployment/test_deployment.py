"""flexflow in a real Airflow deployment: every service a separate process, driven through the REST API.

The deployments (``local`` and ``celery``) come from conftest.py; the specs and helpers from helpers.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flexflow.spec import load_spec
from tests.airflow_helpers import clear_publish_root
from tests.deployment.harness.deployment import Deployment
from tests.deployment.harness.measure import rss_bytes, slot_seconds, task_processes
from tests.deployment.harness.rest import TERMINAL_RUN_STATES
from tests.deployment.harness.waiting import wait_until
from tests.deployment.helpers import (
    BROKEN_PROBLEM,
    BROKEN_SPECS,
    EXAMPLES,
    PAUSED_AT_START,
    POOL_SPECS,
    SPECS,
    WORKERS,
    assert_one_billed_job_per_image,
    assert_waits_hold_no_slot,
    check_published,
    finish,
    measured,
    published_folder,
    spec_file,
    trigger,
    wait_until_deferred,
    wait_until_parked,
    waits,
)

pytestmark = pytest.mark.deployment


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
    assert set(dags) == set(SPECS) | set(BROKEN_SPECS) | set(EXAMPLES), "a broken spec hides no other DAG"
    assert all(PAUSED_AT_START[(deployment.config, dag_id)] for dag_id in dags), "DAGs arrive paused"
    assert not any(dags[dag_id]["is_paused"] for dag_id in SPECS), "the fixture unpaused them through the REST API"
    for dag_id, dag in dags.items():
        tags = {tag["name"] for tag in dag["tags"]}
        assert {"flexflow", "invalid"} & tags == ({"flexflow", "invalid"} if dag_id in BROKEN_SPECS else {"flexflow"})
    assert BROKEN_PROBLEM in dags["deploy_broken"]["description"], "the DAG list says what is wrong"


def test_a_run_publishes_everything_while_waits_hold_no_slot(deployment: Deployment, emulator: Any) -> None:
    run_id = trigger(deployment, "deploy_smoke")
    wait_until_deferred(deployment, "deploy_smoke", run_id, 3, timeout=120)
    slots = assert_waits_hold_no_slot(deployment, "deploy_smoke", run_id, 3)
    assert finish(deployment, "deploy_smoke", run_id) == "success", deployment.api.task_states("deploy_smoke", run_id)
    manifest = check_published(deployment, "deploy_smoke", run_id)
    assert_one_billed_job_per_image(emulator.accounting(), 3)
    assert {f["prompt"] for f in manifest["files"] if f["image"] == "poster"} == {"Poster of a lighthouse at dusk"}
    measured(deployment)["smoke"] = {"while_waiting": slots}


def test_the_example_specs_run_as_deployed(deployment: Deployment, emulator: Any) -> None:
    """The project's specs/, unpaused through the REST API: scheduled ones start their latest interval's
    run (``catchup: false``), unscheduled ones are triggered; every run publishes what its spec says."""
    emulator.configure(processing_seconds=3.0)
    for spec in EXAMPLES.values():
        clear_publish_root(spec)
    api = deployment.api
    runs: dict[str, str] = {}
    try:
        for dag_id in EXAMPLES:
            api.unpause(dag_id)
            if EXAMPLES[dag_id].schedule is None:
                runs[dag_id] = trigger(deployment, dag_id)
            else:
                runs[dag_id] = wait_until(
                    lambda dag_id=dag_id: next(iter(api.dag_runs(dag_id)), {}).get("dag_run_id"),
                    60,
                    f"the scheduler to start a run of {dag_id}",
                )
        states = {dag_id: finish(deployment, dag_id, run_id) for dag_id, run_id in runs.items()}
    finally:  # no run of theirs goes on (and bills) while the other tests count jobs
        for dag_id in EXAMPLES:
            api.pause(dag_id)
            for run in api.dag_runs(dag_id):
                if run["state"] not in TERMINAL_RUN_STATES:
                    api.set_run_state(dag_id, run["dag_run_id"], "failed")
    assert states == dict.fromkeys(EXAMPLES, "success"), {d: api.task_states(d, r) for d, r in runs.items()}
    assert any(run.startswith("scheduled__") for run in runs.values()), "a scheduled example ran on its schedule"
    for dag_id, run_id in runs.items():
        check_published(deployment, dag_id, run_id)
    jobs = sum(spec.job_count for spec in EXAMPLES.values())
    # A cron boundary of a scheduled example (midnight for @daily) may pass while the test runs: the
    # scheduler then starts a second run, rightly, which the finally above stopped. Its jobs are its own
    # logical requests, so they are counted as such; the guarantee tested is the same either way.
    boundary_runs = {dag_id: [r["dag_run_id"] for r in api.dag_runs(dag_id)] for dag_id in EXAMPLES}
    boundary_runs = {dag_id: [r for r in found if r != runs[dag_id]] for dag_id, found in boundary_runs.items()}
    accounting = emulator.accounting()
    if not any(boundary_runs.values()):
        assert_one_billed_job_per_image(accounting, jobs)
        return
    most = jobs + sum(len(extra) * EXAMPLES[dag_id].job_count for dag_id, extra in boundary_runs.items())
    assert accounting["duplicates"]["by_key"] == {}, accounting
    assert all(count == 1 for count in accounting["submissions_per_key"].values()), accounting
    assert jobs <= accounting["jobs_billed"] <= most, (boundary_runs, accounting)


def test_killing_the_triggerer_while_twenty_jobs_wait_resubmits_nothing(deployment: Deployment, emulator: Any) -> None:
    # Long enough that the last of 20 waits defers while the first job still runs (that took 15 s
    # with the LocalExecutor, 31 s with Celery on 2 cores); a job that ends sooner fails the test.
    emulator.configure(processing_seconds=60.0)
    dag_id = "deploy_twenty"
    idle_rss = rss_bytes(deployment.service("triggerer"))
    started = time.monotonic()
    run_id = trigger(deployment, dag_id)
    wait_until_deferred(deployment, dag_id, run_id, 20, timeout=150)
    all_deferred = time.monotonic() - started
    slots = assert_waits_hold_no_slot(deployment, dag_id, run_id, 20)
    triggerer_rss = rss_bytes(deployment.service("triggerer"))

    deployment.kill("triggerer")  # SIGKILL: no chance to hand its triggers over
    killed = deployment.api.task_states(dag_id, run_id)
    assert (
        sum(state == "deferred" for task, state in killed.items() if task.split("[")[0].endswith((".submit", ".wait")))
        == 20
    )
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
        "slot_seconds_per_kind": slot_seconds(deployment.services, tis),
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
    deployment.kill(worker.role)
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


def test_of_two_runs_triggered_together_a_per_day_cap_lets_one_through(deployment: Deployment, emulator: Any) -> None:
    """The day allows one run: of two manual runs (no logical date) triggered at once, one publishes and the
    other is refused in prepare, submitting nothing; their prepares run one at a time (max_active_tis_per_dag).
    Should a UTC midnight fall between the two triggers, each run has a day of its own."""
    emulator.configure(processing_seconds=1.0)
    dag_id = "deploy_daily_budget"
    runs = [trigger(deployment, dag_id) for _ in range(2)]
    states = [finish(deployment, dag_id, run_id) for run_id in runs]
    days = {str(deployment.api.dag_run(dag_id, run_id)["run_after"])[:10] for run_id in runs}
    billed = emulator.accounting()["jobs_billed"]
    if len(days) == 2:
        assert (states, billed) == (["success", "success"], 2), days
        return
    assert sorted(states) == ["failed", "success"], {r: deployment.api.task_states(dag_id, r) for r in runs}
    refused = runs[states.index("failed")]
    assert deployment.api.task_states(dag_id, refused)["prepare"] == "failed"
    assert billed == 1, "the refused run submitted nothing"
    log = deployment.api.task_log(dag_id, refused, "prepare", 1)
    assert "is over budget: estimated at 10 credits, over budget.credits_per_day 5 credits" in log


def test_twenty_specs_at_once_never_have_more_jobs_in_flight_than_the_pool(
    deployment: Deployment, emulator: Any
) -> None:
    # The API's limit (the emulator answers 429 beyond it) and the pool are both ten jobs.
    emulator.configure(max_concurrent_jobs=10, queue_seconds=0.5, processing_seconds=3.0)
    slots = deployment.pool_slots
    deployment.set_pool(10)
    try:
        runs = {dag_id: trigger(deployment, dag_id) for dag_id in POOL_SPECS}
        for dag_id, run_id in runs.items():
            state = finish(deployment, dag_id, run_id, timeout=300)
            assert state == "success", deployment.api.task_states(dag_id, run_id)
            check_published(deployment, dag_id, run_id)
    finally:
        deployment.set_pool(slots)
        emulator.configure(max_concurrent_jobs=None)
    accounting = emulator.accounting()
    assert accounting["rate_limited_submits"] == 0, "the pool kept every submit under the API's limit"
    assert 1 < accounting["peak_in_flight"] <= 10, accounting
    assert_one_billed_job_per_image(accounting, 20)
    measured(deployment)["pool_of_ten"] = {"peak_in_flight": accounting["peak_in_flight"], "specs": len(runs)}


def test_a_reviewed_run_waits_parked_for_approval_and_a_rejected_one_publishes_nothing(
    deployment: Deployment, emulator: Any
) -> None:
    """``publish.review: required``: the images wait in the staging folder while the review task is parked in
    ``awaiting_input`` (no executor slot, no process), answered through Airflow's REST API as the Required
    Actions form answers it. Approved: promoted and published. Rejected: nothing published, and the run says
    who rejected it and why. Either way one billed job per image, nothing billed for the review."""
    dag_id = "deploy_review"
    spec = load_spec(spec_file(deployment, dag_id))
    approved, rejected = trigger(deployment, dag_id), trigger(deployment, dag_id)
    for run_id in (approved, rejected):
        try:
            wait_until_parked(deployment, dag_id, run_id, "review")
        except TimeoutError as exc:
            raise AssertionError(deployment.api.task_states(dag_id, run_id)) from exc
    active = [
        ti
        for run_id in (approved, rejected)
        for ti in deployment.api.task_instances(dag_id, run_id)
        if ti["state"] in ("running", "queued")
    ]
    assert active == [], "nothing of either run runs or queues while they wait for a person"
    assert task_processes(deployment.executor_services()) == [], "no task process holds an executor slot"
    for run_id in (approved, rejected):
        folder = published_folder(spec, deployment.api.dag_run(dag_id, run_id))
        assert sorted(p.name for p in folder.iterdir()) == [".flexflow-staging"], "nothing published yet"
        staged = deployment.api.xcom(dag_id, run_id, "review", key="staging")
        assert sorted(p.name for p in Path(urlsplit(staged["folder"]).path).iterdir()) == sorted(
            ["banner.png", "square.png", "manifest.json", "index.html"]
        )

    deployment.api.respond(dag_id, approved, "review", "Approve", {"reason": "on brand"})
    deployment.api.respond(dag_id, rejected, "review", "Reject", {"reason": "the boat is too small"})
    assert finish(deployment, dag_id, approved) == "success", deployment.api.task_states(dag_id, approved)
    assert finish(deployment, dag_id, rejected) == "failed", deployment.api.task_states(dag_id, rejected)

    manifest = check_published(deployment, dag_id, approved)
    assert len(manifest["files"]) == 2
    folder = published_folder(spec, deployment.api.dag_run(dag_id, rejected))
    assert sorted(p.name for p in folder.iterdir()) == [".flexflow-staging"], "the rejected run published nothing"
    assert deployment.api.asset_events(source_dag_id=dag_id, source_run_id=rejected) == []
    assert deployment.api.task_states(dag_id, rejected)["review"] == "success", "a person answered"
    log = deployment.api.task_log(dag_id, rejected, "finalize", 1)
    assert "rejected by admin: 'the boat is too small'" in log, log[-2000:]
    assert "Nothing was published" in log
    accounting = emulator.accounting()
    # Two runs of one spec with fixed seeds, started together: the same two bodies, each run paying for its own.
    assert accounting["jobs_created"] == accounting["jobs_billed"] == 4, "one billed job per image, per run"
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 2}, "no submission was repeated"
