"""Property tests of hostile specs (issue 11): validation and the loader hold whatever a spec says.

Each example starts from a valid spec (``tests/specs/valid/``, ``specs/``) and mutates it the way a
careless or hostile author would: any value replaced by hostile text, odd unicode, huge numbers or
nested structures; templates built from a grammar of Jinja fragments (forbidden names, attribute
access, filters, statements, broken syntax) put into any string; keys dropped or duplicated;
values nested hundreds deep; or the whole file replaced by random YAML-ish text. Then:

- ``parse_spec`` / ``load_spec`` return a Spec or raise SpecError whose problems point into the
  text, nothing else (``check_outcome`` of tests/test_spec_properties.py);
- ``flexflow validate`` exits 0 or 1, never with a traceback;
- ``load_dags`` over a folder of mutated files never raises and returns one DAG per file, flagged
  ``invalid`` exactly when the file is; with a worker's parsing context it builds the running DAG.

"Bounded time" is hypothesis' own per-example ``deadline`` (generous, so a slow machine does not
flake; a super-linear path exceeds it by orders of magnitude). Runs are deterministic
(``derandomize=True``, no example database) and the whole file takes well under a minute.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from airflow.sdk import DAG
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flexflow.cli import main as flexflow_main
from flexflow.compiler.dag import INVALID_TAG
from flexflow.compiler.loader import load_dags
from flexflow.spec import SpecError, load_spec
from flexflow.spec.yaml_source import load
from tests.test_escaping import HOSTILE
from tests.test_spec_properties import check_outcome, dump, get, json_values, keys, paths, yaml_chars

ROOT = Path(__file__).resolve().parents[1]
VALID_FILES = sorted([*(ROOT / "tests" / "specs" / "valid").glob("*.yaml"), *(ROOT / "specs").glob("*.yaml")])
VALID = {file.name: load(file.read_text(encoding="utf-8"))[0] for file in VALID_FILES}
#: The values rendered at run time: a template there is checked, anywhere else it is refused.
TEMPLATED_PATHS = (("publish", "to"), ("publish", "filename"))

#: A spec gets this long to validate; a real one takes about a millisecond.
SPEC_DEADLINE = timedelta(seconds=2)
#: Set by Airflow when a task runs: the loader then compiles only that DAG's spec.
PARSING_DAG_ID = "_AIRFLOW_PARSING_CONTEXT_DAG_ID"
#: The most files in one loader example; its deadline is SPEC_DEADLINE for each.
FOLDER_FILES = 4


def hostile_settings(examples: int, deadline: timedelta = SPEC_DEADLINE) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=deadline,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# -- what a hostile author writes ----------------------------------------------------------------

#: Numbers at and beyond every limit: 64-bit edges, floats that overflow, 400 digits.
huge_numbers = st.sampled_from(
    [10**400, -(10**400), 2**63, -(2**63) - 1, 2**64 + 1, 1e308, -1e308, float("inf"), float("nan"), -0.0]
) | st.integers(min_value=-(2**70), max_value=2**70)
#: Long text: a few characters repeated, under and over any length limit a spec has.
long_text = st.builds(
    lambda chunk, times: chunk * times,
    st.sampled_from(["A", "é", "{{ ", "\u202e", "😀", "a\n", "../", "%s"]),
    st.integers(min_value=100, max_value=60_000),
)
hostile_text = st.sampled_from(HOSTILE) | st.text(max_size=40) | long_text

#: Jinja's pieces: names the allow-list takes and those it refuses, attribute and item access, filters.
jinja_names = st.sampled_from(
    [
        "ds", "ds_nodash", "ts", "logical_date", "data_interval_start", "data_interval_end", "run_id",
        "dag_id", "params", "params.campaign", "params['campaign']", "params.missing", "conn", "var", "ti",
        "task_instance", "macros", "dag", "dag_run", "task", "conf", "self", "range", "lipsum", "cycler",
        "joiner", "namespace", "config", "request", "os", "__builtins__", "undefined_thing",
    ]
)  # fmt: skip
jinja_access = st.sampled_from(
    [
        ".value", ".password", ".__class__", ".__mro__[1]", ".__subclasses__()", ".__globals__",
        ".__init__.__globals__['os']", ".get('apiframe')", ".get_connection('apiframe')", ".items()",
        "['__class__']", "[0]", "[1:]", ".strftime('%Y')", ".datetime.now()", "()",
    ]
)  # fmt: skip
jinja_filters = st.sampled_from(
    [
        "|upper", "|lower", "|trim", "|truncate(10)", "|default('x')", "|replace('a', 'b')", "|ds_add(7)",
        "|ds_add(-99999999)", "|strftime('%Y/%m')", "|strftime('%999999999Y')", "|attr('__class__')",
        "|format('%s')", "|safe", "|e", "|tojson", "|join", "|map('upper')", "|list", "|int", "|string",
        "|wordwrap(1)", "|center(999999999)", "|indent(999999999)", "|unknown_filter",
    ]
)  # fmt: skip
jinja_literals = st.sampled_from(["'text'", '"x"', "1", "-1", "10**10", "9**9**9", "[1, 2]", "{'a': 1}", "none"])
jinja_expressions = st.recursive(
    jinja_names | jinja_literals,
    lambda inner: (
        st.builds(lambda e, a: e + a, inner, jinja_access)
        | st.builds(lambda e, f: e + f, inner, jinja_filters)
        | st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(["~", "*", "**", "+", "and", "if"]), inner)
        | inner.map(lambda e: f"({e})")
        | inner.map(lambda e: f"not {e}")
    ),
    max_leaves=6,
)
#: Whole statements and broken syntax: what the allow-list refuses and what Jinja cannot parse.
JINJA_SNIPPETS = [
    "{% macro m() %}{{ caller() }}{% endmacro %}", "{% include 'secrets.txt' %}", "{% import 'os' as os %}",
    "{% extends 'base' %}", "{% raw %}{{ conn }}{% endraw %}", "{# comment #}", "{% filter upper %}x{% endfilter %}",
    "{{", "}}", "{{ x", "{%", "{% for %}", "{% endfor %}", "{{ 'unterminated }}", "{{ ((((( }}", "{#",
    "{{ " + "(" * 40 + "1" + ")" * 40 + " }}", "{{ " + "not " * 400 + "x }}", "{{ " + "[" * 200 + " }}",
    "{{ ds }}" * 500, "{% raw %}", "{{ params.campaign }}{{ run_id }}",
]  # fmt: skip
jinja_fragments = (
    jinja_expressions.map(lambda e: "{{ " + e + " }}")
    | jinja_expressions.map(lambda e: "{% if " + e + " %}x{% endif %}")
    | jinja_expressions.map(lambda e: "{% for i in " + e + " %}{{ i }}{% endfor %}")
    | jinja_expressions.map(lambda e: "{% set x = " + e + " %}{{ x }}")
    | st.sampled_from(JINJA_SNIPPETS)
)
templates = st.lists(jinja_fragments | st.text(max_size=8), min_size=1, max_size=4).map("".join)


def nested(depth: int, kind: str) -> str:
    """YAML flow text nested ``depth`` deep (written as text: PyYAML's dumper recurses on nesting)."""
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return "{a: " * depth + "1" + "}" * depth


deep_values = st.builds(nested, st.integers(min_value=50, max_value=1500), st.sampled_from(["list", "map"]))


# -- mutations -----------------------------------------------------------------------------------

#: Stands for a value that is written into the YAML text after dumping (deeply nested flow text).
SENTINEL = "FLEXFLOW_SENTINEL_VALUE"


def string_paths(spec: Any) -> list[tuple[str | int, ...]]:
    """Paths of every string value, the values a template may be put in."""
    return [path for path in paths(spec) if isinstance(get(spec, path), str)]


def replace_value(spec: Any, data: st.DataObject, value_strategy: st.SearchStrategy[Any]) -> None:
    path = data.draw(st.sampled_from(paths(spec)), label="path")
    get(spec, path[:-1])[path[-1]] = data.draw(value_strategy, label="value")


def insert_template(spec: Any, data: st.DataObject) -> None:
    """A template put into a templated value (prompts, publish.to, publish.filename) or any string."""
    templated = [p for p in string_paths(spec) if p[-1] == "prompt" or p in TEMPLATED_PATHS]
    path = data.draw(st.sampled_from(templated) | st.sampled_from(string_paths(spec)), label="path")
    text: str = get(spec, path)
    at = data.draw(st.integers(0, len(text)), label="at")
    get(spec, path[:-1])[path[-1]] = text[:at] + data.draw(templates, label="template") + text[at:]


def drop_key(spec: Any, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from([p for p in paths(spec) if isinstance(p[-1], str)]), label="path")
    del get(spec, path[:-1])[path[-1]]


def mutate(spec: Any, data: st.DataObject) -> None:
    """One mutation of the data, drawn among the kinds a hostile author tries."""
    kind = data.draw(st.sampled_from(["hostile", "number", "structure", "deep", "template", "drop"]), label="kind")
    if kind == "template":
        insert_template(spec, data)
    elif kind == "drop":
        drop_key(spec, data)
    else:
        value = {"hostile": hostile_text, "number": huge_numbers, "structure": json_values, "deep": st.just(SENTINEL)}
        replace_value(spec, data, value[kind])


def mutated_text(name: str, data: st.DataObject, mutations: int = 3) -> str:
    spec = copy.deepcopy(VALID[name])
    for _ in range(data.draw(st.integers(1, mutations), label="mutations")):
        mutate(spec, data)
    text = dump(spec)
    if SENTINEL in text:
        text = text.replace(SENTINEL, data.draw(deep_values, label="nesting"), 1)
    if data.draw(st.booleans(), label="duplicate a key"):
        text = duplicate_key(text, data)
    return text


def duplicate_key(text: str, data: st.DataObject) -> str:
    """The text with one of its ``key: value`` lines written twice, the copy with a hostile value."""
    lines = text.splitlines(keepends=True)
    keyed = [i for i, line in enumerate(lines) if ": " in line and not line.lstrip().startswith("- ")]
    if not keyed:
        return text
    at = data.draw(st.sampled_from(keyed), label="line")
    key = lines[at].split(": ", 1)[0]
    value = json.dumps(data.draw(hostile_text | huge_numbers.map(str), label="duplicate"))
    return "".join([*lines[: at + 1], f"{key}: {value}\n", *lines[at + 1 :]])


random_yaml = st.text(yaml_chars, max_size=300) | st.lists(
    st.builds(lambda k, v: f"{k}: {v}", keys, st.text(yaml_chars, max_size=20)), max_size=12
).map("\n".join)
valid_names = st.sampled_from(sorted(VALID))


# -- the properties ------------------------------------------------------------------------------


def validate_exit(path: Path) -> int:
    """``flexflow validate --format json`` of the file: its exit status; any exception fails the test."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return flexflow_main(["validate", "--format", "json", str(path)])


def test_the_starting_specs_are_valid() -> None:
    assert len(VALID) >= 4
    for file in VALID_FILES:
        assert check_outcome(dump(VALID[file.name])) is not None, f"{file.name} does not survive a YAML round trip"


@hostile_settings(examples=200)
@given(name=valid_names, data=st.data())
def test_a_mutated_spec_is_a_spec_or_a_spec_error(name: str, data: st.DataObject) -> None:
    event("a spec" if check_outcome(mutated_text(name, data)) else "a SpecError")


@hostile_settings(examples=100)
@given(name=valid_names, data=st.data())
def test_a_spec_with_templates_is_a_spec_or_a_spec_error(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(VALID[name])
    for _ in range(data.draw(st.integers(1, 3), label="templates")):
        insert_template(spec, data)
    event("a spec" if check_outcome(dump(spec)) else "a SpecError")


@hostile_settings(examples=100)
@given(text=random_yaml)
def test_random_yaml_is_a_spec_error(text: str) -> None:
    check_outcome(text)


@hostile_settings(examples=40)
@given(name=valid_names, data=st.data())
def test_flexflow_validate_exits_0_or_1(name: str, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "mutated.yaml"
        file.write_text(mutated_text(name, data), encoding="utf-8", errors="surrogatepass")
        try:
            load_spec(file)
            expected = 0
        except SpecError:
            expected = 1
        assert validate_exit(file) == expected


@pytest.fixture(scope="module")
def warm_loader() -> None:
    """Airflow's imports and first DAG are slow once per process; the deadline is for a spec's own work."""
    with tempfile.TemporaryDirectory() as folder:
        load_dags(__file__, folder)


def folder_file(index: int, name: str, data: st.DataObject) -> str:
    """A mutated spec whose first line claims a dag_id of its own: a broken file keeps its DAG's name.

    The mutations leave ``dag_id`` alone (a duplicated id is a different promise, of its own test);
    random text follows the claimed line, so such a file is broken but still named.
    """
    spec = copy.deepcopy(VALID[name])
    spec.pop("dag_id", None)
    claim = f"dag_id: hostile_property_{index}\n"
    if data.draw(st.booleans(), label="random text"):
        return claim + data.draw(random_yaml, label="text")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutate(spec, data)
    text = dump(spec).replace(SENTINEL, data.draw(deep_values, label="nesting"), 1)
    return claim + text


def write_folder(folder: Path, names: list[str], data: st.DataObject) -> list[Path]:
    files = [folder / f"spec_{index}.yaml" for index in range(len(names))]
    for index, (file, name) in enumerate(zip(files, names, strict=True)):
        file.write_text(folder_file(index, name, data), encoding="utf-8", errors="surrogatepass")
    return files


def loads(file: Path) -> bool:
    try:
        load_spec(file)
    except SpecError:
        return False
    return True


def assert_flagged_when_invalid(dags: Mapping[str, DAG], index: int, file: Path) -> None:
    valid = loads(file)
    assert (INVALID_TAG not in dags[f"hostile_property_{index}"].tags) == valid, file.read_text()[:500]
    event("a DAG" if valid else "a flagged DAG")


@pytest.mark.usefixtures("warm_loader")
@hostile_settings(examples=30, deadline=SPEC_DEADLINE * FOLDER_FILES)
@given(names=st.lists(valid_names, min_size=1, max_size=FOLDER_FILES), data=st.data())
def test_the_loader_never_raises_and_returns_one_dag_per_file(names: list[str], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = write_folder(Path(folder), names, data)
        dags = load_dags(__file__, folder)
        assert sorted(dags) == sorted(f"hostile_property_{i}" for i in range(len(files)))
        for index, file in enumerate(files):
            assert_flagged_when_invalid(dags, index, file)


@pytest.mark.usefixtures("warm_loader")
@hostile_settings(examples=15, deadline=SPEC_DEADLINE * FOLDER_FILES)
@given(names=st.lists(valid_names, min_size=1, max_size=FOLDER_FILES), data=st.data())
def test_a_worker_loader_never_raises_and_builds_its_dag(names: list[str], data: st.DataObject) -> None:
    """With Airflow's parsing context naming one DAG (a task is running), that DAG is built as the scheduler has it."""
    with tempfile.TemporaryDirectory() as folder:
        files = write_folder(Path(folder), names, data)
        index = data.draw(st.integers(0, len(files) - 1), label="running")
        with mock.patch.dict(os.environ, {PARSING_DAG_ID: f"hostile_property_{index}"}):
            dags = load_dags(__file__, folder)
        assert_flagged_when_invalid(dags, index, files[index])


def test_a_spec_of_every_hostile_text_loads_or_fails_cleanly() -> None:
    """Each hand-written hostile text in every string of a valid spec, one value at a time."""
    spec = VALID[VALID_FILES[0].name]
    for path in string_paths(spec):
        for text in HOSTILE:
            changed = copy.deepcopy(spec)
            get(changed, path[:-1])[path[-1]] = text
            check_outcome(yaml.safe_dump(changed, sort_keys=False, allow_unicode=True, width=1000))
