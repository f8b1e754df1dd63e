"""Layers import downward only: each part of flexflow imports only the parts below it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "flexflow"
#: Bottom to top. A module may import its own layer and any layer before it in this list.
LAYERS = [
    "errors",
    "text",
    "contract",
    "defaults",
    "client",
    "emulator",
    "spec",
    "airflow",
    "publishing",
    "gallery",
    "compiler",
    "run",
    "cli",
]
#: What the package's own __init__ may reach (the version only).
ROOT_MODULE = "__init__"


def layer_of(path: Path) -> str:
    part = path.relative_to(PACKAGE).parts[0]
    return part.removesuffix(".py")


def flexflow_imports(path: Path) -> set[str]:
    """The flexflow layers a module imports (``from flexflow import x`` names layer x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "flexflow" else [f"flexflow.{a.name}" for a in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("flexflow.")}
    return {name if name in LAYERS else ROOT_MODULE for name in found}  # e.g. flexflow.__version__


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if layer_of(p) != ROOT_MODULE)


@pytest.mark.parametrize("module", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_a_module_imports_only_its_layer_and_those_below(module: Path) -> None:
    layer = layer_of(module)
    allowed = set(LAYERS[: LAYERS.index(layer) + 1]) | {ROOT_MODULE}
    assert flexflow_imports(module) <= allowed, f"{module.relative_to(ROOT)} imports a layer above {layer}"


def test_every_layer_is_ranked() -> None:
    assert {layer_of(p) for p in MODULES} == set(LAYERS)


def test_importing_flexflow_changes_no_logging() -> None:
    import subprocess
    import sys

    # Loggers of the libraries flexflow uses, and the root logger. Airflow configures logging when it
    # is first imported, which is not flexflow's doing: it is imported before the baseline.
    code = (
        "import logging, pkgutil, importlib, flexflow, airflow.sdk, airflow.triggers.base\n"
        "def levels():\n"
        "    loggers = {n: logging.getLogger(n) for n in ('', 'flexflow', 'httpx2', 'uvicorn', 'starlette')}\n"
        "    return {n: (l.level, len(l.handlers)) for n, l in loggers.items()}\n"
        "before = levels()\n"
        "for m in pkgutil.walk_packages(flexflow.__path__, 'flexflow.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n, v in levels().items() if before[n] != v))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert shown.stdout.strip().splitlines()[-1] == "[]", shown.stdout
