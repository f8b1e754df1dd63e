"""The deployment's processes: each service in a process group of its own, and how they are ended.

Every process a deployment starts (and their children) carry ``MARKER`` in their environment:
teardown finds stragglers by it, even those whose parent died first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psutil

#: Every process a deployment starts (and their children) carry this variable: teardown finds stragglers by it.
MARKER = "FLEXFLOW_DEPLOYMENT_ID"


@dataclass
class Service:
    """One process the deployment started, in its own session (process group), logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    expected_down: bool = False  # killed on purpose: not a failure

    @property
    def role(self) -> str:
        """The name without the ``#n`` of a restart: ``scheduler`` for ``scheduler#2``."""
        return self.name.split("#")[0]

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # our own interpreter and arguments
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: teardown signals the whole group
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def process_tree(self) -> list[psutil.Process]:
        """The processes this service started (children, grandchildren, ...)."""
        return descendants(self.pid) if self.alive() else []

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0, kill: bool = False) -> None:
        """SIGTERM the process group (SIGKILL at once when ``kill``), SIGKILL what is left after ``grace``.

        Task processes that Airflow puts in process groups of their own are found as descendants
        first, and killed too if they outlive their service.
        """
        if self.process is None or self.process.returncode is not None:
            return
        started = descendants(self.pid)
        _signal_group(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=0 if kill else grace)
        _signal_group(self.pid, signal.SIGKILL)
        for process in started:
            kill_process(process, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        psutil.wait_procs(started, timeout=5)


def descendants(pid: int) -> list[psutil.Process]:
    """The live children, grandchildren, ... of ``pid`` (none when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_process(process: psutil.Process, group: bool = False) -> None:
    """SIGKILL a process we started (or a descendant), and its own process group when it leads one."""
    with contextlib.suppress(psutil.Error, OSError):
        if group and os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()


def marked_processes(deployment_id: str) -> list[psutil.Process]:
    """Live processes carrying the deployment's marker in their environment (ours, or their children)."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            ours = process.pid != os.getpid() and process.environ().get(MARKER) == deployment_id
            if ours and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
