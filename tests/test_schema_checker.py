"""The compiled fast check never accepts what jsonschema (the explaining validator) rejects."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flexflow.contract.schema import request_checker
from flexflow.spec.schema import spec_checker
from flexflow.spec.yaml_source import YamlProblem, load
from tests.conftest import ROOT, flux_request
from tests.test_spec_properties import DATA, PROPERTY, example_names, get, json_values, paths


def agree(checker: Any, instance: object) -> None:
    explained = not any(True for _ in checker.validator.iter_errors(instance))
    if checker.is_valid(instance):
        assert explained, f"fast check accepted what jsonschema rejects: {instance!r}"


def test_agree_on_the_invalid_corpus_and_the_examples() -> None:
    files = [*(ROOT / "tests/specs").rglob("*.yaml"), *(ROOT / "specs").glob("*.yaml")]
    checked = 0
    for file in files:
        try:
            data = load(file.read_text(encoding="utf-8", errors="replace"))[0]
        except YamlProblem:
            continue
        agree(spec_checker(), data)
        checked += 1
    assert checked > 40


@PROPERTY
@given(name=example_names, data=st.data())
def test_agree_on_mutated_specs(name: str, data: st.DataObject) -> None:
    spec = copy.deepcopy(DATA[name])
    path = data.draw(st.sampled_from(paths(spec)))
    get(spec, path[:-1])[path[-1]] = data.draw(json_values)
    agree(spec_checker(), spec)


@PROPERTY
@given(
    key=st.sampled_from(["guidance", "image_prompt_strength", "steps", "seed", "resolution", "go_fast"]),
    value=json_values | st.decimals(min_value=-2, max_value=12, places=2).map(float),
)
def test_agree_on_request_values(key: str, value: object) -> None:
    agree(request_checker(), flux_request(**{key: value}))


def test_checking_never_changes_the_instance() -> None:
    spec = copy.deepcopy(DATA["spring_social_refresh.yaml"])
    before = copy.deepcopy(spec)
    assert spec_checker().is_valid(spec)
    assert spec == before, "a validator that fills in defaults would override the spec's own"
