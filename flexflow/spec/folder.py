"""Loading a folder of specs: every file on its own, so a broken one never hides the others.

A file that fails is still named by the dag_id it meant (:func:`lenient_dag_id`), so that Airflow
shows the broken DAG, with its problems, under its own name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from flexflow.defaults import Limits
from flexflow.spec.airflow_rules import DAG_ID_MAX, INVALID_SUFFIX, airflow_findings
from flexflow.spec.cache import SpecCache
from flexflow.spec.model import Spec
from flexflow.spec.pipeline import load_spec, read_spec_text
from flexflow.spec.problems import SpecError, SpecProblem
from flexflow.spec.yaml_source import load

SPEC_SUFFIXES = (".yaml", ".yml")


def find_spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """The spec files named, and those under the folders named (recursively), sorted.

    Work stays proportional to the folder: symlinked folders are not descended into (no cycles, no
    trees outside it) and neither are hidden ones (``.git``; a Kubernetes ConfigMap's ``..data``
    copies); hidden files are skipped. Every other entry with a spec suffix is listed, a FIFO or
    device too: loading flags it without reading it (:func:`flexflow.spec.pipeline.read_spec_text`).
    """
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found.update(_spec_entries(path))
        else:
            found.add(path)
    return sorted(found)


def _spec_entries(folder: Path) -> Iterator[Path]:
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = [name for name in folders if not name.startswith(".")]
        # Hidden files too: editors' lock files (``.#spec.yaml``, a dangling symlink) are no specs.
        yield from (Path(root, name) for name in files if name.endswith(SPEC_SUFFIXES) and not name.startswith("."))


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


#: A plain ``dag_id: x`` line. Linear: ``[ \t]*`` never crosses a line, and nothing follows the id's run.
_DAG_ID_LINE = re.compile(r"^dag_id:[ \t]*['\"]?([A-Za-z0-9_.-]+)", re.MULTILINE)
_NOT_KEY = re.compile(r"[^A-Za-z0-9_-]+")  # '.' too: a stem cannot then hold '..'


def claimed_dag_id(file: Path) -> str | None:
    """The dag_id a file states on a plain ``dag_id: x`` line, read without YAML; None if none is.

    The file is read as a spec is (bounded, regular files only), so a FIFO or a huge file costs nothing.
    """
    try:
        return claimed_dag_id_in(read_spec_text(file).decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def claimed_dag_id_in(text: str) -> str | None:
    """:func:`claimed_dag_id` of a spec's text (``flexflow diff`` reads specs from git, not from files)."""
    match = _DAG_ID_LINE.search(text)
    return match.group(1) if match else None


def lenient_dag_id_in(text: str, name: str) -> str:
    """:func:`lenient_dag_id` of a spec's text, ``name`` standing for its file's name."""
    claimed = claimed_dag_id_in(text)
    if claimed and not _dag_id_findings(claimed):
        return claimed
    stem = _NOT_KEY.sub("_", Path(name).stem)[:DAG_ID_MAX].removesuffix(INVALID_SUFFIX)
    return stem or "unnamed_spec"


def lenient_dag_id(file: Path) -> str:
    """The dag_id a broken file meant, so the broken DAG shows under its own name; always one Airflow takes.

    A claimed id Airflow would refuse (too long, ``..``, flexflow's ``__invalid`` suffix) gives way to
    the file's stem, made an Airflow key: a broken spec's DAG must never fail to build itself.
    """
    claimed = claimed_dag_id(file)
    if claimed and not _dag_id_findings(claimed):
        return claimed
    stem = _NOT_KEY.sub("_", file.stem)[:DAG_ID_MAX].removesuffix(INVALID_SUFFIX)
    return stem or "unnamed_spec"


def _dag_id_findings(dag_id: str) -> list[str]:
    return [message for _, message in airflow_findings({"dag_id": dag_id}, Limits())]
