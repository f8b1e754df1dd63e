"""``flexflow run SPEC``: one run of a spec's DAG through Airflow itself, on this machine.

The DAG runs with ``dag.test()`` in a child process, in a private AIRFLOW_HOME with a SQLite
database (created on first use), from a DAG bundle holding only this spec. Without
``--connection`` the embedded emulator stands in for the API: no key, no network. The parent
process shows progress from the run's task states, then a summary, the manifest and a contact
sheet. Airflow's own log of the run goes to a file, whose path is printed.

The command owns its processes, because every job the child submits is billed:

- the child runs in a process group of its own and dies with the command, even when the command is
  SIGKILLed (``PR_SET_PDEATHSIG`` on Linux, and a watchdog that kills the group once the parent is gone);
- Ctrl-C and SIGTERM kill the child's group at once (nothing is submitted after the stop) and list
  the jobs already submitted;
- each run is recorded under the home before it starts (logical date, spec digest), so running the
  same spec again after a crash resumes that run: same run id, same Idempotency-Keys, and the API
  answers with the jobs it already created instead of billing them again;
- one home serves one ``flexflow run`` at a time (an flock on ``run.lock``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from flexflow.airflow.pools import ensure_pools
from flexflow.compiler.dag_file import DAG_FILE_NAME, SPECS_DIR_ENV, dag_file_source
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer
from flexflow.errors import FlexflowError
from flexflow.spec import Spec, SpecError, load_spec
from flexflow.spec.airflow_rules import CONN_ID
from flexflow.spec.checks import CONTACT_SHEET_NAME
from flexflow.spec.report import render_text, use_color

BUNDLE_FILE = DAG_FILE_NAME
RESULT_FILE = "last-run.json"
LOCK_FILE = "run.lock"
RUNS_DIR = "runs"
#: The embedded emulator's jobs: quick, but slow enough to see them queue and process.
DEMO_EMULATOR = EmulatorConfig(queue_seconds=0.5, processing_seconds=2.0)
#: How a task's failure reads in Airflow's log: the exception's class, then its message, on one line.
_FAILURE = re.compile(r"\b(?:AirflowFailException|AirflowException|AirflowSensorTimeout|DownloadError): ([^\n]+)")
#: How often the child's watchdog looks for its parent.
WATCHDOG_SECONDS = 0.2
EXIT_FAILED, EXIT_REFUSED = 1, 2
#: The shell's convention for a command ended by a signal: 128 + the signal's number.
EXIT_SIGNALLED = {signal.SIGINT: 130, signal.SIGTERM: 143}
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class RunError(FlexflowError):
    """A ``flexflow run`` input that cannot be used (the message says which and what to do)."""


def check_connection_id(connection_id: str) -> str:
    """The id, when Airflow accepts it as a connection id; RunError otherwise."""
    # The spec's rule, so that a --connection and a spec's connection_id are held to the same one.
    if not CONN_ID.fullmatch(connection_id):
        raise RunError(
            f"{connection_id!r} is not an Airflow connection id: use 1 to 250 of the characters "
            r"A-Z a-z 0-9 _ # ! ( ) - . : / \ (e.g. apiframe_default)"
        )
    return connection_id


@dataclass(frozen=True)
class RunHome:
    root: Path

    @property
    def dags(self) -> Path:
        return self.root / "dags"

    @property
    def db(self) -> Path:
        return self.root / "airflow.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def record_file(self, dag_id: str) -> Path:
        return self.root / RUNS_DIR / f"{dag_id}.json"

    def env(self) -> dict[str, str]:
        bundle = {
            "name": "flexflow-run",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {"path": str(self.dags)},
        }
        return {
            **os.environ,
            "AIRFLOW_HOME": str(self.root),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
            SPECS_DIR_ENV: "",  # the bundle's DAG file names its one spec; a deployment's folder must not win
        }


@dataclass(frozen=True)
class SubmittedJob:
    image: str
    variant: str
    job_id: str | None  # None: the request was sent, its answer never came (the resumed try sends it again)


@dataclass(frozen=True)
class RunRecord:
    """One run of a spec, written under the home before its child starts: what a rerun needs to resume it.

    ``run_after`` makes the run id (``manual__<run_after>``), and with it every Idempotency-Key of the
    run; ``logical_date`` makes the templates' dates. ``state`` stays ``running`` until the child
    reports how the run ended, so a record still ``running`` names a run that was interrupted.
    """

    dag_id: str
    logical_date: str
    run_after: str
    spec_sha256: str
    connection: str | None
    conf: dict[str, Any] | None
    state: str = "running"
    #: The jobs its earlier, interrupted attempts submitted. A resumed ``dag.test()`` recreates the run, and
    #: the submit records go with the old one (each comes back as its task reconnects): kept here, a stop
    #: still lists every job the run paid for.
    earlier_jobs: tuple[SubmittedJob, ...] = ()

    @property
    def run_id(self) -> str:
        return f"manual__{self.run_after}"  # Airflow's DagRun.generate_run_id for a manual run

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        try:
            fields = json.loads(path.read_text())
            fields["earlier_jobs"] = tuple(SubmittedJob(**job) for job in fields.get("earlier_jobs", ()))
            return cls(**fields)
        except (OSError, ValueError, TypeError, AttributeError):  # none yet, or unreadable: nothing to resume
            return None

    def jobs(self, db: Path, spec: Spec, *, recover: bool = True) -> list[SubmittedJob]:
        """Every job this run submitted: the records in its database, over those of its earlier attempts."""
        current = {(job.image, job.variant): job for job in _submitted_jobs(db, spec, self.run_id, recover=recover)}
        jobs = {(job.image, job.variant): job for job in self.earlier_jobs} | current
        order = [(image.name, variant.label) for image in spec.images for variant in image.variants]
        return [jobs[key] for key in order if key in jobs]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(asdict(self), indent=2))
        partial.replace(path)  # atomic: a kill mid-write leaves the previous record


def prepare(home: RunHome, spec_file: Path, connection_id: str | None) -> None:
    """A bundle with one DAG file that compiles only this spec, the same way the DAG-folder loader does."""
    if connection_id is not None:
        check_connection_id(connection_id)  # it is written into the DAG file's source
    home.dags.mkdir(parents=True, exist_ok=True)
    home.logs.mkdir(parents=True, exist_ok=True)
    for stale in home.dags.glob("*.py"):
        stale.unlink()
    (home.dags / BUNDLE_FILE).write_text(dag_file_source(str(spec_file), connection_id))


# -- one run per home ------------------------------------------------------------------------------


@contextlib.contextmanager
def home_lock(home: RunHome) -> Iterator[int | None]:
    """The home's lock (its fd), or None when another ``flexflow run`` holds it; its pid is in the file."""
    fd = os.open(home.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield fd
    finally:
        os.close(fd)


def _lock_holder(home: RunHome) -> str:
    try:
        pid = int((home.root / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return "another flexflow run"
    return (
        f"flexflow run (pid {pid})" if _alive(pid) else f"the Airflow process of a flexflow run whose pid {pid} ended"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the parent ------------------------------------------------------------------------------------


class _Stopped(Exception):
    """SIGINT or SIGTERM reached ``flexflow run``: stop the child and report."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def run(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(render_text(exc.problems, use_color(sys.stderr)), file=sys.stderr)
        return EXIT_FAILED
    if spec.publish.review:
        # dag.test() keeps a run waiting for input until something answers it, and nothing here serves
        # Airflow's Required Actions: the run would pay for its images, then wait forever.
        print(
            f"flexflow run: {spec.dag_id} has publish.review: required, and flexflow run has no Airflow UI to "
            "approve its images in; nothing was submitted. Try the spec with review: none here, or deploy it "
            "and approve the run in Airflow's Required Actions",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    home = RunHome(Path(args.home).resolve())
    with contextlib.ExitStack() as stack:
        try:
            home.root.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(home_lock(home))
            if lock is not None:
                prepare(home, Path(args.spec).resolve(), args.connection)
        except (OSError, ValueError) as exc:  # not writable, a path too long, ...
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"flexflow run: cannot use the home {home.root}: {why}; give another --home", file=sys.stderr)
            return EXIT_REFUSED
        if lock is None:
            print(
                f"flexflow run: {_lock_holder(home)} is already using {home.root}; wait for it to end, "
                "or give this run another --home",
                file=sys.stderr,
            )
            return EXIT_REFUSED
        previous = {signum: signal.signal(signum, _raise_stopped) for signum in EXIT_SIGNALLED}
        try:
            return _run_locked(args, spec, home, lock)
        except _Stopped as stopped:
            print(f"\nstopped by {stopped}", file=sys.stderr)
            return EXIT_SIGNALLED[signal.Signals(stopped.signum)]
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _run_locked(args: argparse.Namespace, spec: Spec, home: RunHome, lock: int) -> int:
    record = _this_run(home, spec, Path(args.spec).resolve(), args.connection)
    env = home.env()
    log_file = home.logs / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    with log_file.open("w") as log:
        if not home.db.exists():
            print(f"creating the Airflow database in {home.root} (first run only) ...", flush=True)
            migrate = [sys.executable, "-m", "airflow", "db", "migrate"]
            if subprocess.run(migrate, env=env, stdout=log, stderr=log, check=False).returncode != 0:
                print(f"creating the Airflow database failed; nothing was submitted. Airflow's log: {log_file}")
                return EXIT_FAILED
        emulator = None if args.connection else EmulatorServer(DEMO_EMULATOR).start()
        try:
            if emulator is not None:
                env[f"AIRFLOW_CONN_{spec.connection_id.upper()}"] = json.dumps(_emulator_connection(emulator.url))
                print(f"no --connection given: the embedded emulator at {emulator.url} stands in for the API")
            record.save(home.record_file(spec.dag_id))  # before anything is submitted
            print(f"running {spec.dag_id}: {spec.job_count} job(s) ...", flush=True)
            child = _start_child(home, record, env, log, lock)
            try:
                _show_progress(child, home.db, spec, record)
            except _Stopped as stopped:
                _stop(child)
                result = _read_result(home)
                if result is not None:  # it ended just before the stop: report that (a rerun won't resume it)
                    print(f"\nstopped by {stopped}, but the run of {spec.dag_id} had already ended")
                    replace(record, state=str(result.get("state"))).save(home.record_file(spec.dag_id))
                    _report(home, spec, result, log_file)
                    return EXIT_SIGNALLED[signal.Signals(stopped.signum)]
                print(f"\nstopped by {stopped}: the run of {spec.dag_id} did not finish")
                _print_submitted(record.run_id, spec, record.jobs(home.db, spec))
                print(_resume_hint(args), flush=True)
                return EXIT_SIGNALLED[signal.Signals(stopped.signum)]
        finally:
            if emulator is not None:
                emulator.stop()
    return _after_child(args, home, spec, record, child, log_file)


def _this_run(home: RunHome, spec: Spec, spec_file: Path, connection: str | None) -> RunRecord:
    """The interrupted run of this spec to resume, or a new run; says which, and why when it cannot resume."""
    digest = hashlib.sha256(spec_file.read_bytes()).hexdigest()
    now = datetime.now(UTC).replace(microsecond=0)
    # A manual run before the DAG's start_date would have no tasks: run it as of the start.
    logical = spec.start_date if spec.start_date and spec.start_date > now else now
    fresh = RunRecord(spec.dag_id, logical.isoformat(), now.isoformat(), digest, connection, None)
    previous = RunRecord.load(home.record_file(spec.dag_id))
    unread = _read_result(home)  # the run ended, but its command was killed before it could read how
    if previous is not None and unread is not None and unread.get("run_id") == previous.run_id:
        previous = replace(previous, state=str(unread.get("state")))
        print(
            f"the run {previous.run_id} of {spec.dag_id} ended ({previous.state}) after its command was stopped "
            "or killed, so it is not resumed: this is a new run",
            flush=True,
        )
    if previous is None or previous.state != "running":
        return fresh  # a finished run (success or failure) is not resumed
    submitted = previous.jobs(home.db, spec)
    if previous.spec_sha256 == digest and previous.connection == connection:
        fate = (
            "they are reconnected to (same Idempotency-Keys), not paid again"
            if connection
            else "the embedded emulator that had them is gone, so they are generated again (it costs nothing)"
        )
        print(
            f"resuming the interrupted run {previous.run_id} of {spec.dag_id}: {len(submitted)} job(s) were "
            f"submitted before it stopped; {fate}",
            flush=True,
        )
        return replace(previous, earlier_jobs=tuple(submitted))
    why = "the spec file changed" if previous.spec_sha256 != digest else "the --connection changed"
    print(
        f"cannot resume the interrupted run {previous.run_id} of {spec.dag_id}: {why} since it started, so its "
        f"requests would differ. Its {len(submitted)} submitted job(s) were already paid; this is a new run.",
        flush=True,
    )
    _print_submitted(previous.run_id, spec, submitted)
    return fresh


def _start_child(
    home: RunHome, record: RunRecord, env: dict[str, str], log: IO[str], lock: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flexflow.run",
            str(home.root),
            record.dag_id,
            record.logical_date,
            record.run_after,
            str(os.getpid()),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Its own process group: Ctrl-C on the terminal reaches only us, and we stop the whole group.
        start_new_session=True,
        # The child holds the home's lock too: no new run starts while an orphan could still be paying.
        pass_fds=(lock,),
    )


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's group (a task's own subprocesses too); returns once the child has ended.

    Not SIGTERM first: once a task has run, Airflow's task runner has taken SIGTERM over for the rest of
    the process (it calls that task's ``on_kill`` and carries on), so under ``dag.test()`` a SIGTERM
    stops nothing, and the run went on, submitting and paying, until the SIGKILL came. A kill at any
    point is safe (the process-fault tests kill the command at every stage): a task's request and
    Idempotency-Key are stored before it is sent, SQLite keeps each transaction whole, and a rerun resumes.
    """
    for signum in EXIT_SIGNALLED:  # a second Ctrl-C must not interrupt the stop
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _after_child(
    args: argparse.Namespace,
    home: RunHome,
    spec: Spec,
    record: RunRecord,
    child: subprocess.Popen[bytes],
    log_file: Path,
) -> int:
    result = _read_result(home)
    if result is None:  # the child died before it could say how the run ended: the run can be resumed
        how = f"was killed by {signal.Signals(-child.returncode).name}" if child.returncode < 0 else "crashed"
        print(f"\nthe Airflow process running {spec.dag_id} {how} before the run finished")
        _print_submitted(record.run_id, spec, record.jobs(home.db, spec))
        print(_resume_hint(args))
        print(f"Airflow's log of the run: {log_file}")
        return EXIT_FAILED
    replace(record, state=str(result.get("state"))).save(home.record_file(spec.dag_id))
    return _report(home, spec, result, log_file)


def _read_result(home: RunHome) -> dict[str, Any] | None:
    result_file = home.root / RESULT_FILE
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return None
    finally:
        result_file.unlink(missing_ok=True)
    return result if isinstance(result, dict) else None


def _resume_hint(args: argparse.Namespace) -> str:
    connection = f" --connection {args.connection}" if args.connection else ""
    return (
        f"to resume it, run the same command again: flexflow run {args.spec}{connection} --home {args.home}\n"
        "(unchanged spec: the submitted jobs are reconnected to, not paid again)"
    )


def _emulator_connection(url: str) -> dict[str, Any]:
    return {
        "conn_type": "apiframe",
        "host": url,
        "password": DEFAULT_TEST_KEY,
        "extra": {"job_link": "{base_url}/_emulator/jobs/{job_id}"},
    }


# -- what the run's metadata database says -------------------------------------------------------


def _query(db: Path, sql: str, *args: object, recover: bool = False) -> list[tuple[Any, ...]]:
    """Rows of the run's database; none while it is missing or busy (progress reads again next tick).

    ``recover``: read as a writer, waiting longer. A child killed in the middle of a write leaves a hot
    journal, which only a connection that may write rolls back: read-only, the jobs it submitted would
    read as none, just when they must be listed.
    """
    target, timeout = (str(db), 10.0) if recover else (f"file:{db}?mode=ro", 1.0)
    try:
        with sqlite3.connect(target, uri=not recover, timeout=timeout) as connection:
            return connection.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []


def _submitted_jobs(db: Path, spec: Spec, run_id: str, *, recover: bool = True) -> list[SubmittedJob]:
    """The jobs the run's submit tasks sent, from ``task_state_store`` (written before each request left).

    ``recover`` (the child has ended: the jobs must be listed) as in :func:`_query`; the progress display,
    while the child runs, reads without it and never waits.
    """
    rows = _query(
        db,
        "SELECT task_id, map_index, value FROM task_state_store WHERE dag_id = ? AND run_id = ? AND key = ? "
        "ORDER BY task_id, map_index",
        spec.dag_id,
        run_id,
        "flexflow_job",
        recover=recover,
    )
    images = {image.name: image for image in spec.images}
    jobs = []
    for task_id, map_index, value in rows:
        image = images.get(str(task_id).split(".", 1)[0])
        if image is None:
            continue
        variant = image.variants[map_index].label if 0 <= map_index < len(image.variants) else ""
        jobs.append(SubmittedJob(image.name, variant, _job_id(value)))
    return jobs


def _job_id(value: object) -> str | None:
    try:
        stored = json.loads(str(value))
        while isinstance(stored, str):  # stored as a JSON string of the JSON record
            stored = json.loads(stored)
    except ValueError:
        return None
    job_id = stored.get("job_id") if isinstance(stored, dict) else None
    return job_id if isinstance(job_id, str) else None


def _print_submitted(run_id: str, spec: Spec, jobs: list[SubmittedJob]) -> None:
    print(f"jobs submitted by run {run_id}: {len(jobs)} of {spec.job_count}")
    for job in jobs:
        print(f"  {job.image}{job.variant}: {job.job_id or 'sent, no answer received (it may exist)'}")


def _show_progress(child: subprocess.Popen[bytes], db: Path, spec: Spec, record: RunRecord) -> None:
    shown = ""
    started = time.monotonic()
    while child.poll() is None:
        time.sleep(0.5)
        states = _query(
            db, "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", spec.dag_id, record.run_id
        )
        if not states:
            continue
        submitted = sum(1 for job in record.jobs(db, spec, recover=False) if job.job_id)
        line = _progress_line(states, submitted, spec.job_count)
        if line != shown:
            print(f"  [{time.monotonic() - started:5.1f}s] {line}", flush=True)
            shown = line


def _progress_line(states: list[tuple[str, str | None]], submitted: int, jobs: int) -> str:
    """Jobs submitted (the submit tasks' records), in flight, done and published.

    A compiled submit task holds its job until the job has ended (it waits for it, deferred; under
    ``dag.test()`` its trigger runs inline, so the run's jobs go one at a time): a job submitted whose
    submit task has not finished is in flight.
    """

    def count(step: str, *wanted: str) -> int:
        return sum(1 for task_id, state in states if task_id.endswith(f".{step}") and state in wanted)

    in_flight = max(0, submitted - count("submit", "success", "failed", "upstream_failed"))
    failed = sum(1 for _, state in states if state in ("failed", "upstream_failed"))
    reused = count("submit", "skipped")  # a submit skips only when its picture is published already
    line = (
        f"submitted {submitted}/{jobs}{f' | reused {reused}' if reused else ''} | in flight {in_flight} | "
        f"done {count('wait', 'success')}/{jobs} | published {count('publish', 'success')}/{jobs}"
    )
    return line + (f" | FAILED {failed}" if failed else "")


# -- the report ------------------------------------------------------------------------------------


def _report(home: RunHome, spec: Spec, result: dict[str, Any], log_file: Path) -> int:
    if result.get("state") != "success":
        print(f"\nthe run of {spec.dag_id} ended {result.get('state')}: {result.get('error') or ''}".rstrip())
        for task_id, map_index, state in _query(
            home.db,
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "AND state IN ('failed', 'upstream_failed')",
            spec.dag_id,
            result.get("run_id", ""),
        ):
            print(f"  {task_id}{'' if map_index < 0 else f'[{map_index}]'}: {state}")
        for reason in _failure_reasons(log_file.read_text(errors="replace")):
            print(f"  why: {reason}")
        print(f"Airflow's log of the run: {log_file}")
        return EXIT_FAILED
    [(value,)] = _query(
        home.db,
        "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'finalize' AND key = 'return_value'",
        spec.dag_id,
        result["run_id"],
    ) or [("{}",)]
    manifest_url = json.loads(value).get("manifest")
    print(f"\n{spec.dag_id}: run {result['run_id']} succeeded")
    if not manifest_url or urlsplit(manifest_url).scheme not in ("file", ""):
        print(f"published to {spec.publish.to} (manifest: {manifest_url or 'not written'})")
        print(f"Airflow's log of the run: {log_file}")
        return 0
    manifest_path = Path(urlsplit(manifest_url).path)
    manifest = json.loads(manifest_path.read_text())
    _summary(manifest)
    spend = manifest.get("spend", {})
    print(
        f"\nspend: {spend.get('submitted', 0)} job(s) submitted, {spend.get('reused', 0)} reused from earlier runs"
        f" (not paid again), {spend.get('credits', 0)} credits"
    )
    sheet = manifest_path.parent / CONTACT_SHEET_NAME  # finalize wrote it beside the manifest
    print(f"\nmanifest:      {manifest_path}\ncontact sheet: {sheet}\nAirflow's log: {log_file}")
    return 0


def _failure_reasons(log: str, most: int = 5) -> list[str]:
    """The messages tasks failed with, first seen first: a refused target or a failed job, in a line each."""
    reasons = dict.fromkeys(match.group(1).strip() for match in _FAILURE.finditer(log))
    return list(reasons)[:most]


def _summary(manifest: dict[str, Any]) -> None:
    header = ["image", "variant", "size", "format", "bytes", "job id", "file"]
    rows = [
        [
            f["image"],
            f["variant"] or "-",
            f"{f['width']}x{f['height']}",
            f["format"],
            f"{f['bytes']:,}",
            f["job_id"],
            f["name"],
        ]
        for f in manifest["files"]
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# -- the child: Airflow runs the DAG ---------------------------------------------------------------


def die_with_parent(parent_pid: int, *, kernel: bool = True) -> None:
    """End this process group once ``parent_pid`` (the ``flexflow run`` command) is gone, however it ended.

    Two ways, each ending the whole group (so a process a task started dies too): the kernel's
    parent-death signal (Linux), SIGHUP, which Airflow leaves alone (it takes over SIGTERM while a
    task runs), arrives the moment the parent dies; a watchdog thread notices a new parent within
    0.2 s, and is the only way on systems without ``prctl`` (``kernel=False`` tries that alone).
    Set up here, first thing in the child, rather than in a ``preexec_fn``: the parent may run the
    embedded emulator's thread, and code run between fork and exec of a threaded process can
    deadlock. Checking the parent after ``prctl`` closes the window in which it died before.
    """
    signal.signal(signal.SIGHUP, _end_group)
    libc_name = ctypes.util.find_library("c") if kernel and sys.platform == "linux" else None
    if libc_name:
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_SECONDS)
        _end_group()

    if os.getppid() != parent_pid:
        _end_group()
    threading.Thread(target=watch, name="flexflow-watchdog", daemon=True).start()


def _end_group(signum: int | None = None, frame: FrameType | None = None) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def child_main(home_root: str, dag_id: str, logical_date: str, run_after: str, parent_pid: str) -> int:
    """Runs in the child process, with the private AIRFLOW_HOME in its environment."""
    die_with_parent(int(parent_pid))
    import runpy

    home = RunHome(Path(home_root))
    result: dict[str, Any]
    try:
        dag = runpy.run_path(str(home.dags / BUNDLE_FILE))[dag_id]
        ensure_pools(task.pool for task in dag.tasks)  # the spec's pool, counting deferred tasks
        # The recorded dates: a resumed run gets its run id, and so its Idempotency-Keys, back.
        dag_run = dag.test(
            logical_date=datetime.fromisoformat(logical_date), run_after=datetime.fromisoformat(run_after)
        )
        result = {"state": str(dag_run.state), "run_id": dag_run.run_id}
    except Exception as exc:
        result = {"state": "error", "error": f"{type(exc).__name__}: {exc}"}
    (home.root / RESULT_FILE).write_text(json.dumps(result))
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(child_main(*sys.argv[1:6]))
