"""A load run in a real deployment: 200 images across 20 specs, triggered together through the REST API.

What runs
    One deployment from ``tests.deployment.harness`` (``--config local``: LocalExecutor on SQLite;
    ``--config celery``: CeleryExecutor, PostgreSQL, Redis, ``--workers`` Celery workers), every
    Airflow service a separate process on loopback, the emulator as the API (jobs QUEUED
    ``--queue-seconds``, then PROCESSING ``--job-seconds``). Its specs folder holds ``--specs``
    generated specs of ``--images`` jobs each (2 images x variants over ``seed``). Two phases, in
    the same deployment:

    * baseline: one spec triggered alone (``--images`` images);
    * load: every spec triggered together, back to back (``--specs`` x ``--images`` images).

What is measured (each phase)
    wall time         first trigger to the last run's end (every run must succeed)
    slot-s per image  executor slot-seconds of the phase's task instances (the durations of the
                      "Workload finished" lines the task supervisors log: submit, the wait's run
                      until it defers, its run when it resumes, publish, and finalize shared by
                      the run's images), divided by the images
    poke-s per image  the wall time the submit and wait tasks spent from start to end (the submit
                      waits for its job, deferred, holding only its pool slot; the wait then finds
                      the job ended): what they would have held a slot for in poke mode
    triggerer RSS     the triggerer's processes (supervisor, trigger runner, log server), sampled
                      every second: idle before the phase, and the peak during it
    deferred (peak)   the most task instances in state ``deferred`` at one sample (REST API)
    polls per job     the emulator's ``polls_per_job``
    billing           jobs created and billed must both equal the images, every Idempotency-Key
                      submitted once (else the benchmark fails)

Ratios printed: load against baseline (wall time, slot-seconds per image, polls per job, triggerer
RSS), and slot-seconds per image against poke-seconds per image (what deferring saves). Wall times
depend on this machine (2 shared cores): compare the ratios within one invocation.

Run::

    .venv/bin/python benchmarks/deployment_load.py                      # local: about 12 minutes
    .venv/bin/python benchmarks/deployment_load.py --config celery --workers 2
    .venv/bin/python benchmarks/deployment_load.py --specs 4 --images 5 # a quick look
    .venv/bin/python benchmarks/deployment_load.py --json out/load.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from common import ROOT, stage, text_table

sys.path.insert(0, str(ROOT))  # the harness lives in the tests package, which is not installed

from tests.deployment.harness.billing import billing_problems
from tests.deployment.harness.databases import services_available
from tests.deployment.harness.deployment import Deployment
from tests.deployment.harness.measure import rss_bytes, slot_seconds
from tests.deployment.harness.waiting import wait_until

RUN_TIMEOUT = 3600.0  # seconds for the slowest run of a phase: the benchmark always ends


@dataclass
class Phase:
    name: str
    specs: int
    images: int
    wall_seconds: float
    slot_seconds_per_image: float
    slot_seconds_by_kind: dict[str, float]
    poke_seconds_per_image: float
    triggerer_rss_idle_mb: float
    triggerer_rss_peak_mb: float
    deferred_peak: int
    polls_per_job_mean: float
    polls_per_job_max: int
    jobs_billed: int


def write_specs(folder: Path, publish_root: Path, count: int, images: int) -> list[str]:
    """``count`` specs of ``images`` jobs each: 2 images whose seed variants add up to ``images``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    seeds = {"banner": list(range(1, images // 2 + 1)), "tile": list(range(1, images - images // 2 + 1))}
    dag_ids = [f"load_{index:02d}" for index in range(count)]
    for index, dag_id in enumerate(dag_ids):
        spec = {
            "version": 1,
            "dag_id": dag_id,
            "schedule": None,
            "images": [
                {"name": name, "prompt": f"Load test {name} {index}, flat colours", "variants": {"seed": seed}}
                for name, seed in seeds.items()
                if seed
            ],
            "defaults": {"flux": {"resolution": "1MP", "output_format": "png"}, "poll_interval": "2s", "retries": 2},
            "reuse": False,  # the load phase runs the baseline's spec again: it must pay again, not copy
            "publish": {
                "to": f"file://{publish_root}/{dag_id}/{{{{ run_id | replace(':', '_') }}}}",
                "filename": "{image}{variant}.{ext}",
                "asset": f"flexflow://{dag_id}",
            },
        }
        (folder / f"{dag_id}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return dag_ids


class Sampler:
    """Every second, on a thread, while a phase runs: the triggerer's RSS, and how many tasks are deferred."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.rss: list[int] = []
        self.deferred: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.rss.append(rss_bytes(self.deployment.service("triggerer")))
            listed = self.deployment.api.call("GET", "/dags/~/dagRuns/~/taskInstances", state="deferred", limit=1)
            self.deferred.append(int(listed["total_entries"]))

    @contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()


def run_phase(deployment: Deployment, name: str, dag_ids: Sequence[str], images_per_spec: int) -> Phase:
    assert deployment.emulator is not None
    deployment.emulator.reset()
    idle_rss = rss_bytes(deployment.service("triggerer"))
    sampler = Sampler(deployment)
    with stage(f"{name}: {len(dag_ids)} spec(s), {len(dag_ids) * images_per_spec} images"), sampler.running():
        started = time.monotonic()
        runs = {dag_id: deployment.api.trigger(dag_id)["dag_run_id"] for dag_id in dag_ids}
        states = {
            dag_id: deployment.api.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT, check=deployment.check_alive)
            for dag_id, run_id in runs.items()
        }
        wall = time.monotonic() - started
    failed = {dag_id: state for dag_id, state in states.items() if state != "success"}
    if failed:
        raise SystemExit(f"{name}: runs did not succeed: {failed}")
    images = len(dag_ids) * images_per_spec
    accounting = deployment.emulator.accounting()
    if problems := billing_problems(accounting, images):
        raise SystemExit(f"{name}: not exactly one billed job per image ({images}): {'; '.join(problems)}")
    tis = [ti for dag_id, run_id in runs.items() for ti in deployment.api.task_instances(dag_id, run_id)]
    by_kind = slot_seconds(deployment.services, tis)
    polls = list(accounting["polls_per_job"].values())
    return Phase(
        name=name,
        specs=len(dag_ids),
        images=images,
        wall_seconds=round(wall, 1),
        slot_seconds_per_image=round(sum(by_kind.values()) / images, 2),
        slot_seconds_by_kind={kind: round(seconds / images, 2) for kind, seconds in sorted(by_kind.items())},
        poke_seconds_per_image=round(
            sum(ti["duration"] or 0 for ti in tis if ti["task_id"].endswith((".submit", ".wait"))) / images, 1
        ),
        triggerer_rss_idle_mb=round(idle_rss / 2**20, 1),
        triggerer_rss_peak_mb=round(max(sampler.rss or [idle_rss]) / 2**20, 1),
        deferred_peak=max(sampler.deferred or [0]),
        polls_per_job_mean=round(statistics.mean(polls), 1),
        polls_per_job_max=max(polls),
        jobs_billed=accounting["jobs_billed"],
    )


def report(baseline: Phase, load: Phase) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    def per_minute(phase: Phase) -> float:
        return round(phase.images / phase.wall_seconds * 60, 1)

    measures = [  # label, value of a phase, the number the ratio compares
        ("images", lambda p: p.images, lambda p: p.images),
        ("wall time (s)", lambda p: p.wall_seconds, lambda p: p.wall_seconds),
        ("images per minute", per_minute, per_minute),
        ("slot-seconds per image", lambda p: p.slot_seconds_per_image, lambda p: p.slot_seconds_per_image),
        ("poke-mode slot-seconds per image", lambda p: p.poke_seconds_per_image, lambda p: p.poke_seconds_per_image),
        ("polls per job (mean / max)", lambda p: f"{p.polls_per_job_mean} / {p.polls_per_job_max}",
         lambda p: p.polls_per_job_mean),
        ("tasks deferred at once (peak)", lambda p: p.deferred_peak, lambda p: p.deferred_peak),
        ("triggerer RSS idle -> peak (MB)", lambda p: f"{p.triggerer_rss_idle_mb} -> {p.triggerer_rss_peak_mb}",
         lambda p: p.triggerer_rss_peak_mb),
    ]  # fmt: skip
    rows = [
        (label, str(shown(baseline)), str(shown(load)), ratio(compared(load), compared(baseline)))
        for label, shown, compared in measures
    ]
    kinds = sorted(set(baseline.slot_seconds_by_kind) | set(load.slot_seconds_by_kind))
    rows += [
        (f"  {kind}", str(baseline.slot_seconds_by_kind.get(kind, 0)), str(load.slot_seconds_by_kind.get(kind, 0)), "")
        for kind in kinds
    ]
    waiting = sum(v for kind, v in load.slot_seconds_by_kind.items() if kind.startswith(("submit", "wait")))
    saved = ratio(waiting, load.poke_seconds_per_image)
    return (
        text_table(("", "baseline", "load", "load / baseline"), rows, indent="  ")
        + f"\n\n  deferring: the submit and wait runs held {waiting:.2f} slot-seconds per image,"
        f" {saved} of what they would hold in poke mode (load)\n"
        f"  billing: {load.jobs_billed} jobs billed for {load.images} images, every Idempotency-Key sent once"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", choices=("local", "celery"), default="local")
    parser.add_argument("--specs", type=int, default=20)
    parser.add_argument("--images", type=int, default=10, help="jobs per spec (2 images x seed variants)")
    # Jobs outlast the submit backlog, so waits defer and the triggerer holds them (not the executor).
    parser.add_argument("--job-seconds", type=float, default=240.0, help="the emulator's PROCESSING time")
    parser.add_argument("--queue-seconds", type=float, default=2.0)
    parser.add_argument("--parallelism", type=int, default=8, help="executor slots ([core] parallelism)")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (celery only)")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="slots per Celery worker")
    parser.add_argument(
        "--pool-slots", type=int, default=None, help="slots of the apiframe pool (default: every job of the load)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.pool_slots is None:  # the pool caps jobs in flight; here only the executor should limit the load
        args.pool_slots = args.specs * args.images
    if args.config == "celery" and (problem := services_available()):
        print(f"cannot run the celery configuration: {problem}")
        return 2

    with tempfile.TemporaryDirectory(prefix="flexflow-load-") as work:
        root = Path(work)
        dag_ids = write_specs(root / "specs", root / "published", args.specs, args.images)
        print(f"deployment_load: {args.config}, {platform.python_version()}, {len(dag_ids)} specs x {args.images}")
        with stage("starting the deployment"):
            deployment = Deployment(
                args.config,
                specs_dir=root / "specs",
                workers=args.workers,
                parallelism=args.parallelism,
                worker_concurrency=args.worker_concurrency,
                pool_slots=args.pool_slots,
                queue_seconds=args.queue_seconds,
                processing_seconds=args.job_seconds,
                root=root / "home",
            ).start()
        try:
            for dag_id in dag_ids:
                deployment.api.unpause(dag_id)
            wait_until(lambda: not any(d["is_paused"] for d in deployment.api.dags()), 60, "the DAGs to unpause")
            baseline = run_phase(deployment, "baseline", dag_ids[:1], args.images)
            load = run_phase(deployment, "load", dag_ids, args.images)
        finally:
            with stage("tearing down"):
                deployment.stop()
        left = deployment.remaining_processes()
    print(report(baseline, load))
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    result = {"settings": settings, "baseline": asdict(baseline), "load": asdict(load), "leftovers": len(left)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if left:
        print(f"  FAIL: {len(left)} process(es) outlived the teardown")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
