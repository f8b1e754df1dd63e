"""Client cost at 1,000 concurrent jobs: submit+poll cycles against the emulator, httpx2 vs plain httpx.

What runs
    Each *run* starts a fresh emulator (``python -m flexflow.cli emulator``) in its own process and
    a fresh client process (this script with ``--worker``). The client process runs ``--jobs``
    submit+poll cycles concurrently on ONE asyncio event loop through ONE shared async client:
    submit a small flux-2-flex request (0.5MP, a unique prompt and seed, its own Idempotency-Key),
    then ``await asyncio.sleep(--poll-interval)`` and ``GET /v2/jobs/{id}`` until the job is
    terminal, the way a trigger polls. The default job duration (queue 1 s + processing 2 s) puts
    every job in flight at once, provided the client submits them all within about 3 s (the
    emulator's ``peak_in_flight`` shows whether it did). Because the emulator has its own process,
    the client process's CPU time is the client's alone.

    Three variants, each in its own processes so that memory and CPU never mix:

    * ``flexflow``: the production path, :class:`flexflow.client.AsyncFluxClient` (on httpx2);
    * ``httpx2``: a minimal adapter issuing the same requests with ``httpx2.AsyncClient``;
    * ``httpx``: the same adapter with plain ``httpx.AsyncClient`` (0.28), the baseline.

    The adapter sends what flexflow sends (X-API-Key, Accept, Idempotency-Key, a JSON body, full
    URLs, the same timeouts) and every variant uses the same ``Limits(max_connections=N)``.

What is measured (client process, over the run's window: first submit to last terminal poll)
    Before the window, one request on a throwaway client of the same library pays its one-time
    lazy imports (anyio's backend: 50-90 ms of CPU) so that the numbers are a long-running
    trigger's steady state; that cost is reported as ``warmup_cpu_ms`` in the JSON.

    requests/s         HTTP requests / wall time. With polling this is the offered load
                       (about jobs / poll interval), not the client's maximum throughput.
    CPU/request        ``time.process_time()`` delta / HTTP requests sent.
    request latency    p50/p99 around each HTTP call (includes waiting for a pooled connection).
    cycle latency      p50/p99 from submit to the terminal poll.
    RSS                peak (VmHWM of /proc/self/status, which is what ``ru_maxrss`` measures minus
                       the parent's peak that Linux carries over exec; also sampled from
                       /proc/self/statm) and growth = peak - RSS just before the run.
    in flight          peak jobs submitted and not yet seen terminal (client side), and the
                       emulator's own ``peak_in_flight``; jobs billed from ``/_emulator/accounting``.
    event-loop lag     p50/p99 of how late a 20 ms ``asyncio.sleep`` wakes up: tens of ms mean the
                       client's loop is saturated and requests queue behind it. The probe's own
                       CPU is included: ~0.01 ms per request at 1,000 jobs, ~0.1 ms at 50.
    emulator CPU       utime+stime of the emulator process over the run, mean and busiest 0.5 s
                       window, in % of one core: near 100 % means the emulator is the bottleneck.

    The machine is shared and noisy: compare the ratios against the ``httpx`` baseline of the
    same invocation rather than absolute numbers across invocations. ``--rounds`` repeats every
    variant (in rotating order) and reports medians.

Targets (on the ``flexflow`` row, at >= 1,000 jobs; below that they print as INFO): client CPU
per request <= 1.5 ms, RSS growth < 50 MB. The exit status is 1 when a target or a sanity check
fails (every job completed and billed once, no request failed, the client and the emulator counted
the same requests). Each run ends with a ``bottleneck:`` line naming the saturated side, if any.

Run::

    .venv/bin/python benchmarks/client_emulator.py                 # 1,000 jobs, under a minute
    .venv/bin/python benchmarks/client_emulator.py --jobs 50       # quick check
    .venv/bin/python benchmarks/client_emulator.py --rounds 3 --json out/bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

from common import (
    ROOT,
    die_with_parent,
    emulator_process,
    peak_rss_bytes,
    percentile,
    process_cpu_seconds,
    rss_bytes,
    stage,
    text_table,
)

from flexflow.contract import wire

VARIANTS = ("flexflow", "httpx2", "httpx")
BASELINE = "httpx"
LABELS = {
    "flexflow": "flexflow AsyncFluxClient",
    "httpx2": "httpx2 adapter",
    "httpx": "httpx 0.28 adapter",
}
TARGET_JOBS = 1000
TARGET_CPU_MS_PER_REQUEST = 1.5
TARGET_RSS_GROWTH_MB = 50.0
SAMPLE_SECONDS = 0.5
LAG_PROBE_SECONDS = 0.02
#: The emulator is called the bottleneck when this busy (% of one core) in some 0.5 s window, the
#: client when its event loop runs this late (p99) behind a 20 ms timer.
EMULATOR_BOUND_PERCENT = 90.0
CLIENT_BOUND_LAG_MS = 50.0
CLIENT_BUSY_PERCENT = 75.0

T = TypeVar("T")


# -- the client process ------------------------------------------------------------------------


class Driver(Protocol):
    """What one cycle needs from a client: submit a job, ask whether it is terminal."""

    async def submit(self, body: dict[str, Any], idempotency_key: str) -> str: ...

    async def is_terminal(self, job_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class FlexflowDriver:
    """The production path: flexflow's AsyncFluxClient (httpx2 underneath), default retries."""

    def __init__(self, base_url: str, api_key: str, max_connections: int) -> None:
        import httpx2

        from flexflow.client import AsyncFluxClient

        self.limits = httpx2.Limits(max_connections=max_connections)
        self._client = AsyncFluxClient(base_url, api_key, limits=self.limits)

    async def submit(self, body: dict[str, Any], idempotency_key: str) -> str:
        return await self._client.submit(body, idempotency_key)

    async def is_terminal(self, job_id: str) -> bool:
        return (await self._client.get_job(job_id)).is_terminal

    async def aclose(self) -> None:
        await self._client.aclose()


class AdapterDriver:
    """The same requests as flexflow's, sent with ``module.AsyncClient`` (httpx2 or httpx)."""

    def __init__(
        self, module: ModuleType, base_url: str, api_key: str, max_connections: int, timeout: dict[str, float | None]
    ) -> None:
        self._terminal = {s.value for s in wire.JobStatus if s.is_terminal}
        self._base_url = base_url.rstrip("/")
        self._headers = {wire.API_KEY_HEADER: api_key, "Accept": "application/json"}
        self.limits = module.Limits(max_connections=max_connections)
        self._http = module.AsyncClient(timeout=module.Timeout(**timeout), limits=self.limits, follow_redirects=False)

    async def submit(self, body: dict[str, Any], idempotency_key: str) -> str:
        headers = {**self._headers, wire.IDEMPOTENCY_HEADER: idempotency_key}
        response = await self._http.post(self._base_url + wire.SUBMIT_PATH, json=body, headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
        return str(response.json()["jobId"])

    async def is_terminal(self, job_id: str) -> bool:
        response = await self._http.get(self._base_url + wire.job_path(job_id), headers=self._headers)
        if response.status_code != 200:
            raise RuntimeError(f"poll answered {response.status_code}: {response.text[:200]}")
        return response.json()["status"] in self._terminal

    async def aclose(self) -> None:
        await self._http.aclose()


def make_driver(config: dict[str, Any]) -> FlexflowDriver | AdapterDriver:
    variant = config["variant"]
    args = (config["url"], config["api_key"], config["max_connections"])
    if variant == "flexflow":
        return FlexflowDriver(*args)
    if variant == "httpx2":
        import httpx2

        return AdapterDriver(httpx2, *args, timeout=config["timeout"])
    if variant == "httpx":
        import httpx

        return AdapterDriver(httpx, *args, timeout=config["timeout"])
    raise ValueError(f"unknown variant {variant!r}")


@dataclass
class Tally:
    """What the cycles record while they run."""

    request_latencies: list[float] = field(default_factory=list)
    submit_latencies: list[float] = field(default_factory=list)
    cycle_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    peak_rss_sampled: int = 0
    loop_lags: list[float] = field(default_factory=list)
    emulator_cpu_windows: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.request_latencies)


async def timed(tally: Tally, call: Callable[[], Awaitable[T]], *, submit: bool = False) -> T:
    """Await one HTTP call and record its latency, whether it succeeds or raises."""
    started = time.perf_counter()
    try:
        return await call()
    finally:
        elapsed = time.perf_counter() - started
        tally.request_latencies.append(elapsed)
        if submit:
            tally.submit_latencies.append(elapsed)


async def cycle(driver: Driver, tally: Tally, index: int, run_id: str, poll_interval: float) -> None:
    body = {
        "prompt": f"flexflow benchmark {run_id} job {index}: a lighthouse at dusk, watercolor",
        "model": wire.MODEL_ID,
        "fluxParams": {"resolution": "0.5MP", "seed": index},
    }
    started = time.perf_counter()
    try:
        job_id = await timed(tally, lambda: driver.submit(body, f"bench-{run_id}-{index}"), submit=True)
        tally.in_flight += 1
        tally.peak_in_flight = max(tally.peak_in_flight, tally.in_flight)
        try:
            while True:
                await asyncio.sleep(poll_interval)
                if await timed(tally, lambda: driver.is_terminal(job_id)):
                    break
        finally:
            tally.in_flight -= 1
        tally.cycle_latencies.append(time.perf_counter() - started)
    except Exception as exc:
        tally.errors.append(f"job {index}: {type(exc).__name__}: {exc}")


async def probe_loop_lag(tally: Tally) -> None:
    """How late a 20 ms timer fires: how long ready callbacks wait for the busy event loop."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        tally.loop_lags.append(time.perf_counter() - started - LAG_PROBE_SECONDS)


async def sample(tally: Tally, emulator_pid: int) -> None:
    """Every SAMPLE_SECONDS: this process's RSS, and the emulator's CPU use in that window."""
    last_time, last_cpu = time.perf_counter(), process_cpu_seconds(emulator_pid)
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        tally.peak_rss_sampled = max(tally.peak_rss_sampled, rss_bytes())
        now, cpu = time.perf_counter(), process_cpu_seconds(emulator_pid)
        tally.emulator_cpu_windows.append((cpu - last_cpu) / (now - last_time))
        last_time, last_cpu = now, cpu


async def warm_up(config: dict[str, Any]) -> float:
    """One request on a throwaway client of the variant's library; returns its CPU time in ms."""
    started = time.process_time()
    module = importlib.import_module("httpx" if config["variant"] == "httpx" else "httpx2")
    async with module.AsyncClient() as client:
        (await client.get(config["url"] + "/_emulator/health")).raise_for_status()
    return (time.process_time() - started) * 1000


async def client_run(config: dict[str, Any]) -> dict[str, Any]:
    """One measured run: all cycles at once on this loop, through one shared client."""
    warmup_cpu_ms = await warm_up(config)
    driver = make_driver(config)
    tally = Tally()
    run_id = uuid.uuid4().hex[:12]
    emulator_pid = config["emulator_pid"]
    gc.collect()
    rss_before = rss_bytes()
    tally.peak_rss_sampled = rss_before
    probes = [asyncio.create_task(sample(tally, emulator_pid)), asyncio.create_task(probe_loop_lag(tally))]
    emulator_cpu_before = process_cpu_seconds(emulator_pid)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*(cycle(driver, tally, i, run_id, config["poll_interval"]) for i in range(config["jobs"])))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        emulator_cpu = process_cpu_seconds(emulator_pid) - emulator_cpu_before
    finally:
        for probe in probes:
            probe.cancel()
        await driver.aclose()
    peak_rss = max(peak_rss_bytes(), tally.peak_rss_sampled)
    gc.collect()
    requests = tally.requests
    mb = 1024 * 1024
    return {
        "variant": config["variant"],
        "limits": repr(driver.limits),
        "jobs": config["jobs"],
        "warmup_cpu_ms": warmup_cpu_ms,
        "cycles_completed": len(tally.cycle_latencies),
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "http_requests": requests,
        "wall_seconds": wall,
        "requests_per_second": requests / wall,
        "client_cpu_seconds": cpu,
        "cpu_ms_per_request": cpu / requests * 1000 if requests else float("nan"),
        "client_cpu_percent": cpu / wall * 100,
        "request_p50_ms": percentile(tally.request_latencies, 50) * 1000,
        "request_p99_ms": percentile(tally.request_latencies, 99) * 1000,
        "submit_p50_ms": percentile(tally.submit_latencies, 50) * 1000,
        "submit_p99_ms": percentile(tally.submit_latencies, 99) * 1000,
        "cycle_p50_s": percentile(tally.cycle_latencies, 50),
        "cycle_p99_s": percentile(tally.cycle_latencies, 99),
        "rss_before_mb": rss_before / mb,
        "peak_rss_mb": peak_rss / mb,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_growth_mb": (peak_rss - rss_before) / mb,
        "rss_after_close_mb": rss_bytes() / mb,
        "peak_in_flight_client": tally.peak_in_flight,
        "emulator_cpu_percent": emulator_cpu / wall * 100,
        "emulator_cpu_peak_percent": max(tally.emulator_cpu_windows, default=float("nan")) * 100,
        "loop_lag_p50_ms": percentile(tally.loop_lags, 50) * 1000,
        "loop_lag_p99_ms": percentile(tally.loop_lags, 99) * 1000,
        "load_average": os.getloadavg()[0],
    }


def worker_main(config_json: str) -> int:
    result = asyncio.run(client_run(json.loads(config_json)))
    print(json.dumps(result), flush=True)
    return 0


# -- the supervising process -------------------------------------------------------------------


def run_worker(config: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one client process to completion and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the {config['variant']} client process exited with {process.returncode}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def measure(
    variant: str, args: argparse.Namespace, timeout_settings: dict[str, float | None], api_key: str
) -> dict[str, Any]:
    """One run: a fresh emulator, a fresh client process, the emulator's accounting."""
    with emulator_process(args.queue_seconds, args.processing_seconds) as emulator:
        config = {
            "variant": variant,
            "url": emulator.url,
            "api_key": api_key,
            "jobs": args.jobs,
            "poll_interval": args.poll_interval,
            "max_connections": args.max_connections,
            "timeout": timeout_settings,
            "emulator_pid": emulator.pid,
        }
        job_seconds = args.queue_seconds + args.processing_seconds
        result = run_worker(config, timeout=120 + 10 * (job_seconds + args.poll_interval) + args.jobs * 0.1)
        accounting = emulator.accounting()
    polls = sum(accounting["polls_per_job"].values())
    result.update(
        emulator_requests=accounting["submissions"] + polls,
        emulator_jobs_created=accounting["jobs_created"],
        emulator_jobs_billed=accounting["jobs_billed"],
        emulator_peak_in_flight=accounting["peak_in_flight"],
        emulator_duplicates=accounting["duplicates"]["by_body"],
        emulator_jobs_by_status=accounting["jobs_by_status"],
    )
    return result


# -- the report --------------------------------------------------------------------------------

#: (label, result key, number format, include a ratio to the baseline)
ROWS: tuple[tuple[str, str, str, bool], ...] = (
    ("jobs completed", "cycles_completed", "{:.0f}", False),
    ("errors", "errors", "{:.0f}", False),
    ("HTTP requests (client)", "http_requests", "{:.0f}", False),
    ("HTTP requests (emulator saw)", "emulator_requests", "{:.0f}", False),
    ("wall time, s", "wall_seconds", "{:.2f}", False),
    ("requests/s", "requests_per_second", "{:.0f}", True),
    ("client CPU, s", "client_cpu_seconds", "{:.2f}", True),
    ("client CPU/request, ms", "cpu_ms_per_request", "{:.3f}", True),
    ("client CPU, % of a core", "client_cpu_percent", "{:.0f}", True),
    ("event-loop lag p50, ms", "loop_lag_p50_ms", "{:.1f}", True),
    ("event-loop lag p99, ms", "loop_lag_p99_ms", "{:.1f}", True),
    ("request latency p50, ms", "request_p50_ms", "{:.1f}", True),
    ("request latency p99, ms", "request_p99_ms", "{:.1f}", True),
    ("  submit latency p99, ms", "submit_p99_ms", "{:.1f}", True),
    ("cycle latency p50, s", "cycle_p50_s", "{:.2f}", True),
    ("cycle latency p99, s", "cycle_p99_s", "{:.2f}", True),
    ("RSS before run, MB", "rss_before_mb", "{:.1f}", True),
    ("peak RSS, MB", "peak_rss_mb", "{:.1f}", True),
    ("RSS growth, MB", "rss_growth_mb", "{:.1f}", True),
    ("RSS after close, MB", "rss_after_close_mb", "{:.1f}", True),
    ("peak jobs in flight (client)", "peak_in_flight_client", "{:.0f}", False),
    ("peak jobs in flight (emulator)", "emulator_peak_in_flight", "{:.0f}", False),
    ("jobs billed (emulator)", "emulator_jobs_billed", "{:.0f}", False),
    ("emulator CPU, % of a core", "emulator_cpu_percent", "{:.0f}", False),
    ("emulator CPU, busiest 0.5 s, %", "emulator_cpu_peak_percent", "{:.0f}", False),
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, the median of every numeric result over its runs."""
    summary: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if mine:
            keys = [k for k, v in mine[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
            summary[variant] = {k: statistics.median(r[k] for r in mine) for k in keys}
    return summary


def render_table(summary: dict[str, dict[str, float]]) -> str:
    others = [v for v in VARIANTS if v != BASELINE and v in summary]
    headers = ["metric", *(LABELS[v] for v in VARIANTS if v in summary)]
    headers += [f"{BASELINE} ÷ {v}" for v in others] if BASELINE in summary else []
    lines = []
    for label, key, number, with_ratio in ROWS:
        row = [label, *(number.format(summary[v][key]) for v in VARIANTS if v in summary)]
        if BASELINE in summary:
            for variant in others:
                base, value = summary[BASELINE][key], summary[variant][key]
                row.append(f"{base / value:.2f}x" if with_ratio and value else "")
        lines.append(row)
    return text_table(headers, lines)


@dataclass(frozen=True)
class Check:
    text: str
    ok: bool | None  # None: shown for information only (a target below the job count it is stated for)

    @property
    def label(self) -> str:
        return "INFO" if self.ok is None else "PASS" if self.ok else "FAIL"


def evaluate(summary: dict[str, dict[str, float]], runs: list[dict[str, Any]], jobs: int) -> list[Check]:
    """Targets on the flexflow row (gating from 1,000 jobs on), and sanity checks on every run."""
    checks: list[Check] = []
    if "flexflow" in summary:
        ff = summary["flexflow"]
        cpu, growth = ff["cpu_ms_per_request"], ff["rss_growth_mb"]
        gating = jobs >= TARGET_JOBS
        at = f" at {jobs} concurrent jobs" + ("" if gating else f" (the target is stated for {TARGET_JOBS:,})")
        cpu_text = f"flexflow client CPU/request {cpu:.3f} ms <= {TARGET_CPU_MS_PER_REQUEST} ms{at}"
        checks.append(Check(cpu_text, cpu <= TARGET_CPU_MS_PER_REQUEST if gating else None))
        growth_text = f"flexflow client RSS growth {growth:.1f} MB < {TARGET_RSS_GROWTH_MB:.0f} MB{at}"
        checks.append(Check(growth_text, growth < TARGET_RSS_GROWTH_MB if gating else None))
    for run in runs:
        text = (
            f"{LABELS[run['variant']]}: {run['cycles_completed']}/{jobs} jobs completed, {run['errors']} errors, "
            f"{run['emulator_jobs_billed']} billed, {run['emulator_duplicates']} duplicates; "
            f"{run['http_requests']} requests sent, {run['emulator_requests']} seen by the emulator"
        )
        ok = (
            run["errors"] == 0
            and run["cycles_completed"] == jobs == run["emulator_jobs_billed"]
            and run["emulator_duplicates"] == 0
            and run["http_requests"] == run["emulator_requests"]
        )
        checks.append(Check(text, ok))
    return checks


def bottleneck_notes(runs: list[dict[str, Any]], jobs: int, job_seconds: float) -> list[str]:
    """Per run, which side held the requests up: the emulator, the client's event loop, or neither."""
    notes = []
    for run in runs:
        busiest, lag = run["emulator_cpu_peak_percent"], run["loop_lag_p99_ms"]
        if busiest >= EMULATOR_BOUND_PERCENT:
            verdict = "the EMULATOR was saturated; it, not the client, set the latencies then"
        elif lag >= CLIENT_BOUND_LAG_MS and run["client_cpu_percent"] >= CLIENT_BUSY_PERCENT:
            verdict = "the CLIENT was saturated; request latencies are mostly waiting behind its own work"
        elif lag >= CLIENT_BOUND_LAG_MS:
            verdict = (
                "the CLIENT's event loop ran late while the process had the CPU only part of the time: "
                f"other load on the machine (load average {run['load_average']:.1f}) starved it"
            )
        else:
            verdict = "neither side was saturated"
        note = (
            f"{LABELS[run['variant']]}: client CPU {run['client_cpu_percent']:.0f} % of a core, "
            f"event-loop lag p99 {lag:.0f} ms; emulator CPU {run['emulator_cpu_percent']:.0f} % "
            f"(busiest 0.5 s {busiest:.0f} %): {verdict}"
        )
        if run["emulator_peak_in_flight"] < jobs:
            slow_submits = run["submit_p99_ms"] / 1000 > job_seconds
            note += f"; only {run['emulator_peak_in_flight']} of {jobs} jobs were in flight at once " + (
                f"(submits took up to {run['submit_p99_ms'] / 1000:.1f} s, longer than a job)"
                if slow_submits
                else "(raise --queue-seconds/--processing-seconds)"
            )
        notes.append(note)
    return notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="concurrent submit+poll cycles (default 1000)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (default 1.0)")
    parser.add_argument("--queue-seconds", type=float, default=1.0, help="emulator: time QUEUED (default 1.0)")
    parser.add_argument("--processing-seconds", type=float, default=2.0, help="emulator: time PROCESSING (default 2.0)")
    parser.add_argument(
        "--max-connections", type=int, default=100, help="Limits(max_connections=N) of every client (default 100)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs per variant; the table shows medians (default 1)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every run and the summary as JSON")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        parser.error(f"--variants takes a subset of {','.join(VARIANTS)}")
    if args.jobs < 1 or args.rounds < 1 or args.max_connections < 1 or args.poll_interval <= 0:
        parser.error("--jobs, --rounds and --max-connections must be >= 1, --poll-interval > 0")
    args.variants = variants
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the emulator and the client process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    import httpx
    import httpx2

    from flexflow.client import DEFAULT_TIMEOUT
    from flexflow.emulator import DEFAULT_TEST_KEY

    timeout_settings = {
        "connect": DEFAULT_TIMEOUT.connect,
        "read": DEFAULT_TIMEOUT.read,
        "write": DEFAULT_TIMEOUT.write,
        "pool": DEFAULT_TIMEOUT.pool,
    }
    load = os.getloadavg()
    print(f"flexflow client benchmark: {args.jobs} concurrent submit+poll cycles, one event loop, one client")
    print(
        f"  python {platform.python_version()}, httpx2 {httpx2.__version__}, httpx {httpx.__version__}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"  emulator jobs: queue {args.queue_seconds:g} s + processing {args.processing_seconds:g} s; "
        f"poll every {args.poll_interval:g} s; 0.5MP requests"
    )
    print(
        f"  every client: Limits(max_connections={args.max_connections}) (keep-alive: all), "
        f"timeouts {timeout_settings} (flexflow's DEFAULT_TIMEOUT)"
    )
    print("  each run: a fresh emulator process and a fresh client process")

    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        shift = round_index % len(args.variants)
        for variant in args.variants[shift:] + args.variants[:shift]:
            with stage(f"round {round_index + 1}/{args.rounds}: {LABELS[variant]}"):
                runs.append(measure(variant, args, timeout_settings, DEFAULT_TEST_KEY))

    summary = summarize(runs)
    print()
    print(
        f"{'medians of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'results'} "
        f"(ratios: {BASELINE}'s number divided by the variant's; > 1 means {BASELINE}'s is larger)"
    )
    print(render_table(summary))
    print()
    checks = evaluate(summary, runs, args.jobs)
    for check in checks:
        print(f"{check.label}  {check.text}")
    notes = bottleneck_notes(runs, args.jobs, args.queue_seconds + args.processing_seconds)
    for note in notes:
        print(f"bottleneck: {note}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
            "environment": {
                "python": platform.python_version(),
                "httpx2": httpx2.__version__,
                "httpx": httpx.__version__,
                "cpus": os.cpu_count(),
                "load_average": load,
            },
            "limits": {"max_connections": args.max_connections, "timeout": timeout_settings},
            "runs": runs,
            "summary": summary,
            "checks": [{"check": check.text, "result": check.label} for check in checks],
            "notes": notes,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(check.ok is not False for check in checks) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the emulator and client processes were stopped", file=sys.stderr)
        sys.exit(130)
