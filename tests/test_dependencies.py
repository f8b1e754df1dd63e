"""Every third-party module the package imports comes from a distribution it declares.

A module that only arrives as some other package's dependency (croniter and jinja2 came in through
Airflow) works until that package drops it; declaring it in [project].dependencies makes the need
visible, and this test keeps the list honest.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flexflow"
#: The deployment harness is moving under tests/ (its psutil, psycopg2 and redis are test needs,
#: declared in the `deploy` extra); until it has moved, it is not part of what the package needs.
#: Once flexflow/deploy is gone this entry matches nothing and can go too.
EXCLUDED = (PACKAGE / "deploy",)


def _normalize(name: str) -> str:
    """PEP 503 normalized distribution name: ``PyYAML`` and ``pyyaml``, ``a_b`` and ``a-b`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(source: str) -> set[str]:
    """The dotted names of a module's absolute imports, wherever they stand.

    ast.walk visits every statement, so imports inside functions and under ``if TYPE_CHECKING:``
    count: annotations evaluated by Airflow or typing.get_type_hints need those modules installed.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _package_files() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if not any(path.is_relative_to(excluded) for excluded in EXCLUDED):
            yield path


def third_party_imports() -> dict[str, set[str]]:
    """Each third-party module the package imports (dotted name), with the files importing it."""
    found: dict[str, set[str]] = {}
    for path in _package_files():
        for module in imported_modules(path.read_text(encoding="utf-8")):
            top = module.partition(".")[0]
            if top in sys.stdlib_module_names or top == "flexflow":
                continue
            found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def shipping_distributions(module: str, by_top_level: Mapping[str, list[str]]) -> set[str]:
    """The distributions (normalized names) that install ``module``.

    packages_distributions() answers by top-level name, which is not enough for a namespace that
    many distributions share: `airflow` comes from apache-airflow-core, -task-sdk and every
    provider, while ``airflow.sdk`` is only in the task SDK. So where the top-level name has several
    distributions, keep those whose files hold the module itself.
    """
    top = module.partition(".")[0]
    candidates = set(by_top_level.get(top, []))
    if len(candidates) > 1:
        parts = tuple(module.split("."))
        candidates = {
            name
            for name in candidates
            if any(installed[: len(parts)] == parts for installed in _installed_modules(name))
        }
    return {_normalize(name) for name in candidates}


@cache
def _installed_modules(name: str) -> list[tuple[str, ...]]:
    """Each file a distribution installs as module parts: ``a/b.py`` is ``("a", "b")``.

    Read once per distribution: Airflow's file lists are long.
    """
    return [(*file.parts[:-1], file.parts[-1].removesuffix(".py")) for file in distribution(name).files or []]


def declared_dependencies() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = set()
    for requirement in pyproject["project"]["dependencies"]:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, f"unparsable requirement in [project].dependencies: {requirement!r}"
        names.add(_normalize(match.group()))
    return names


def test_the_scan_sees_imports_under_type_checking_and_in_functions() -> None:
    # Relative imports (the package's own modules) are left out.
    source = """
from typing import TYPE_CHECKING
import a.b, c
from d.e import f
from . import sibling
from .g import h
if TYPE_CHECKING:
    from typed_only import T
def late():
    import lazy
"""
    assert imported_modules(source) == {"typing", "a.b", "c", "d.e", "typed_only", "lazy"}


def test_every_imported_module_comes_from_a_declared_dependency() -> None:
    imports = third_party_imports()
    # The scan works: the package's best known imports are among what it found.
    assert {"airflow.sdk", "httpx2", "yaml"} <= imports.keys()
    by_top_level = packages_distributions()
    declared = declared_dependencies()
    # Undeclared distribution (or alternatives) -> the modules imported from it, and by which files.
    missing: dict[str, dict[str, set[str]]] = {}
    for module, files in imports.items():
        distributions = shipping_distributions(module, by_top_level)
        if not distributions & declared:
            key = " or ".join(sorted(distributions)) or "no installed distribution"
            missing.setdefault(key, {})[module] = files
    problems = [
        f"{key}: not in [project].dependencies, yet the package imports "
        + "; ".join(f"{module} (in {', '.join(sorted(files))})" for module, files in sorted(modules.items()))
        for key, modules in sorted(missing.items())
    ]
    assert not problems, "\n".join(problems)
