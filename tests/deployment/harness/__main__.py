"""Start a real Airflow deployment of flexflow on this machine, every service a separate process, and tear it down.

Run from the repository: ``python -m tests.deployment.harness up --config local --specs specs/ --home
/tmp/ff-deploy`` (foreground; Ctrl-C or ``down --home /tmp/ff-deploy`` tears it down).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from tests.deployment.harness.deployment import STATE_FILE, Deployment
from tests.deployment.harness.processes import kill_process, marked_processes
from tests.deployment.harness.waiting import wait_until


def _up(args: argparse.Namespace) -> int:
    stop = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    deployment = Deployment(
        args.config,
        specs_dir=args.specs,
        workers=args.workers,
        root=args.home,
        keep_home=args.home is not None,
        processing_seconds=args.processing_seconds,
    )
    _say(f"starting the {args.config} deployment in {deployment.home} ...")
    with deployment:
        sys.stdout.write(json.dumps(deployment.describe(), indent=2) + "\n")
        sys.stdout.flush()
        _say("up; Ctrl-C (or `down --home ...`) tears it down")
        while not stop["now"]:
            time.sleep(0.5)
            deployment.check_alive()
    if deployment.leftovers:
        _say(f"teardown had to kill stragglers: {deployment.leftovers}")
    _say("down")
    return 0


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _down(args: argparse.Namespace) -> int:
    state_path = Path(args.home) / STATE_FILE
    if not state_path.exists():
        _say(f"no running deployment in {args.home}")
        return 1
    state = json.loads(state_path.read_text())
    harness = state["harness_pid"]
    with contextlib.suppress(ProcessLookupError):
        os.kill(harness, signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(harness), 120, "the harness to tear the deployment down")
    for process in marked_processes(state["id"]):  # the harness itself was killed: finish its job
        kill_process(process, group=True)
    state_path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deployment.harness", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a deployment and keep it running until interrupted")
    up.add_argument("--config", choices=("local", "celery"), default="local")
    up.add_argument("--specs", type=Path, default=None, help="specs folder (default: the project's specs/)")
    up.add_argument("--workers", type=int, default=1, help="Celery workers (celery only)")
    up.add_argument("--home", type=Path, default=None, help="AIRFLOW_HOME to use and keep (default: a temporary one)")
    up.add_argument("--processing-seconds", type=float, default=3.0, help="the emulator's processing time per job")
    up.set_defaults(handler=_up)
    down = commands.add_parser("down", help="tear down the deployment started with `up --home`")
    down.add_argument("--home", type=Path, required=True)
    down.set_defaults(handler=_down)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
