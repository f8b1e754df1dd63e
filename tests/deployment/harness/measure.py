"""What a deployment's processes used: executor slot-seconds, resident memory, running task processes."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from typing import Any

import psutil

from tests.deployment.harness.processes import Service, descendants


def workload_seconds(services: Iterable[Service]) -> dict[str, list[tuple[float, str]]]:
    """Task instance id -> (seconds, final state) of every workload an executor slot ran for it.

    Read from the "Workload finished" lines the task supervisors log (in the logs of the schedulers,
    which run the LocalExecutor, and of the Celery workers): the time each try (and each resumption
    after a deferral) held a slot.
    """
    found: dict[str, list[tuple[float, str]]] = {}
    for service in services:
        if service.role != "scheduler" and not service.name.startswith("worker-"):
            continue
        for line in service.log_path.read_text(errors="replace").splitlines():
            if "Workload finished" not in line:
                continue
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            if "workload_id" in fields and "duration" in fields:
                found.setdefault(fields["workload_id"], []).append(
                    (float(fields["duration"]), fields.get("final_state", "?"))
                )
    return found


def slot_seconds(services: Iterable[Service], task_instances: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Executor slot-seconds per task kind of these task instances (as the REST API lists them).

    ``services`` are the deployment's (``Deployment.services``). Kinds are the last part of the task
    id (``submit``, ``wait``, ``publish``, ``finalize``); a wait's runs are split by how each ended:
    ``wait (deferred)`` and ``wait (success)``.
    """
    workloads = workload_seconds(services)
    totals: dict[str, float] = {}
    for ti in task_instances:
        kind = ti["task_id"].rsplit(".", 1)[-1]
        for seconds, final_state in workloads.get(ti["id"], []):
            label = f"{kind} ({final_state})" if kind == "wait" else kind
            totals[label] = totals.get(label, 0.0) + seconds
    return {kind: round(seconds, 2) for kind, seconds in totals.items()}


def rss_bytes(service: Service) -> int:
    """Resident memory of a service and its children (from /proc, through psutil)."""
    total = 0
    for process in [psutil.Process(service.pid), *descendants(service.pid)]:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def task_processes(executors: Iterable[Service]) -> list[psutil.Process]:
    """Task processes running now under these executor services (``Deployment.executor_services()``).

    Airflow starts each task process in a process group of its own.
    """
    found: list[psutil.Process] = []
    for service in executors:
        for process in descendants(service.pid):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) == process.pid and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
    return found
