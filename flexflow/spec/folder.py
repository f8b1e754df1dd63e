"""Loading a folder of specs: every file on its own, so a broken one never hides the others.

A file that fails is still named by the dag_id it meant (:func:`lenient_dag_id`), so that Airflow
shows the broken DAG, with its problems, under its own name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flexflow.spec.cache import SpecCache
from flexflow.spec.model import Spec
from flexflow.spec.pipeline import load_spec
from flexflow.spec.problems import SpecError, SpecProblem
from flexflow.spec.yaml_source import load

SPEC_SUFFIXES = (".yaml", ".yml")


def find_spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """The spec files named, and those under the folders named (recursively), sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.suffix in SPEC_SUFFIXES and p.is_file())
        else:
            found.add(path)
    return sorted(found)


@dataclass(frozen=True)
class FolderResult:
    specs: tuple[Spec, ...]
    problems: tuple[SpecProblem, ...]
    #: dag_id -> problems, for files that failed (their dag_id read leniently, else the file's stem)
    broken: Mapping[str, tuple[SpecProblem, ...]]


def load_folder(paths: Iterable[str | Path], cache: SpecCache | None = None) -> FolderResult:
    """Load every spec; a broken file never hides the others. Duplicate dag_ids fail in every file."""
    specs: list[Spec] = []
    broken: dict[str, list[SpecProblem]] = {}
    for file in find_spec_files(paths):
        if not file.exists():
            broken.setdefault(file.stem, []).append(SpecProblem(str(file), 1, 1, "no such file"))
            continue
        try:
            specs.append(load_spec(file, cache))
        except SpecError as exc:
            broken.setdefault(lenient_dag_id(file), []).extend(exc.problems)
    by_id: dict[str, list[Spec]] = {}
    for spec in specs:
        by_id.setdefault(spec.dag_id, []).append(spec)
    valid = []
    for dag_id, same in by_id.items():
        if len(same) == 1:
            valid.append(same[0])
            continue
        for spec in same:
            others = ", ".join(s.path for s in same if s is not spec)
            line, column = load(spec.source)[1].of(("dag_id",))
            broken.setdefault(dag_id, []).append(
                SpecProblem(spec.path, line, column, f"dag_id: '{dag_id}' is also the dag_id of {others}", "dag_id")
            )
    problems = tuple(p for ps in broken.values() for p in ps)
    return FolderResult(tuple(valid), problems, {k: tuple(v) for k, v in broken.items()})


_DAG_ID_LINE = re.compile(r"^dag_id:\s*['\"]?([A-Za-z0-9_.-]+)", re.MULTILINE)


def claimed_dag_id(file: Path) -> str | None:
    """The dag_id a file states on a plain ``dag_id: x`` line, read without YAML; None if none is."""
    try:
        match = _DAG_ID_LINE.search(file.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def lenient_dag_id(file: Path) -> str:
    """The dag_id a broken file meant, so the broken DAG shows under its own name (else the file's stem)."""
    return claimed_dag_id(file) or file.stem
