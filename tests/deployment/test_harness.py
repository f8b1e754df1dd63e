"""The deployment harness itself: teardown leaves no process behind, and missing services are named."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.deployment.harness.billing import billing_problems
from tests.deployment.harness.databases import services_available
from tests.deployment.harness.processes import MARKER, Service, free_port, marked_processes
from tests.deployment.harness.waiting import wait_until

pytestmark = pytest.mark.deployment

# A service that starts a child in a session of its own (as Airflow does for each task process),
# which ignores SIGTERM, then waits forever.
TREE = """
import signal, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True,
)
print(child.pid, flush=True)
time.sleep(600)
"""


def start_tree(tmp_path: Path, marker: str) -> tuple[Service, int]:
    env = {"PATH": "/usr/bin:/bin", MARKER: marker}
    service = Service("tree", [sys.executable, "-c", TREE], env, tmp_path / "tree.log", tmp_path).start()
    child = wait_until(lambda: (tmp_path / "tree.log").read_text().strip(), 30, "the child's pid", interval=0.05)
    return service, int(child)


@pytest.mark.parametrize("kill", [False, True], ids=["terminate", "kill"])
def test_stopping_a_service_ends_its_whole_tree(tmp_path: Path, kill: bool) -> None:
    marker = f"test-{time.monotonic_ns()}"
    service, child = start_tree(tmp_path, marker)
    assert {p.pid for p in marked_processes(marker)} == {service.pid, child}
    service.stop(grace=2, kill=kill)
    assert not service.alive()
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert marked_processes(marker) == []


def test_a_service_killed_first_leaves_an_orphan_that_the_marker_finds(tmp_path: Path) -> None:
    """What teardown's last sweep is for: a child whose parent died first is found by its environment."""
    marker = f"test-{time.monotonic_ns()}"
    service, child = start_tree(tmp_path, marker)
    assert service.process is not None
    service.process.kill()
    service.process.wait()
    assert [p.pid for p in marked_processes(marker)] == [child]
    psutil.Process(child).kill()
    psutil.wait_procs([psutil.Process(child)], timeout=5)
    assert marked_processes(marker) == []


def test_unreachable_services_are_named() -> None:
    closed = free_port()  # nothing listens there
    problem = services_available(postgres=("127.0.0.1", closed), redis=("127.0.0.1", closed))
    assert problem == (
        f"the Celery configuration needs PostgreSQL on 127.0.0.1:{closed} and Redis on 127.0.0.1:{closed}: "
        "not reachable"
    )


def test_the_command_describes_itself() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.deployment.harness", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up" in result.stdout and "down" in result.stdout


def test_billing_problems_name_each_departure_from_one_billed_job_per_image() -> None:
    clean = {
        "jobs_created": 2,
        "jobs_billed": 2,
        "duplicates": {"by_key": {}, "by_body": 0},
        "submissions_per_key": {"k1": 1, "k2": 1},
    }
    assert billing_problems(clean, 2) == []
    resubmitted = clean | {"jobs_created": 3, "jobs_billed": 3, "submissions_per_key": {"k1": 2, "k2": 1}}
    assert billing_problems(resubmitted, 2) == [
        "3 jobs created, not 2",
        "3 jobs billed, not 2",
        "a request was resubmitted: submissions per key [1, 2]",
    ]
    duplicated = clean | {"duplicates": {"by_key": {}, "by_body": 1}}
    assert billing_problems(duplicated, 2) == ["duplicates {'by_key': {}, 'by_body': 1}"]
