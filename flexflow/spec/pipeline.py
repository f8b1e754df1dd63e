"""Loading one spec: YAML -> schema -> checks beyond the schema -> an immutable :class:`Spec`.

Every problem of a file is reported at once, each as ``path:line:column: message``. Loading reads
files only: no Airflow connection, variable or network is touched, so it is safe on the DAG
processor's hot path.
"""

from __future__ import annotations

from pathlib import Path

from flexflow.contract.schema import Problem
from flexflow.spec.build import build_spec
from flexflow.spec.cache import SpecCache
from flexflow.spec.checks import problems_beyond_schema, secret_problems
from flexflow.spec.model import Spec
from flexflow.spec.parse import read_mapping, schema_problems
from flexflow.spec.problems import SpecError, SpecProblem, locate
from flexflow.spec.yaml_source import KeyPath


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
    for problem in (*secret_problems(data), *schema_problems(data), *problems_beyond_schema(data)):
        found.setdefault(problem.path, problem)
    if found:
        raise SpecError([locate(file, positions, p.path, p.message) for p in found.values()])
    spec = build_spec(data, text, file)
    if cache:
        cache.put(text, data)
    return spec


def load_spec(path: str | Path, cache: SpecCache | None = None) -> Spec:
    """:func:`parse_spec` of a file; an unreadable file is a :class:`SpecError` too."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(file), 1, 1, "the file is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(str(file), 1, 1, f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse_spec(text, str(file), cache)
