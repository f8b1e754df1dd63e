"""Loading one spec: YAML -> schema -> checks beyond the schema -> an immutable :class:`Spec`.

Every problem of a file is reported at once, each as ``path:line:column: message``. Loading reads
files only: no Airflow connection, variable or network is touched, so it is safe on the DAG
processor's hot path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from flexflow.contract.schema import Problem
from flexflow.defaults import deployment_limits
from flexflow.spec.airflow_rules import airflow_findings
from flexflow.spec.budget import budget_findings
from flexflow.spec.build import build_spec
from flexflow.spec.cache import SpecCache
from flexflow.spec.checks import problems_beyond_schema, secret_problems
from flexflow.spec.model import Spec
from flexflow.spec.parse import read_mapping, schema_problems
from flexflow.spec.problems import SpecError, SpecProblem, locate
from flexflow.spec.yaml_source import MAX_BYTES, KeyPath


def parse_spec(text: str, file: str = "<spec>", cache: SpecCache | None = None) -> Spec:
    """A validated :class:`Spec` from YAML text, or :class:`SpecError` with every problem of the text.

    With a cache, a text validated before is not validated again (see :mod:`flexflow.spec.cache`).
    """
    cached = cache.get(text) if cache else None
    if cached is not None:
        try:
            return build_spec(cached, text, file)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a damaged entry: validate again, which also rewrites it
    data, positions = read_mapping(text, file)
    # One problem per path: a secret is the first thing to say about a key; then the schema; then
    # the checks beyond it.
    found: dict[KeyPath, Problem] = {}
    airflow = (Problem(path, message) for path, message in airflow_findings(data, deployment_limits()))
    for problem in (*secret_problems(data), *schema_problems(data), *problems_beyond_schema(data), *airflow):
        found.setdefault(problem.path, problem)
    if found:
        raise SpecError([locate(file, positions, p.path, p.message) for p in found.values()])
    spec = build_spec(data, text, file)
    over_budget = [locate(file, positions, path, message) for path, message in budget_findings(spec)]
    if over_budget:  # needs the built spec (every default applied), so only a spec valid otherwise gets here
        raise SpecError(over_budget)
    if cache:
        cache.put(text, data)
    return spec


def load_spec(path: str | Path, cache: SpecCache | None = None) -> Spec:
    """:func:`parse_spec` of a file; an unreadable, oversized or non-regular file is a :class:`SpecError` too."""
    file = Path(path)
    try:
        text = read_spec_text(file).decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(file), 1, 1, "the file is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(str(file), 1, 1, f"cannot read the file: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise SpecError([SpecProblem(str(file), 1, 1, str(exc))]) from None
    return parse_spec(text, str(file), cache)


def read_spec_text(file: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ValueError saying why it is not read.

    The file is opened without blocking (a FIFO would otherwise wait for a writer) and checked on the open
    descriptor, so a file swapped after a check is still checked. A symlink is followed: what counts is
    that its target is a regular file (Kubernetes ConfigMaps mount specs as symlinks).
    """
    descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file (a device, FIFO or socket); a spec is a YAML file")
        if info.st_size > limit:
            raise ValueError(f"the file is larger than {limit:,} bytes ({info.st_size:,}); a spec is a few kilobytes")
        data = handle.read(limit + 1)  # a file that grew since the check is still read only this far
    if len(data) > limit:
        raise ValueError(f"the file is larger than {limit:,} bytes; a spec is a few kilobytes")
    return data
