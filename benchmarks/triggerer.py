"""Waiting for jobs in the triggerer: N concurrent FluxJobTriggers on one event loop, vs poke-mode sensors.

What runs
    One emulator process (``python -m flexflow.cli emulator``; jobs QUEUED 2 s, then PROCESSING
    for the rest of ``--job-seconds``) serves every measurement; it is reset before each one and
    killed at the end whatever happens. Each measurement runs in a fresh worker process (this
    script with ``--worker``), so memory and CPU never mix between sizes:

    * ``triggers N`` (for each of ``--sizes``): submit N jobs concurrently with the async client
      (from a helper process, see below), then create one
      :class:`~flexflow.airflow.triggers.FluxJobTrigger` per job (default poll settings, a
      deadline an hour away, ``submitted_at`` = when the submit was acknowledged, as the operator
      does) and drive ``async for event in trigger.run()`` for all of them as tasks on ONE asyncio
      loop, then ``await trigger.cleanup()``, the way Airflow's TriggerRunner does (it also yields
      to the loop after creating each trigger). All triggers share one AsyncFluxClient through
      ``flexflow.airflow.hooks.shared_clients`` (each trigger waits through ``FluxHook.await_job``),
      as shipped (``--pool-limit`` swaps in a bounded pool, as a what-if).
    * ``sensors M`` (``--sensor-jobs``): the same waits done the pre-deferrable way. A poke-mode
      sensor holds a worker slot while it waits; this is emulated with M threads, each running
      ``FluxJobSensor(job_id=..., deferrable=False, mode="poke", poke_interval=5)``'s poke loop:
      ``sensor.poke(context={})``, then ``time.sleep(poke_interval)`` until the job is done.
      Real Celery/Local executor slots are processes (~100+ MB each), so thread RSS understates
      the cost.

    The connection comes from ``AIRFLOW_CONN_APIFRAME_DEFAULT`` (JSON) and ``AIRFLOW_HOME`` is a
    temporary directory. Airflow's logging stays as configured (INFO), written to a log file in
    that directory rather than the terminal.

What is measured (worker process)
    RSS per waiter    VmRSS of /proc/self/status (after gc.collect()) while every waiter waits,
                      minus VmRSS before the first trigger/sensor was created, divided by N. Taken
                      twice after the first trigger's creation: at 1 s (all created; with
                      flexflow's immediate first poll, that poll is done too) and at 7 s (between
                      the polls due at ~5 s and ~9.5 s: the steady state, connection pool in
                      use). The target uses the 7 s one. The jobs are submitted by a helper
                      process, so the submission's freed memory cannot be reused by the waiters
                      (which would make them look smaller).
    CPU per poll      process CPU time (``time.process_time()``) from the first trigger's creation
                      to the last cleanup, minus the measurements' own gc.collect(), divided by
                      the polls the emulator counted (``polls_per_job`` of /_emulator/accounting).
    loop stall        a monitor task sleeps 0.05 s in a loop; the longest lateness of a wake-up
                      (the wake-ups overlapping the RSS measurements' gc.collect() are left out;
                      that pause is in the JSON). To say where stalls come from, a watchdog
                      thread samples the loop thread's stack whenever the loop is > 0.1 s late,
                      and gc.callbacks time every garbage collection (notes, and the JSON).
    polls per job     max and mean of the emulator's ``polls_per_job``.
    latency           when the trigger yielded its event (or poke() returned done) minus when the
                      job completed: its ``completedAt`` (= createdAt + queue + processing, stamped
                      by the emulator on the same clock), p50/p99/max. The event (a stored
                      ``JobOutcome``: status, images, cost) carries no times, so the jobs'
                      ``createdAt``/``completedAt`` are read from the emulator's job list after the
                      waits, outside the measured window (listing counts no polls).
    emulator CPU      utime+stime of the emulator process (/proc/PID/stat) per 0.5 s window:
                      near 100 % of a core means the emulator, not the triggers, set the pace.

Targets (N = 1,000 triggers, printed PASS/FAIL; exit status 1 when one fails): < 30 KB RSS per
waiting trigger; no event-loop stall over 0.2 s; at default settings a 20 s job takes at most 7
polls and its completion is seen within 5 s (p99). Sanity checks: every job COMPLETED with
exactly one event, no errors.

Run::

    .venv/bin/python benchmarks/triggerer.py                       # 100, 1,000, 2,000 + sensors: 2-3 min
    .venv/bin/python benchmarks/triggerer.py --sizes 1000 --sensor-jobs 0
    .venv/bin/python benchmarks/triggerer.py --json out/triggerer.json   # also keeps the logs
    .venv/bin/python benchmarks/triggerer.py --quiet-httpx2        # what-if: httpx2's per-request INFO log off
    .venv/bin/python benchmarks/triggerer.py --pool-limit 50       # what-if: a bounded connection pool
    .venv/bin/python benchmarks/triggerer.py --sizes 1000 --sensor-jobs 0 --pool-limit 100 --tracemalloc

The machine matters: the worker, the emulator and anything else running share its cores, so
compare numbers within one invocation. The notes say which process was CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from common import (
    ROOT,
    Emulator,
    die_with_parent,
    emulator_process,
    percentile,
    process_cpu_seconds,
    rss_bytes,
    stage,
    text_table,
    vm_rss_bytes,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from flexflow.airflow.sensors import FluxJobSensor
    from flexflow.airflow.triggers import FluxJobTrigger

API_KEY = "afk_benchmark_triggerer_key"
CONN_ID = "apiframe_default"
CONN_ENV = "AIRFLOW_CONN_APIFRAME_DEFAULT"
QUEUE_SECONDS = 2.0

TARGET_SIZE = 1000
TARGET_RSS_KB = 30.0
TARGET_STALL_S = 0.2
TARGET_MAX_POLLS = 7
TARGET_P99_LATENCY_S = 5.0

MONITOR_INTERVAL = 0.05
SAMPLE_SECONDS = 0.5
EARLY_RSS_AT = 1.0  # s after the start: every waiter created
STEADY_RSS_AT = 7.0  # s after the start: between the polls due at ~5 s and ~9.5 s (2 s, x1.5, cap 5 s)
SUBMIT_CONNECTIONS = 100
#: The emulator is called the bottleneck when it was this busy (% of one core) in some 0.5 s window.
EMULATOR_BOUND_PERCENT = 90.0
KB = 1024
MB = 1024 * 1024


# -- measurements ------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def epoch(iso: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time such as 2026-01-01T00:00:00.000Z."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


@dataclass
class RssPoint:
    """One gc.collect() + VmRSS reading while the waiters wait."""

    at: float  # s after the start
    rss: int
    fds: int
    pause: float  # how long gc.collect() and the reading held the thread, s
    cpu: float  # process CPU time they took, s


def measure_rss(started: float) -> RssPoint:
    wall, cpu = time.perf_counter(), time.process_time()
    gc.collect()
    rss = vm_rss_bytes()
    return RssPoint(time.time() - started, rss, open_fds(), time.perf_counter() - wall, time.process_time() - cpu)


class LoopMonitor:
    """Sleeps MONITOR_INTERVAL in a loop and records how late each wake-up was."""

    def __init__(self, sampler: StallSampler | None = None) -> None:
        self.wakeups: list[tuple[float, float, float]] = []  # (expected, actual, lateness) on loop.time()
        self.excluded: list[tuple[float, float]] = []  # intervals the benchmark itself held the loop
        self.sampler = sampler

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + MONITOR_INTERVAL
            if self.sampler:
                self.sampler.beat = time.perf_counter()
            await asyncio.sleep(MONITOR_INTERVAL)
            actual = loop.time()
            self.wakeups.append((expected, actual, actual - expected))

    @contextmanager
    def excluding(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            yield
        finally:
            self.excluded.append((start, loop.time()))

    def _clean(self) -> list[tuple[float, float, float]]:
        """The wake-ups that do not overlap an excluded interval."""
        return [
            wakeup
            for wakeup in self.wakeups
            if not any(start < wakeup[1] and wakeup[0] < end for start, end in self.excluded)
        ]

    def max_stall(self) -> tuple[float, float]:
        """(longest lateness outside the excluded intervals, longest lateness of all)."""
        return max((w[2] for w in self._clean()), default=0.0), max((w[2] for w in self.wakeups), default=0.0)

    def worst(self, started_loop_time: float, count: int = 5) -> list[tuple[float, float]]:
        """The `count` latest wake-ups outside the excluded intervals: (s after the start, lateness)."""
        ranked = sorted(self._clean(), key=lambda w: w[2], reverse=True)[:count]
        return [(round(expected - started_loop_time, 3), round(late, 3)) for expected, _, late in ranked]

    def stalls_over(self, seconds: float) -> int:
        return sum(1 for _, _, late in self._clean() if late > seconds)


class GcPauses:
    """How long each garbage collection held the process, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0
        self.ignore = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif not self.ignore:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    @contextmanager
    def ignoring(self) -> Iterator[None]:
        """Leave out collections in this block (the benchmark's own gc.collect())."""
        self.ignore = True
        try:
            yield
        finally:
            self.ignore = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)

    def summary(self) -> dict[str, Any]:
        return {
            f"gc{generation}": {"count": len(p), "max_s": round(max(p, default=0.0), 4), "total_s": round(sum(p), 3)}
            for generation, p in self.pauses.items()
        }


class StallSampler:
    """A watchdog thread: while the loop is late, sample the loop thread's stack (where stalls are spent)."""

    def __init__(self, threshold: float = 0.1, every: float = 0.01) -> None:
        self.threshold, self.every = threshold, every
        self.beat = time.perf_counter()
        self.stacks: dict[str, int] = {}
        self._thread_id = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-sampler", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            if time.perf_counter() - self.beat < self.threshold + MONITOR_INTERVAL:
                continue
            frame = sys._current_frames().get(self._thread_id)
            names: list[str] = []
            while frame is not None and len(names) < 6:
                code = frame.f_code
                names.append(f"{Path(code.co_filename).name}:{code.co_name}:{frame.f_lineno}")
                frame = frame.f_back
            key = " < ".join(names)
            if "measure_rss" not in key and "take_snapshot" not in key:  # the benchmark's own pauses
                self.stacks[key] = self.stacks.get(key, 0) + 1

    def __enter__(self) -> StallSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def top(self, count: int = 6) -> list[tuple[str, float]]:
        """The most sampled stacks during stalls, with the seconds they account for."""
        ranked = sorted(self.stacks.items(), key=lambda item: item[1], reverse=True)[:count]
        return [(stack, round(samples * self.every, 3)) for stack, samples in ranked]


@dataclass
class Samples:
    """Every SAMPLE_SECONDS: this process's RSS and open fds, the emulator's and this process's CPU."""

    emulator_pid: int
    peak_rss: int = 0
    peak_fds: int = 0
    emulator_windows: list[float] = field(default_factory=list)  # fraction of a core
    own_windows: list[float] = field(default_factory=list)

    def take(self, last: tuple[float, float, float]) -> tuple[float, float, float]:
        now, emulator, own = time.perf_counter(), process_cpu_seconds(self.emulator_pid), time.process_time()
        span = now - last[0]
        if span > 0:
            self.emulator_windows.append((emulator - last[1]) / span)
            self.own_windows.append((own - last[2]) / span)
        self.peak_rss = max(self.peak_rss, rss_bytes())
        self.peak_fds = max(self.peak_fds, open_fds())
        return now, emulator, own

    def start(self) -> tuple[float, float, float]:
        return time.perf_counter(), process_cpu_seconds(self.emulator_pid), time.process_time()

    async def run(self) -> None:
        last = self.start()
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            last = self.take(last)

    def run_in_thread(self, stop: threading.Event) -> None:
        last = self.start()
        while not stop.wait(SAMPLE_SECONDS):
            last = self.take(last)


@dataclass
class Waiter:
    """One wait (a trigger or a sensor thread), as the benchmark saw it."""

    job_id: str
    acked_at: float  # when the submit was acknowledged (epoch s)
    started_at: float = 0.0
    event_at: float | None = None
    events: int = 0
    payload: dict[str, Any] | None = None
    error: str | None = None


def job_times(url: str) -> dict[str, tuple[float | None, float | None]]:
    """(createdAt, completedAt) of every job the emulator holds (it is reset before each measurement).

    Read through the job list, which counts no polls, so the emulator's polls per job stay the waiters' own.
    """
    from flexflow.client import FluxClient

    times: dict[str, tuple[float | None, float | None]] = {}
    cursor: str | None = None
    with FluxClient(url, API_KEY) as client:
        while True:
            page = client.list_jobs(limit=100, cursor=cursor)
            for job in page["jobs"]:
                times[job["id"]] = (epoch(job.get("createdAt")), epoch(job.get("completedAt")))
            cursor = page.get("nextCursor")
            if not page.get("hasMore") or not cursor:
                return times


def latency_stats(waiters: Sequence[Waiter], times: dict[str, tuple[float | None, float | None]]) -> dict[str, Any]:
    """Latency and start gaps from the jobs' times; statuses from the events (stored ``JobOutcome`` dicts)."""
    latencies: list[float] = []
    gaps: list[float] = []
    statuses: dict[str, int] = {}
    for w in waiters:
        status = str((w.payload or {}).get("status") or "none")
        statuses[status] = statuses.get(status, 0) + 1
        created, completed = times.get(w.job_id, (None, None))
        if w.event_at is not None and completed is not None:
            latencies.append(w.event_at - completed)
        if created is not None:
            gaps.append(w.started_at - created)
    return {
        "events_by_status": statuses,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "latency_max_s": max(latencies, default=float("nan")),
        "latency_min_s": min(latencies, default=float("nan")),
        "latencies_measured": len(latencies),
        "start_gap_min_s": min(gaps, default=float("nan")),
        "start_gap_max_s": max(gaps, default=float("nan")),
    }


def poll_stats(emulator: Emulator, job_ids: Sequence[str]) -> dict[str, Any]:
    books = emulator.accounting(timeout=60)
    per_job = books["polls_per_job"]
    polls = [int(per_job.get(job_id, 0)) for job_id in job_ids]
    return {
        "polls_total": sum(polls),
        "polls_per_job_max": max(polls, default=0),
        "polls_per_job_min": min(polls, default=0),
        "polls_per_job_mean": statistics.fmean(polls) if polls else float("nan"),
        "polls_histogram": {str(k): polls.count(k) for k in sorted(set(polls))},
        "emulator_jobs_created": books["jobs_created"],
        "emulator_submissions": books["submissions"],
        "emulator_peak_in_flight": books["peak_in_flight"],
        "emulator_jobs_by_status": books["jobs_by_status"],
    }


def cpu_stats(samples: Samples) -> dict[str, Any]:
    return {
        "emulator_cpu_percent": statistics.fmean(samples.emulator_windows) * 100 if samples.emulator_windows else 0.0,
        "emulator_cpu_peak_percent": max(samples.emulator_windows, default=0.0) * 100,
        "own_cpu_peak_percent": max(samples.own_windows, default=0.0) * 100,
        "peak_fds": samples.peak_fds,
    }


# -- the worker process: submitting --------------------------------------------------------------


async def submit_jobs(url: str, n: int, tag: str) -> list[Waiter]:
    """Submit n small jobs concurrently through one async client (closed before returning)."""
    import httpx2

    from flexflow.client import AsyncFluxClient
    from flexflow.contract import wire

    run_id = uuid.uuid4().hex[:10]

    async def one(client: AsyncFluxClient, index: int) -> Waiter:
        body = {
            "prompt": f"flexflow {tag} benchmark {run_id} job {index}: a lighthouse at dusk, watercolor",
            "model": wire.MODEL_ID,
            "fluxParams": {"resolution": "0.5MP", "seed": index},
        }
        job_id = await client.submit(body, f"bench-{tag}-{run_id}-{index}")
        return Waiter(job_id, time.time())

    limits = httpx2.Limits(max_connections=SUBMIT_CONNECTIONS, max_keepalive_connections=SUBMIT_CONNECTIONS)
    async with AsyncFluxClient(url, API_KEY, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i) for i in range(n))))


def submitter_main(config_json: str) -> int:
    """The submitting helper process: imports, says "ready", submits on "go", prints the jobs."""
    config = json.loads(config_json)
    import flexflow.client  # noqa: F401  (the imports happen before "ready")

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    started = time.perf_counter()
    waiters = asyncio.run(submit_jobs(config["url"], config["n"], config["tag"]))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "jobs": [[w.job_id, w.acked_at] for w in waiters]}), flush=True)
    return 0


class Submitter:
    """Submits the jobs from a helper process, on cue.

    The submission happens just before the waiters are created, as in a DAG run, but its garbage
    (N responses, a connection pool) lives and dies in the helper: had it been freed in the
    measured process, the waiters would reuse that freed memory and their RSS would look smaller.
    """

    def __init__(self, url: str, n: int, tag: str) -> None:
        config = json.dumps({"url": url, "n": n, "tag": tag})
        command = [sys.executable, str(Path(__file__).resolve()), "--submitter", config]
        self._process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent
        )

    def submit(self) -> tuple[list[Waiter], float]:
        """(the submitted jobs, seconds the submission took); blocks until the helper is done."""
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            if self._process.stdout.readline().strip() != "ready":
                raise RuntimeError("the submitting helper did not start")
            self._process.stdin.write("go\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
            if self._process.wait(60) != 0 or not line:
                raise RuntimeError(f"the submitting helper failed (exit {self._process.returncode})")
        finally:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait()
        done = json.loads(line)
        return [Waiter(job_id, acked_at) for job_id, acked_at in done["jobs"]], float(done["seconds"])


async def warm_up(url: str) -> None:
    """One call through the async client, so lazy imports (anyio's backend...) are not counted as the waiters'."""
    from flexflow.client import AsyncFluxClient

    async with AsyncFluxClient(url, API_KEY) as client:
        await client.list_jobs(limit=1)


# -- the worker process: triggers ----------------------------------------------------------------


async def drive(trigger: FluxJobTrigger, waiter: Waiter) -> None:
    """What the triggerer does with a trigger: run it, take its event, clean it up."""
    waiter.started_at = time.time()
    try:
        async for event in trigger.run():
            waiter.events += 1
            if waiter.event_at is None:
                waiter.event_at = time.time()
                waiter.payload = dict(event.payload)
    except Exception as exc:
        waiter.error = f"{type(exc).__name__}: {exc}"
    finally:
        await trigger.cleanup()


async def measure_at(
    seconds: float, started: float, monitor: LoopMonitor, tasks: Sequence[asyncio.Task[None]]
) -> RssPoint | None:
    """Sleep until `seconds` after the start, then read the RSS (unless every wait is over by then)."""
    await asyncio.sleep(max(0.0, started + seconds - time.time()))
    if all(task.done() for task in tasks):
        return None
    with monitor.excluding():
        return measure_rss(started)


def top_allocations(snapshot: tracemalloc.Snapshot, limit: int = 15) -> list[dict[str, Any]]:
    """Where the traced memory lives, by allocating line (site-packages and stdlib paths shortened)."""

    def short(path: str) -> str:
        for marker in ("site-packages/", "/lib/python3."):
            if marker in path:
                tail = path.split(marker, 1)[1]
                return tail.split("/", 1)[-1] if marker.startswith("/lib") else tail
        return os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path

    stats = snapshot.statistics("lineno")
    return [
        {"line": f"{short(s.traceback[0].filename)}:{s.traceback[0].lineno}", "bytes": s.size, "blocks": s.count}
        for s in stats[:limit]
    ]


async def triggers_run(config: dict[str, Any]) -> dict[str, Any]:
    from flexflow.airflow.hooks import shared_clients
    from flexflow.airflow.triggers import FluxJobTrigger

    n, url = config["n"], config["url"]
    submitter = Submitter(url, n, "triggers")
    await warm_up(url)
    waiters, submit_seconds = submitter.submit()  # blocks the loop, before anything is measured

    sampler, gc_pauses = StallSampler(), GcPauses()
    monitor, samples = LoopMonitor(sampler), Samples(config["emulator_pid"])
    tasks: list[asyncio.Task[None]] = []
    if config.get("tracemalloc"):
        tracemalloc.start()
    gc.collect()
    rss_before, fds_before = vm_rss_bytes(), open_fds()
    traced_before = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    samples.peak_rss = rss_before
    helpers = [asyncio.create_task(monitor.run()), asyncio.create_task(samples.run())]
    started, started_loop = time.time(), asyncio.get_running_loop().time()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    try:
        with sampler, gc_pauses.installed():
            for waiter in waiters:
                trigger = FluxJobTrigger(
                    waiter.job_id, CONN_ID, deadline=time.time() + 3600, submitted_at=waiter.acked_at
                )
                tasks.append(asyncio.create_task(drive(trigger, waiter)))
                await asyncio.sleep(0)  # as TriggerRunner.create_triggers does after each trigger
            created_seconds = time.perf_counter() - wall_before
            with gc_pauses.ignoring():
                early = await measure_at(EARLY_RSS_AT, started, monitor, tasks)
                steady = await measure_at(STEADY_RSS_AT, started, monitor, tasks)
            allocations: list[dict[str, Any]] = []
            traced = 0
            if tracemalloc.is_tracing() and steady is not None:
                with monitor.excluding():
                    traced = tracemalloc.get_traced_memory()[0] - traced_before
                    allocations = top_allocations(tracemalloc.take_snapshot())
            await asyncio.gather(*tasks)
            wall = time.perf_counter() - wall_before
            cpu = time.process_time() - cpu_before
        clients_left = shared_clients.users(CONN_ID)
    finally:
        for helper in helpers:
            helper.cancel()
        for task in tasks:
            task.cancel()
    tracemalloc.stop()
    points = [p for p in (early, steady) if p is not None]
    measuring_cpu = sum(p.cpu for p in points)
    stall, stall_all = monitor.max_stall()
    result: dict[str, Any] = {
        "kind": "triggers",
        "n": n,
        "worker_slots_held": 0,
        "submit_seconds": submit_seconds,
        "create_seconds": created_seconds,
        "wall_seconds": wall,
        "rss_before_mb": rss_before / MB,
        "fds_before": fds_before,
        "rss_early_kb_per_waiter": (early.rss - rss_before) / n / KB if early else float("nan"),
        "rss_steady_kb_per_waiter": (steady.rss - rss_before) / n / KB if steady else float("nan"),
        "rss_growth_steady_mb": (steady.rss - rss_before) / MB if steady else float("nan"),
        "rss_growth_peak_mb": (samples.peak_rss - rss_before) / MB,
        "fds_steady": steady.fds if steady else 0,
        "rss_steady_at_s": steady.at if steady else None,
        "measure_pause_s": max((p.pause for p in points), default=0.0),
        "cpu_seconds": cpu - measuring_cpu,
        "cpu_percent": (cpu - measuring_cpu) / wall * 100,
        "loop_stall_max_s": stall,
        "loop_stall_max_including_measurements_s": stall_all,
        "loop_stalls_over_0_1_s": monitor.stalls_over(0.1),
        "loop_worst_stalls": monitor.worst(started_loop),
        "stall_stacks": sampler.top(),
        "gc_pauses": gc_pauses.summary(),
        "loop_wakeups": len(monitor.wakeups),
        "errors": sum(1 for w in waiters if w.error),
        "first_errors": [w.error for w in waiters if w.error][:5],
        "waiters_with_one_event": sum(1 for w in waiters if w.events == 1),
        "shared_client_users_after": clients_left,
        "traced_kb_per_waiter": traced / n / KB if traced else None,
        "top_allocations": allocations,
        "job_ids": [w.job_id for w in waiters],
    }
    result.update(latency_stats(waiters, job_times(url)))
    result.update(cpu_stats(samples))
    _include_readings(result, [p for p in (early, steady) if p is not None], rss_before)
    return result


# -- the worker process: poke-mode sensors ------------------------------------------------------


def _include_readings(result: dict[str, Any], points: Sequence[RssPoint], rss_before: int) -> None:
    """The peaks also cover the gc.collect() readings (the 0.5 s samples may miss a peak)."""
    result["peak_fds"] = max([result["peak_fds"], *(p.fds for p in points)])
    peak = max([result["rss_growth_peak_mb"], *((p.rss - rss_before) / MB for p in points)])
    result["rss_growth_peak_mb"] = peak


def poke_loop(sensor: FluxJobSensor, waiter: Waiter) -> None:
    """A worker slot running a poke-mode sensor: poke, sleep poke_interval, until done."""
    waiter.started_at = time.time()
    try:
        while True:
            result = sensor.poke(context=cast("Context", {}))
            if result.is_done:
                waiter.event_at = time.time()
                waiter.events = 1
                waiter.payload = result.xcom_value  # the stored JobOutcome, as the trigger's event
                return
            time.sleep(sensor.poke_interval)
    except Exception as exc:
        waiter.error = f"{type(exc).__name__}: {exc}"


def sensors_run(config: dict[str, Any]) -> dict[str, Any]:
    from flexflow.airflow.sensors import FluxJobSensor

    n, url = config["n"], config["url"]
    submitter = Submitter(url, n, "sensors")
    asyncio.run(warm_up(url))
    waiters, submit_seconds = submitter.submit()

    samples = Samples(config["emulator_pid"])
    gc.collect()
    rss_before, fds_before = vm_rss_bytes(), open_fds()
    samples.peak_rss = rss_before
    stop = threading.Event()
    sampler = threading.Thread(target=samples.run_in_thread, args=(stop,), daemon=True)
    sampler.start()
    started = time.time()
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    threads = []
    for index, waiter in enumerate(waiters):
        sensor = FluxJobSensor(
            task_id=f"wait_{index}",
            job_id=waiter.job_id,
            deferrable=False,
            mode="poke",
            poke_interval=config["poke_interval"],
        )
        thread = threading.Thread(target=poke_loop, args=(sensor, waiter), name=f"slot-{index}", daemon=True)
        thread.start()
        threads.append(thread)
    created_seconds = time.perf_counter() - wall_before
    points: dict[str, RssPoint | None] = {}
    for name, at in (("early", EARLY_RSS_AT), ("steady", STEADY_RSS_AT)):
        time.sleep(max(0.0, started + at - time.time()))
        points[name] = measure_rss(started) if any(t.is_alive() for t in threads) else None
    timeout = config["timeout"]
    for thread in threads:
        thread.join(max(0.0, wall_before + timeout - time.perf_counter()))
    wall = time.perf_counter() - wall_before
    cpu = time.process_time() - cpu_before
    stop.set()
    sampler.join()
    early, steady = points["early"], points["steady"]
    measuring_cpu = sum(p.cpu for p in (early, steady) if p is not None)
    result: dict[str, Any] = {
        "kind": "sensors",
        "n": n,
        "poke_interval": config["poke_interval"],
        "worker_slots_held": n,
        "submit_seconds": submit_seconds,
        "create_seconds": created_seconds,
        "wall_seconds": wall,
        "rss_before_mb": rss_before / MB,
        "fds_before": fds_before,
        "rss_early_kb_per_waiter": (early.rss - rss_before) / n / KB if early else float("nan"),
        "rss_steady_kb_per_waiter": (steady.rss - rss_before) / n / KB if steady else float("nan"),
        "rss_growth_steady_mb": (steady.rss - rss_before) / MB if steady else float("nan"),
        "rss_growth_peak_mb": (samples.peak_rss - rss_before) / MB,
        "fds_steady": steady.fds if steady else 0,
        "cpu_seconds": cpu - measuring_cpu,
        "cpu_percent": (cpu - measuring_cpu) / wall * 100,
        "errors": sum(1 for w in waiters if w.error),
        "first_errors": [w.error for w in waiters if w.error][:5],
        "waiters_with_one_event": sum(1 for w in waiters if w.events == 1),
        "threads_still_waiting": sum(1 for t in threads if t.is_alive()),
        "job_ids": [w.job_id for w in waiters],
    }
    result.update(latency_stats(waiters, job_times(url)))
    result.update(cpu_stats(samples))
    _include_readings(result, [p for p in (early, steady) if p is not None], rss_before)
    return result


def bound_shared_pool(limit: int) -> None:
    """What-if (--pool-limit): the triggers' shared client with a bounded connection pool.

    Replaces FluxHook.open_async_client (what ``shared_clients`` opens a connection's client with) in
    this worker process only; flexflow itself is unchanged.
    """
    import httpx2

    from flexflow.airflow.hooks import FluxHook
    from flexflow.client import AsyncFluxClient

    async def open_async_client(conn_id: str) -> AsyncFluxClient:
        settings = await FluxHook(conn_id).asettings()
        limits = httpx2.Limits(max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=30.0)
        return AsyncFluxClient(settings.base_url, settings.api_key, **settings.client_options(), limits=limits)

    FluxHook.open_async_client = staticmethod(open_async_client)  # type: ignore[method-assign]


def worker_main(config_path: str) -> int:
    config: dict[str, Any] = json.loads(Path(config_path).read_text())
    os.environ[CONN_ENV] = json.dumps(
        {"conn_type": "apiframe", "host": config["url"], "password": API_KEY}
    )  # before any trigger or sensor reads the connection
    if config.get("pool_limit"):
        bound_shared_pool(int(config["pool_limit"]))
    if config.get("quiet_httpx2"):
        import airflow.sdk  # noqa: F401  (configures logging first, so the level set here sticks)

        logging.getLogger("httpx2").setLevel(logging.WARNING)
    result = asyncio.run(triggers_run(config)) if config["kind"] == "triggers" else sensors_run(config)
    result.update(poll_stats(Emulator(config["url"], config["emulator_pid"]), result.pop("job_ids")))
    result["cpu_ms_per_poll"] = result["cpu_seconds"] / result["polls_total"] * 1000 if result["polls_total"] else 0
    result["log_lines"] = _count_lines(config.get("log_path"))
    Path(config["result_path"]).write_text(json.dumps(result))
    return 0


def _count_lines(path: str | None) -> int | None:
    if not path or not Path(path).exists():
        return None
    with open(path, "rb") as log:
        return sum(1 for _ in log)


# -- the supervising process ---------------------------------------------------------------------


def run_worker(config: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """One measurement in a fresh process; its Airflow log goes to a file in workdir."""
    name = f"{config['kind']}-{config['n']}"
    config_path, result_path, log_path = (workdir / f"{name}.{ext}" for ext in ("config.json", "result.json", "log"))
    config = {**config, "result_path": str(result_path), "log_path": str(log_path), "timeout": timeout}
    config_path.write_text(json.dumps(config))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(config_path)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, preexec_fn=die_with_parent)
        try:
            process.wait(timeout + 60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"the {name} worker exited with {process.returncode}; end of its log:\n{tail}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    return result


# -- the report ----------------------------------------------------------------------------------

#: (label, key, format)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("waits (jobs)", "n", "{:.0f}"),
    ("worker slots held", "worker_slots_held", "{:.0f}"),
    ("jobs in flight at once (emulator)", "emulator_peak_in_flight", "{:.0f}"),
    ("submit all, s", "submit_seconds", "{:.2f}"),
    ("create all waiters (+ polls meanwhile), s", "create_seconds", "{:.2f}"),
    ("wait phase wall time, s", "wall_seconds", "{:.1f}"),
    ("RSS before, MB", "rss_before_mb", "{:.1f}"),
    ("RSS/waiter at 1 s, KB", "rss_early_kb_per_waiter", "{:.1f}"),
    ("RSS/waiter at 7 s (target), KB", "rss_steady_kb_per_waiter", "{:.1f}"),
    ("RSS growth waiting, MB", "rss_growth_steady_mb", "{:.1f}"),
    ("RSS growth peak, MB", "rss_growth_peak_mb", "{:.1f}"),
    ("open fds waiting / peak", "fds", "{}"),
    ("CPU in wait phase, s", "cpu_seconds", "{:.2f}"),
    ("CPU, % of a core", "cpu_percent", "{:.1f}"),
    ("CPU per poll, ms", "cpu_ms_per_poll", "{:.3f}"),
    ("polls (emulator)", "polls_total", "{:.0f}"),
    ("polls per job max / mean", "polls", "{}"),
    ("longest loop stall, s", "loop_stall_max_s", "{:.3f}"),
    ("loop wake-ups > 0.1 s late", "loop_stalls_over_0_1_s", "{:.0f}"),
    ("latency p50, s", "latency_p50_s", "{:.2f}"),
    ("latency p99, s", "latency_p99_s", "{:.2f}"),
    ("latency max, s", "latency_max_s", "{:.2f}"),
    ("submit-to-start gap, s", "gap", "{}"),
    ("log lines (all)", "log_lines", "{:.0f}"),
    ("emulator CPU mean / busiest 0.5 s, %", "emulator", "{}"),
    ("errors / non-COMPLETED", "problems", "{}"),
)


def cell(result: dict[str, Any], key: str, number: str) -> str:
    composite: dict[str, Callable[[dict[str, Any]], str]] = {
        "fds": lambda r: f"{r['fds_steady']} / {r['peak_fds']}",
        "polls": lambda r: f"{r['polls_per_job_max']} / {r['polls_per_job_mean']:.2f}",
        "gap": lambda r: f"{r['start_gap_min_s']:.2f}..{r['start_gap_max_s']:.2f}",
        "emulator": lambda r: f"{r['emulator_cpu_percent']:.0f} / {r['emulator_cpu_peak_percent']:.0f}",
        "problems": lambda r: f"{r['errors']} / {r['n'] - r['events_by_status'].get('COMPLETED', 0)}",
    }
    if key in composite:
        return composite[key](result)
    value = result.get(key)
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return number.format(value)


def render_table(columns: Sequence[tuple[str, dict[str, Any]]]) -> str:
    headers = ["metric", *(name for name, _ in columns)]
    lines = [[label, *(cell(r, key, number) for _, r in columns)] for label, key, number in ROWS]
    lines = [line for line in lines if any(c != "-" for c in line[1:])]
    return text_table(headers, lines, indent="  ")


def evaluate(results: Sequence[dict[str, Any]], job_seconds: float) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    target = next((r for r in results if r["kind"] == "triggers" and r["n"] == TARGET_SIZE), None)
    if target is None:
        checks.append((f"targets are stated for N={TARGET_SIZE} triggers, which was not run (--sizes)", True))
    else:
        at = f"at N={TARGET_SIZE} triggers"
        job = f"a {job_seconds:g} s job" + ("" if job_seconds == 20 else " (targets are stated for 20 s)")
        rss, stall = target["rss_steady_kb_per_waiter"], target["loop_stall_max_s"]
        polls, p99 = target["polls_per_job_max"], target["latency_p99_s"]
        checks += [
            (f"RSS per waiting trigger {rss:.1f} KB < {TARGET_RSS_KB:g} KB {at}", rss < TARGET_RSS_KB),
            (f"longest event-loop stall {stall:.3f} s <= {TARGET_STALL_S:g} s {at}", stall <= TARGET_STALL_S),
            (f"{job} took at most {polls} polls (<= {TARGET_MAX_POLLS}) {at}", polls <= TARGET_MAX_POLLS),
            (
                f"completion seen within {p99:.2f} s p99 (<= {TARGET_P99_LATENCY_S:g} s) {at}",
                p99 <= TARGET_P99_LATENCY_S,
            ),
        ]
    for r in results:
        completed = r["events_by_status"].get("COMPLETED", 0)
        ok = r["errors"] == 0 and completed == r["n"] == r["waiters_with_one_event"] == r["latencies_measured"]
        released = r.get("shared_client_users_after", 0) == 0
        checks.append(
            (
                f"sanity, {r['kind']} N={r['n']}: {completed}/{r['n']} COMPLETED, {r['waiters_with_one_event']} "
                f"with exactly one event, {r['errors']} errors"
                + (
                    ""
                    if r["kind"] != "triggers"
                    else f", shared client users after cleanup: {r['shared_client_users_after']}"
                ),
                ok and released,
            )
        )
    return checks


def notes_for(results: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    triggers = sorted((r for r in results if r["kind"] == "triggers"), key=lambda r: r["n"])
    for r in results:
        name = f"{r['kind']} N={r['n']}"
        busiest, mean, own = r["emulator_cpu_peak_percent"], r["emulator_cpu_percent"], r["own_cpu_peak_percent"]
        if busiest >= EMULATOR_BOUND_PERCENT:
            notes.append(
                f"bottleneck: {name}: the EMULATOR (one uvicorn process) was saturated in its busiest 0.5 s "
                f"({busiest:.0f} % of a core, {mean:.0f} % on average): poll bursts queued there, which delays "
                "polls and inflates latency; the triggers' own CPU was "
                f"{r['cpu_percent']:.0f} % on average (busiest 0.5 s {r['own_cpu_peak_percent']:.0f} %)"
            )
        elif own >= EMULATOR_BOUND_PERCENT and r["kind"] == "triggers":
            notes.append(
                f"bottleneck: {name}: the TRIGGERS' event loop (one thread) was CPU-bound in its busiest 0.5 s "
                f"({own:.0f} % of a core; {r['cpu_percent']:.0f} % on average); the emulator was not "
                f"(busiest 0.5 s {busiest:.0f} %, {mean:.0f} % on average)"
            )
        else:
            notes.append(
                f"bottleneck: {name}: none; emulator busiest 0.5 s {busiest:.0f} % of a core, this process {own:.0f} %"
            )
    for low, high in itertools.pairwise(triggers):
        slope = (high["rss_growth_steady_mb"] - low["rss_growth_steady_mb"]) * MB / (high["n"] - low["n"]) / KB
        notes.append(
            f"marginal RSS per waiting trigger between N={low['n']} and N={high['n']}: {slope:.1f} KB "
            "(fixed costs such as the shared client cancel out)"
        )
    if any(r["kind"] == "sensors" for r in results):
        notes.append(
            "sensors: each poke-mode wait holds a worker slot for the whole wait. Here a slot is a thread; "
            "real Celery/Local executor slots are processes (~100+ MB RSS each, plus the task supervisor), so "
            "the thread RSS above understates the real cost by about three orders of magnitude."
        )
    for r in triggers:
        at = r.get("rss_steady_at_s")
        if at is not None and at > STEADY_RSS_AT + 1:
            notes.append(
                f"triggers N={r['n']}: the 7 s RSS reading happened only at {at:.1f} s (creating the triggers took "
                f"{r['create_seconds']:.1f} s; longest loop stall {r['loop_stall_max_s']:.1f} s), when some waits "
                "may have been over: it can understate the waiting RSS"
            )
        if r["latency_p99_s"] > 0.8 * TARGET_P99_LATENCY_S:
            notes.append(
                f"latency, triggers N={r['n']}: p99 {r['latency_p99_s']:.2f} s. Polls come at ~0, 2, 5, 9.5, 14.5, "
                "19.5, 24.5 s after a trigger starts, so a job completing just after the 19.5 s poll waits ~5 s "
                "(the young-job cap) plus the request: by design the worst case is ~5 s + request time + loop lag"
            )
        worst = ", ".join(f"{late:.2f} s at {at:.1f} s" for at, late in r["loop_worst_stalls"][:3])
        gc2 = r["gc_pauses"]["gc2"]
        notes.append(
            f"stalls, triggers N={r['n']}: worst {worst} (after the first trigger's creation); "
            f"{gc2['count']} full (gen 2) garbage collections, longest {gc2['max_s']:.3f} s"
        )
        for stack, seconds in r["stall_stacks"][:3]:
            notes.append(f"  loop thread during stalls ({seconds:.2f} s sampled): {stack}")
        scanning = sum(seconds for stack, seconds in r["stall_stacks"] if "has_expired" in stack)
        if scanning >= 0.5:
            notes.append(
                f"  {scanning:.1f} s of the sampled stalls were httpcore2's connection-pool bookkeeping, which probes "
                "every pooled connection (has_expired: getpeername + poll on each idle socket) whenever a request "
                f"starts or ends; {r['peak_fds']} fds were open at the peak. The shared client's pool is unbounded "
                "(AsyncFluxClient passes httpx2.Limits(), i.e. max_connections=None), so poll bursts grow it and "
                "each request then costs O(connections): see --pool-limit"
            )
        if r.get("top_allocations"):
            notes.append(
                f"tracemalloc, triggers N={r['n']}: {r['traced_kb_per_waiter']:.1f} KB traced per waiting trigger; "
                "largest by line: "
                + ", ".join(f"{a['line']} {a['bytes'] / r['n']:.0f} B" for a in r["top_allocations"][:8])
            )
    return notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,2000", help="concurrent triggers per run (default 100,1000,2000)")
    parser.add_argument("--job-seconds", type=float, default=20.0, help="queue (2 s) + processing time (default 20)")
    parser.add_argument(
        "--sensor-jobs", type=int, default=100, help="poke-mode sensor threads to compare; 0 skips (default 100)"
    )
    parser.add_argument("--poke-interval", type=float, default=5.0, help="the sensors' poke_interval (default 5)")
    parser.add_argument("--quiet-httpx2", action="store_true", help="set the httpx2 logger to WARNING in the workers")
    parser.add_argument(
        "--pool-limit",
        type=int,
        metavar="K",
        help="what-if: give the triggers' shared client Limits(max_connections=K, max_keepalive_connections=K, "
        "keepalive_expiry=30) (flexflow's default is an unbounded pool)",
    )
    parser.add_argument("--tracemalloc", action="store_true", help="trace allocations (slower; CPU numbers inflate)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder with the Airflow logs")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--submitter", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes comma-separated integers, e.g. 100,1000,2000")
    if any(n < 1 for n in args.sizes) or args.sensor_jobs < 0:
        parser.error("--sizes must be >= 1 and --sensor-jobs >= 0")
    if args.job_seconds <= QUEUE_SECONDS:
        parser.error(f"--job-seconds must exceed the {QUEUE_SECONDS:g} s queue time")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.submitter:
        return submitter_main(args.submitter)
    if args.worker:
        return worker_main(args.worker)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the emulator and the worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load = os.getloadavg()
    print("flexflow triggerer benchmark: concurrent FluxJobTriggers on one event loop, then poke-mode sensors")
    print(
        f"  python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"  jobs: queue {QUEUE_SECONDS:g} s + processing {args.job_seconds - QUEUE_SECONDS:g} s; triggers at default "
        "poll settings (2 s, x1.5, capped at 5 s); "
        + (f"{args.sensor_jobs} poke-mode sensors (poke_interval {args.poke_interval:g} s)" if args.sensor_jobs else "")
    )
    if args.quiet_httpx2:
        print("  httpx2 logger set to WARNING in the workers (--quiet-httpx2)")
    if args.pool_limit:
        print(
            f"  WHAT-IF: the triggers' shared client gets a pool of {args.pool_limit} connections (--pool-limit); "
            "flexflow as shipped uses an unbounded pool"
        )
    if args.tracemalloc:
        print("  tracemalloc on: CPU and stall numbers are inflated")

    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="flexflow-triggerer-"))
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow_home")
    (workdir / "airflow_home").mkdir()
    try:
        with (
            open(workdir / "emulator.log", "w") as emulator_log,
            emulator_process(
                QUEUE_SECONDS, args.job_seconds - QUEUE_SECONDS, api_key=API_KEY, log=emulator_log, timeout=60.0
            ) as emulator,
        ):
            print(f"  emulator {emulator.url} (pid {emulator.pid}); logs and AIRFLOW_HOME in {workdir}")
            base = {
                "url": emulator.url,
                "emulator_pid": emulator.pid,
                "quiet_httpx2": args.quiet_httpx2,
                "tracemalloc": args.tracemalloc,
                "pool_limit": args.pool_limit,
                "poke_interval": args.poke_interval,
            }
            runs = [("triggers", n) for n in args.sizes] + ([("sensors", args.sensor_jobs)] if args.sensor_jobs else [])
            for kind, n in runs:
                emulator.reset()
                with stage(f"{kind}: {n} concurrent waits for {args.job_seconds:g} s jobs"):
                    timeout = 120 + 4 * args.job_seconds + n * 0.05
                    results.append(run_worker({**base, "kind": kind, "n": n}, workdir, timeout))
    finally:
        if not args.keep_logs and not args.json:
            _remove_tree(workdir)

    print()
    triggers = [(f"triggers N={r['n']}", r) for r in results if r["kind"] == "triggers"]
    print("triggers: one event loop, one shared AsyncFluxClient")
    print(render_table(triggers))
    sensors = [r for r in results if r["kind"] == "sensors"]
    if sensors:
        same = next((r for r in results if r["kind"] == "triggers" and r["n"] == sensors[0]["n"]), None)
        print()
        print(f"the same {sensors[0]['n']} waits: deferred (triggers) vs poke mode (one worker slot each)")
        columns = ([(f"triggers N={same['n']}", same)] if same else []) + [
            (f"poke sensors N={sensors[0]['n']}", sensors[0])
        ]
        print(render_table(columns))
        if same:
            slots = sensors[0]["n"]
            rss_ratio = sensors[0]["rss_steady_kb_per_waiter"] / same["rss_steady_kb_per_waiter"]
            cpu_ratio = sensors[0]["cpu_ms_per_poll"] / same["cpu_ms_per_poll"]
            print(
                f"  poke mode holds {slots} worker slots (triggers: 0); as threads it costs {rss_ratio:.1f}x the RSS "
                f"and {cpu_ratio:.1f}x the CPU per poll of the triggers. Real worker slots are processes "
                f"(~100+ MB each): {slots} slots are ~{slots * 100 / 1024:.0f}+ GB, not "
                f"{sensors[0]['rss_growth_steady_mb']:.1f} MB."
            )
    print()
    checks = evaluate(results, args.job_seconds)
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    notes = notes_for(results)
    for note in notes:
        print(f"note: {note}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("worker", "submitter")
            },
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average": load},
            "targets": {
                "size": TARGET_SIZE,
                "rss_kb_per_waiting_trigger": TARGET_RSS_KB,
                "loop_stall_s": TARGET_STALL_S,
                "max_polls": TARGET_MAX_POLLS,
                "latency_p99_s": TARGET_P99_LATENCY_S,
            },
            "results": results,
            "checks": [{"check": text, "pass": ok} for text, ok in checks],
            "notes": notes,
            "logs": str(workdir),
        }
        args.json.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
        print(f"wrote {args.json} (logs kept in {workdir})")
    return 0 if all(ok for _, ok in checks) else 1


def _jsonable(value: object) -> object:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else str(value)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the emulator and worker processes were stopped", file=sys.stderr)
        sys.exit(130)
