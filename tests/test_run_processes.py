"""`flexflow run` owns its processes: killed at any stage and run again, it pays once and publishes everything.

Each case runs ``flexflow run --connection`` as a real command against a SEPARATE emulator process
(``flexflow emulator``), so the bill survives our kills, and kills it with real signals: SIGKILL of
the command at each stage of a run, SIGKILL of only its Airflow child, SIGTERM and Ctrl-C (SIGINT).
The process-fault table of docs/guarantees.md is written from what the cases measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from flexflow.emulator import DEFAULT_TEST_KEY
from flexflow.emulator.server import announced_url
from tests.conftest import ROOT
from tests.deployment.harness.emulator import EmulatorControl, emulator_command
from tests.guarantees_doc import publish_table

pytestmark = pytest.mark.timeout(600)

CONNECTION = "flexflow_processes"
DAG_ID = "process_faults"
JOBS = 2
#: How long a faulted request is held open: long enough to kill the command while it waits for it.
HELD_SECONDS = 3.0
#: Bounded waits: a stage is reached, a killed process group is gone, a run ends.
STAGE_TIMEOUT, GONE_TIMEOUT, RUN_TIMEOUT = 120.0, 10.0, 240.0
#: A stopped command ends well within this (it used to give its child a 5 s grace, in which the run went on).
STOPPED_WITHIN = 3.0
SPEC = """\
version: 1
dag_id: process_faults
schedule: null
defaults:
  flux: {{resolution: 0.5MP, output_format: png}}
  retries: 2
  retry_delay: 1s
  poll_interval: 1s
images:
  - name: poster
    prompt: "{prompt}"
    variants: {{seed: [1, 2]}}
publish:
  to: "file://{target}"
  filename: "{{image}}{{variant}}.{{ext}}"
  manifest: true
  asset: flexflow://process_faults
"""


# -- the emulator, a process of its own ------------------------------------------------------------


@contextmanager
def emulator_process(*flags: str) -> Iterator[EmulatorControl]:
    process = subprocess.Popen(
        emulator_command(*flags), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        url = announced_url(process.stdout.readline())
        assert url, "the emulator did not announce its URL"
        yield EmulatorControl(url)
    finally:
        process.terminate()
        process.wait(10)


def requests_seen(control: EmulatorControl) -> int:
    """Submits and status checks the emulator has answered so far."""
    accounting = control.accounting()
    polls: dict[str, int] = accounting["polls_per_job"]
    return int(accounting["submissions"]) + sum(polls.values())


def duplicates(accounting: dict[str, Any]) -> int:
    by_key: dict[str, int] = accounting["duplicates"]["by_key"]
    return sum(by_key.values()) + int(accounting["duplicates"]["by_body"])


# -- the command -----------------------------------------------------------------------------------


@dataclass
class Workspace:
    """A home, a spec and its target, all under tmp_path, and the connection to an emulator."""

    root: Path
    url: str

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @classmethod
    def create(cls, root: Path, url: str, airflow_db: Path, prompt: str = "A poster of a lighthouse") -> Workspace:
        workspace = cls(root, url)
        workspace.home.mkdir(parents=True)
        shutil.copy(airflow_db, workspace.home / "airflow.db")  # migrated once per session
        workspace.write_spec(prompt)
        return workspace

    def write_spec(self, prompt: str) -> None:
        self.spec.write_text(SPEC.format(prompt=prompt, target=self.target))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLEXFLOW_SPECS"))}
        connection = f'{{"conn_type": "apiframe", "host": "{self.url}", "password": "{DEFAULT_TEST_KEY}"}}'
        return {**env, f"AIRFLOW_CONN_{CONNECTION.upper()}": connection}

    def images(self) -> list[str]:
        return sorted(p.name for p in self.target.glob("*.png"))

    def partial_files(self) -> list[Path]:
        return list(self.target.rglob("*.partial")) if self.target.exists() else []

    def asset_events(self) -> int:
        with sqlite3.connect(self.home / "airflow.db") as db:
            [(count,)] = db.execute("SELECT COUNT(*) FROM asset_event WHERE source_dag_id = ?", (DAG_ID,)).fetchall()
        return int(count)


def _cmdline(process: psutil.Process) -> list[str]:
    """A process's command line; none for one that ended (or is a zombie) while the children were listed."""
    try:
        return process.cmdline()
    except psutil.Error:
        return []


class Command:
    """``flexflow run`` started as a real process; its output is collected as it comes."""

    def __init__(self, workspace: Workspace) -> None:
        argv = ["run", str(workspace.spec), "--connection", CONNECTION, "--home", str(workspace.home)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flexflow.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=workspace.env(),
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.child_pid: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def child(self) -> psutil.Process | None:
        """The Airflow child (``python -m flexflow.run``), once started."""
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        child = next((c for c in children if "flexflow.run" in " ".join(_cmdline(c))), None)
        if child is not None:
            self.child_pid = child.pid
        return child

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """End what this command started, when a failed test left it running: the child's group, then it."""
        self.child()
        if self.child_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child_pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def commands() -> Iterator[Callable[[Workspace], Command]]:
    """Starts ``flexflow run`` commands; whatever the test's outcome, none outlives it."""
    started: list[Command] = []

    def start(workspace: Workspace) -> Command:
        started.append(Command(workspace))
        return started[-1]

    try:
        yield start
    finally:
        for command in started:
            command.kill()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = STAGE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    alive = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def assert_group_gone(pgid: int) -> None:
    wait_for(f"process group {pgid} to end", lambda: not group_alive(pgid), GONE_TIMEOUT)


def assert_no_more_requests(control: EmulatorControl, held: bool) -> None:
    """Nothing of the killed run keeps polling or paying: the emulator hears nothing more from it."""
    if held:
        time.sleep(HELD_SECONDS + 0.5)  # a request held open before the kill is answered into the void
    seen = requests_seen(control)
    time.sleep(2.5)  # more than two poll intervals of the spec
    assert requests_seen(control) == seen, "a process of the killed run is still calling the API"


# -- process faults: killed at each stage, then run again ------------------------------------------


@dataclass(frozen=True)
class Case:
    fault: str
    stage: str
    expected: str
    rules: tuple[dict[str, Any], ...]
    reached: Callable[[Command, dict[str, Any]], bool]
    signum: signal.Signals = signal.SIGKILL
    to_child: bool = False  # the signal goes to the Airflow child alone, not to the command
    exit_code: int = -signal.SIGKILL  # of the command
    says: tuple[str, ...] = ()  # what the command prints before it exits
    processing_seconds: float = 2.0


def _slow(route: str) -> dict[str, Any]:
    return {"fault": "slow", "count": 1, "route": route, "delay": HELD_SECONDS}


def _held(command: Command, accounting: dict[str, Any]) -> bool:
    return int(accounting["faults_injected"].get("slow", 0)) == 1


def _before_submit(command: Command, accounting: dict[str, Any]) -> bool:
    return command.child() is not None and accounting["submissions"] == 0


def in_flight(accounting: dict[str, Any]) -> int:
    """The emulator's jobs QUEUED or PROCESSING: paid for, not ended."""
    statuses: dict[str, int] = accounting["jobs_by_status"]
    return int(statuses.get("QUEUED", 0)) + int(statuses.get("PROCESSING", 0))


def _waiting(command: Command, accounting: dict[str, Any]) -> bool:
    """A paid job is in flight and polled, and none has ended yet.

    A compiled submit task waits for its own job (it holds its pool slot until the job ends), and
    ``dag.test()`` runs one task at a time, so under ``flexflow run`` this is the first job alone.
    """
    polled = sum(accounting["polls_per_job"].values())
    created = int(accounting["jobs_created"])
    return created >= 1 and in_flight(accounting) == created and polled > 0


RERUN = "rerun resumes: every image once, manifest and Asset event"
RESUME_HINT = "to resume it, run the same command again"
LISTED = "jobs submitted by run manual__"
CASES = (
    Case("flexflow run SIGKILLed", "before any submit", RERUN, (), _before_submit),
    Case("flexflow run SIGKILLed", "a submit in flight", RERUN, (_slow("submit"),), _held),
    Case("flexflow run SIGKILLed", "waiting for a job in flight", RERUN, (), _waiting, processing_seconds=15.0),
    Case("flexflow run SIGKILLed", "publishing (a download in flight)", RERUN, (_slow("file"),), _held),
    Case(
        "worker (Airflow child) SIGKILLed",
        "a submit in flight",
        "the command reports it, exit 1; " + RERUN,
        (_slow("submit"),),
        _held,
        to_child=True,
        exit_code=1,
        says=("was killed by SIGKILL before the run finished", LISTED, RESUME_HINT),
    ),
    Case(
        "flexflow run SIGTERMed",
        "waiting for a job in flight",
        "child group killed at once, jobs listed, exit 143; " + RERUN,
        (),
        _waiting,
        signum=signal.SIGTERM,
        exit_code=143,
        says=("stopped by SIGTERM", LISTED, "of 2\n  poster_seed-", RESUME_HINT),
        processing_seconds=15.0,
    ),
    Case(
        "Ctrl-C (SIGINT to flexflow run)",
        "a submit in flight",
        "child group killed at once, jobs listed, exit 130; " + RERUN,
        (_slow("submit"),),
        _held,
        signum=signal.SIGINT,
        exit_code=130,
        says=("stopped by SIGINT", LISTED, RESUME_HINT),
    ),
)


def run_case(case: Case, root: Path, airflow_db: Path) -> list[object]:
    flags = ("--queue-seconds", "1", "--processing-seconds", str(case.processing_seconds))
    with emulator_process(*flags) as control, commands() as command:
        if case.rules:
            control.add_faults(*case.rules)
        workspace = Workspace.create(root, control.url, airflow_db)
        first = command(workspace)
        wait_for(f"{case.stage}", lambda: case.reached(first, control.accounting()))
        child = first.child()
        assert child is not None, first.output
        os.kill(child.pid if case.to_child else first.process.pid, case.signum)
        assert first.finish() == case.exit_code, first.output
        for text in case.says:
            assert text in first.output, (text, first.output)
        assert_group_gone(child.pid)  # the child leads its own process group
        assert_no_more_requests(control, held=bool(case.rules))
        if case.stage == "before any submit":
            assert control.accounting()["submissions"] == 0, "the kill came before any submit"

        rerun = command(workspace)
        assert rerun.finish() == 0, rerun.output
        assert "resuming the interrupted run" in rerun.output, rerun.output
        accounting = control.accounting()
        files = workspace.images()
        manifest = (workspace.target / "manifest.json").exists()
        events = workspace.asset_events()
        partials = workspace.partial_files()
    assert accounting["jobs_billed"] == JOBS, accounting
    assert duplicates(accounting) == 0, accounting
    assert files == ["poster_seed-1.png", "poster_seed-2.png"]
    assert not partials, partials
    assert manifest and events == 1
    return [
        case.fault,
        case.stage,
        case.expected,
        accounting["jobs_billed"],
        duplicates(accounting),
        f"{len(files)} of {JOBS} images, {len(partials)} partial",
        "present" if manifest else "absent",
        f"{events} event" if events else "absent",
    ]


def test_killed_at_any_stage_and_run_again_every_image_is_published_once(tmp_path: Path, airflow_db: Path) -> None:
    # The cases are independent (an emulator, a home and a target each): all at once keeps the file short.
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        futures = [pool.submit(run_case, case, tmp_path / f"case{n}", airflow_db) for n, case in enumerate(CASES)]
        rows = [future.result() for future in futures]
    header = [
        "fault",
        "stage",
        "expected outcome",
        "jobs billed",
        "duplicates",
        "files under target",
        "manifest",
        "asset event",
    ]
    publish_table("process-faults", header, rows)


# -- stopping: SIGTERM, Ctrl-C, a second command on the same home ---------------------------------


def test_sigterm_and_ctrl_c_stop_the_run_at_once_list_its_jobs_and_a_rerun_resumes(
    tmp_path: Path, airflow_db: Path
) -> None:
    # Under dag.test() a run's jobs go one at a time (each submit task waits for its own job).
    with emulator_process("--queue-seconds", "1", "--processing-seconds", "5") as control, commands() as command:
        workspace = Workspace.create(tmp_path, control.url, airflow_db)
        first = command(workspace)
        wait_for("the first job in flight, polled", lambda: _waiting(first, control.accounting()))
        child = first.child()
        assert child is not None
        signalled = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        assert first.finish() == 143, first.output
        # At once: Airflow's task runner takes SIGTERM over and carries on, so a SIGTERM-and-grace stop
        # let the run go on (and submit, and pay) for the whole grace; now the child's group is killed.
        assert time.monotonic() - signalled < STOPPED_WITHIN, "the stop let the run go on"
        assert_group_gone(child.pid)
        accounting = control.accounting()
        assert accounting["jobs_created"] == 1, "nothing was submitted after the stop"
        [job] = list(accounting["polls_per_job"])
        assert "stopped by SIGTERM" in first.output
        # dag.test() takes the mapped submits in no fixed order: either variant may go first
        listed = re.search(rf"jobs submitted by run manual__\S+: 1 of 2\n  poster_seed-[12]: {job}\n", first.output)
        assert listed, first.output
        assert "to resume it, run the same command again" in first.output

        control.configure(processing_seconds=30)  # the resumed run's job stays in flight until Ctrl-C
        resumed = command(workspace)
        wait_for("the resumed run", lambda: "resuming the interrupted run" in resumed.output)
        assert "1 job(s) were submitted" in resumed.output, resumed.output

        second = command(workspace)  # the same home, while the resumed run runs
        assert second.finish() == 2, second.output
        assert f"flexflow run (pid {resumed.process.pid}) is already using {workspace.home}" in second.output

        def second_job_polled() -> bool:
            polls: dict[str, int] = control.accounting()["polls_per_job"]
            return any(n > 0 for j, n in polls.items() if j != job)

        wait_for("the resumed run's second job in flight, polled", second_job_polled)
        resumed.process.send_signal(signal.SIGINT)  # what Ctrl-C delivers (the child has a group of its own)
        assert resumed.finish() == 130, resumed.output
        assert "stopped by SIGINT" in resumed.output and "2 of 2" in resumed.output, resumed.output
        accounting = control.accounting()
        assert accounting["jobs_created"] == JOBS, "the resumed run reconnected to the first job"
        # dag.test() recreated the run with its run id, so its first submit task found its record (and
        # reconnected) or, had the record gone with the old run, sent the same Idempotency-Key again,
        # which the API answers with the first job: either way no new key, no new job.
        assert len(accounting["submissions_per_key"]) == JOBS, accounting
        assert job in accounting["polls_per_job"] and all(j in resumed.output for j in accounting["polls_per_job"])

        workspace.write_spec("A poster of a lighthouse at dusk")  # a changed spec cannot resume
        changed = command(workspace)
        wait_for("the new run", lambda: "running process_faults" in changed.output)
        changed.process.send_signal(signal.SIGTERM)
        assert changed.finish() == 143, changed.output
        assert "cannot resume the interrupted run" in changed.output
        assert "the spec file changed since it started" in changed.output
        assert "Its 2 submitted job(s) were already paid; this is a new run" in changed.output


# -- the child's group dies with the command: its own processes too --------------------------------

#: A stand-in for ``flexflow run``: starts a child as flexflow run does (a group of its own), which
#: sets up die_with_parent and starts a grandchild; prints the child's pid, then waits to be killed.
FAKE_COMMAND = """
import subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], start_new_session=True, stdout=subprocess.PIPE, text=True
)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(60)
"""
FAKE_CHILD = """
import os, subprocess, time
from flexflow.run import die_with_parent
die_with_parent(os.getppid(), kernel={kernel})
grandchild = subprocess.Popen(["sleep", "60"])
print(grandchild.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("kernel", [True, False], ids=["parent-death signal and watchdog", "watchdog alone"])
def test_sigkill_of_the_command_ends_the_childs_whole_group(kernel: bool) -> None:
    command = subprocess.Popen(
        [sys.executable, "-c", FAKE_COMMAND, FAKE_CHILD.format(kernel=kernel)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert command.stdout is not None
    child, grandchild = map(int, command.stdout.readline().split())
    try:
        assert sorted(group_alive(child)) == sorted([child, grandchild])
        command.kill()
        command.wait()
        assert_group_gone(child)
    finally:  # whatever the outcome, nothing this test started outlives it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
