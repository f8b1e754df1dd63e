"""Property tests: whatever is done to a valid spec, loading it fails only with a SpecError that points into the file.

Each test starts from one of the example specs (``specs/*.yaml``) and breaks it at random, either
as data (delete a key, change a value's type, add keys, duplicate or swap list items; then dumped
back to YAML) or as text (truncate, insert characters or lines, delete or repeat a line). Loading
the result must either succeed or raise :class:`flexflow.spec.SpecError`, and every problem must
name a line that exists (``1 <= line <= lines``; line 1 for an empty text) and a column >= 1.

Runs are deterministic (``derandomize=True``, no example database) and take a few seconds.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexflow.compiler.layout import task_layout
from flexflow.spec import Spec, SpecError, budget, parse_spec
from flexflow.spec.yaml_source import load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
TEXTS = {file.name: file.read_text(encoding="utf-8") for file in EXAMPLES}
DATA = {name: load(text)[0] for name, text in TEXTS.items()}

PROPERTY = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Path_ = tuple[str | int, ...]

#: Anything JSON can hold, plus the YAML-only floats (nan, inf), in small doses.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=6,
)
#: Keys a spec might plausibly get wrong, and random ones.
spec_words = st.sampled_from(
    [
        "version", "dag_id", "images", "publish", "to", "name", "prompt", "flux", "variants", "defaults",
        "schedule", "start_date", "timeout", "retry_delay", "poll_interval", "filename", "webhook_url",
        "webhook_events", "progress", "guidance", "seed", "steps", "resolution", "aspect_ratio", "params",
        "api_key", "token", "<<",
    ]
)  # fmt: skip
keys = spec_words | st.text(max_size=12)
#: Characters that matter to YAML, and any others.
yaml_chars = st.sampled_from(list(":-?[]{},#&*!|>'\"%@`\t\n\r \\")) | st.characters()


def check_outcome(text: str) -> Spec | None:
    """Load the text: a Spec, or a SpecError whose every problem points into the text; nothing else."""
    error: SpecError | None = None
    try:
        spec = parse_spec(text, "mutated.yaml")
    except SpecError as exc:
        error = exc
    if error is not None:
        assert error.problems, "a SpecError without problems"
        lines = max(1, len(text.splitlines()))
        for problem in error.problems:
            assert problem.file == "mutated.yaml"
            assert 1 <= problem.line <= lines, f"line {problem.line} of a {lines}-line text: {problem}"
            assert problem.column >= 1, str(problem)
            assert problem.message
        spots = [(p.line, p.column) for p in error.problems]
        assert spots == sorted(spots)
        return None
    # A spec that loads is usable: its jobs, sizes and tasks can be computed.
    assert spec.job_count >= len(spec.images) >= 1
    assert spec.megapixels > 0
    assert budget.estimate(spec, Decimal(1)).credits > 0
    assert task_layout(spec)
    return spec


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def paths(value: Any, path: Path_ = ()) -> list[Path_]:
    """Every path of keys and indexes in the data, the root excluded."""
    found: list[Path_] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found.append((*path, key))
        found.extend(paths(item, (*path, key)))
    return found


def containers(value: Any, kind: type, path: Path_ = ()) -> list[Path_]:
    """Paths of every dict (or list) in the data, the root included."""
    found = [path] if isinstance(value, kind) else []
    for sub in paths(value, path):
        if isinstance(get(value, sub[len(path) :]), kind):
            found.append(sub)
    return found


def get(data: Any, path: Path_) -> Any:
    for part in path:
        data = data[part]
    return data


def type_name(value: Any) -> str:
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


example_names = st.sampled_from(sorted(TEXTS))


def test_the_examples_are_valid() -> None:
    assert len(EXAMPLES) >= 3
    for name, text in TEXTS.items():
        assert check_outcome(text) is not None, name
        assert check_outcome(dump(DATA[name])) is not None, f"{name} does not survive a YAML round trip"


# -- mutations of the data -----------------------------------------------------------------------


@PROPERTY
@given(name=example_names, data=st.data())
def test_delete_a_key(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(DATA[name])
    path = data.draw(st.sampled_from([p for p in paths(spec) if isinstance(p[-1], str)]))
    del get(spec, path[:-1])[path[-1]]
    check_outcome(dump(spec))


@PROPERTY
@given(name=example_names, data=st.data())
def test_replace_a_value_with_another_type(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(DATA[name])
    path = data.draw(st.sampled_from(paths(spec)))
    old = get(spec, path)
    new = data.draw(json_values.filter(lambda v: type_name(v) != type_name(old)))
    get(spec, path[:-1])[path[-1]] = new
    check_outcome(dump(spec))


@PROPERTY
@given(name=example_names, data=st.data())
def test_insert_random_keys(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(DATA[name])
    for _ in range(data.draw(st.integers(1, 3))):
        target = get(spec, data.draw(st.sampled_from(containers(spec, dict))))
        target[data.draw(keys)] = data.draw(json_values)
    check_outcome(dump(spec))


@PROPERTY
@given(name=example_names, data=st.data())
def test_duplicate_or_swap_list_items(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(DATA[name])
    lists = [p for p in containers(spec, list) if get(spec, p)]
    target = get(spec, data.draw(st.sampled_from(lists)))
    i = data.draw(st.integers(0, len(target) - 1))
    j = data.draw(st.integers(0, len(target) - 1))
    if data.draw(st.booleans()):
        target.insert(j, copy.deepcopy(target[i]))
    else:
        target[i], target[j] = target[j], target[i]
    check_outcome(dump(spec))


@PROPERTY
@given(name=example_names, value=json_values)
def test_replace_the_whole_document(name: str, value: Any) -> None:
    check_outcome(dump(value))


# -- mutations of the text -----------------------------------------------------------------------


@PROPERTY
@given(name=example_names, data=st.data())
def test_truncate_the_text(name: str, data: st.DataObject) -> None:
    text = TEXTS[name]
    check_outcome(text[: data.draw(st.integers(0, len(text)))])


@PROPERTY
@given(name=example_names, data=st.data())
def test_insert_random_characters(name: str, data: st.DataObject) -> None:
    text = TEXTS[name]
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(st.text(yaml_chars, min_size=1, max_size=4)) + text[at:]
    check_outcome(text)


@PROPERTY
@given(name=example_names, data=st.data())
def test_insert_random_lines(name: str, data: st.DataObject) -> None:
    lines = TEXTS[name].splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(lines)))
        indent = " " * data.draw(st.sampled_from([0, 2, 4, 6]))
        body = data.draw(
            st.sampled_from(["", "- ", "? "])
            | st.builds(lambda k, v: f"{k}: {v}", keys, st.text(yaml_chars, max_size=10))
            | st.text(yaml_chars, max_size=20)
        )
        lines.insert(at, indent + body.replace("\n", " ").replace("\r", " ") + "\n")
    check_outcome("".join(lines))


@PROPERTY
@given(name=example_names, data=st.data())
def test_delete_or_repeat_a_line(name: str, data: st.DataObject) -> None:
    lines = TEXTS[name].splitlines(keepends=True)
    at = data.draw(st.integers(0, len(lines) - 1))
    if data.draw(st.booleans()):
        del lines[at]
    else:
        lines.insert(at, lines[at])
    check_outcome("".join(lines))


# -- inputs found by hand that a random search is unlikely to reach ------------------------------

VALID = TEXTS["spring_social_refresh.yaml"]

ADVERSARIAL = {
    "empty": "",
    "only a comment": "# nothing here\n",
    "null document": "~\n",
    "scalar document": "just a string\n",
    "no final newline": "version: 1\ndag_id: x",
    "unclosed flow at the end": "version: 1\nimages: [\n",
    "unclosed quote at the end": 'version: 1\ndag_id: "x\n',
    "NUL character": "version: 1\x00\n",
    "byte order mark": "\ufeff" + VALID,
    "CRLF line ends": VALID.replace("\n", "\r\n"),
    "two documents": VALID + "---\n" + VALID,
    "tab indentation": VALID.replace("  retries: 3", "\tretries: 3"),
    "complex key": "? [a, b]\n: value\n",
    "null key": "~: value\n",
    "merge key": "base: &base {version: 1}\n<<: *base\n",
    "merge of a scalar": "base: &base 1\nother: {<<: *base}\n",
    "merge with a complex key": "base: &base {[1]: 2}\nother: {<<: *base}\n",
    "integer over 4300 digits": "version: 1" + "0" * 5000 + "\n",
    "nan version": "version: .nan\n",
    "binary tag": "version: !!binary aGVsbG8=\n",
    "set tag": "tags: !!set {a, b}\n",
    "local tag": "tags: !<tag:example.com,2000:x> [a]\n",
    "date-shaped but not a date": VALID.replace("start_date: 2026-11-01", "start_date: 2026-02-30"),
    "timestamp with zone": VALID.replace("start_date: 2026-11-01", "start_date: 2026-11-01 06:00:00+02:00"),
    "nesting 200 deep": "params:\n  deep: " + "[" * 200 + "]" * 200 + "\n",
    "nesting 3000 deep (parser limit)": "params:\n  deep: " + "[" * 3000 + "]" * 3000 + "\n",
    "huge seed": VALID.replace("seed: 42", "seed: " + "9" * 400),
    "jinja deep nesting": VALID.replace("{{ params.campaign }}", "{{ " + "(" * 50 + "1" + ")" * 50 + " }}", 1),
    # Known crashers (see the report): each must become a SpecError.
    "recursive alias (sequence)": "params:\n  loop: &loop [*loop]\n",
    "recursive alias (mapping)": "params:\n  loop: &loop {again: *loop}\n",
    "nesting 600 deep (under the parser limit)": "params:\n  deep: " + "[" * 600 + "]" * 600 + "\n",
    "duration with too many days": VALID.replace("timeout: 20m", "timeout: 99999999999d"),
    "ISO duration with too many days": VALID.replace("timeout: 20m", "timeout: P9999999999D"),
    "duration of 10**400 seconds": VALID.replace("timeout: 20m", "timeout: 1" + "0" * 400 + "s"),
}


@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_adversarial_input_is_a_spec_error_or_a_spec(text: str) -> None:
    check_outcome(text)
