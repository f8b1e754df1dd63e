"""The hand-written example DAG runs green with dag.test() against the emulator, faults included."""

from __future__ import annotations

import importlib.util

from airflow.sdk import DAG

from flexflow.emulator import EmulatorServer
from tests.conftest import ROOT


def load_example() -> DAG:
    spec = importlib.util.spec_from_file_location("hand_written_flux", ROOT / "dags/examples/hand_written_flux.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_example_dag_runs_green(emulator: EmulatorServer, apiframe_connection: str) -> None:
    dag = load_example()
    run = dag.test()
    assert run.state == "success"
    accounting = emulator.accounting()
    assert accounting["jobs_billed"] == 1
