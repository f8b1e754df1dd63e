"""Boundary tests derived from the parameter table (FLUX_PARAMS): in-process validation and the emulator.

Every range, choice and step below comes from the table itself; the only literal values are the
examples the contract sheet spells out (0.15/0.35/0.17 strength, 3.3/3.33 guidance, 2.5 steps, "jpeg").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from decimal import Decimal
from itertools import pairwise
from typing import Any

import httpx2
import pytest
from jsonschema import Draft202012Validator

from flexflow.contract import (
    DEFAULTS,
    FLUX_PARAMS,
    PARAMS_BY_NAME,
    FluxParam,
    apply_defaults,
    credit_cost,
    pixel_size,
    request_schema,
    validate_request,
)
from flexflow.contract.params import ASPECT_RATIOS, RESOLUTIONS
from flexflow.contract.sizes import CREDITS_PER_MEGAPIXEL, MEGAPIXEL, SIDE_MULTIPLE, megapixels
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer
from tests.conftest import flux_request

# -- values derived from the table ---------------------------------------------------------------


def json_number(value: Decimal, param: FluxParam) -> int | float:
    """A Decimal as the JSON number a client would send for this param."""
    if param.type == "integer" or value == value.to_integral_value():
        return int(value)
    return float(value)


def step_of(param: FluxParam) -> Decimal:
    return Decimal(param.step) if param.step else Decimal(1)


def stepped(param: FluxParam) -> bool:
    return param.has_range and param.step is not None


def accepted_values(param: FluxParam) -> list[Any]:
    """Values the table says are allowed: boundaries, every choice, booleans, examples and the default."""
    values: list[Any] = []
    if param.has_range:
        values += [json_number(Decimal(param.minimum), param), json_number(Decimal(param.maximum), param)]
    values += list(param.choices)
    if param.type == "boolean":
        values += [True, False]
    if param.type == "integer" and not param.has_range:
        values += [0, -1, 2**31]
    if param.url:
        values += ["http://example.com/reference.png", "https://127.0.0.1:8080/a/b.webp?x=1"]
    values += list(param.examples)
    if param.default is not None:
        values.append(param.default)
    unique: list[Any] = []
    for value in values:
        if not any(value == seen and type(value) is type(seen) for seen in unique):
            unique.append(value)
    return unique


#: Misspellings the contract sheet calls out; everything else is derived from the choices.
NAMED_NEAR_MISSES = {"output_format": ["jpeg"]}


def rejected_values(param: FluxParam) -> list[Any]:
    """Values just outside the table: past each boundary, near-miss choices, wrong types."""
    values: list[Any] = []
    if param.has_range:
        step = step_of(param)
        values += [
            json_number(Decimal(param.minimum) - step, param),
            json_number(Decimal(param.maximum) + step, param),
        ]
    for choice in param.choices:
        values += [choice + " ", " " + choice, choice + "x"]
        if choice.swapcase() not in param.choices and choice.swapcase() != choice:
            values.append(choice.swapcase())
    values += NAMED_NEAR_MISSES.get(param.name, [])
    example = param.examples[0] if param.examples else param.default
    if param.type == "number":
        values += [str(example), True, None, [example]]
    elif param.type == "integer":
        values += [str(example), True, False, None, int(example) + 0.5]
    elif param.type == "boolean":
        values += ["true", "false", 1, 0, None]
    else:
        values += [1, True, None, [example]]
    if param.url:
        values += ["ftp://example.com/a.jpg", "example.com/a.jpg", "https://", "file:///etc/passwd", "not a url"]
    return values


def _ids(name: str, value: Any) -> str:
    return f"{name}={value!r}"


ACCEPTED = [pytest.param(p.name, v, id=_ids(p.name, v)) for p in FLUX_PARAMS for v in accepted_values(p)]
REJECTED = [pytest.param(p.name, v, id=_ids(p.name, v)) for p in FLUX_PARAMS for v in rejected_values(p)]
STEPPED = [pytest.param(p.name, id=p.name) for p in FLUX_PARAMS if stepped(p)]


def off_step_values(param: FluxParam) -> list[int | float]:
    """A value between every two neighbouring allowed values (for integers: x.5, a type error)."""
    allowed = param.allowed_numbers()
    return [float((low + high) / 2) for low, high in pairwise(allowed)]


def assert_explains(param: FluxParam, message: str) -> None:
    """The message names the key and what it allows."""
    assert param.name in message
    if param.choices:
        for choice in param.choices:
            assert f'"{choice}"' in message
    elif param.url:
        assert "http" in message
    elif param.type == "boolean":
        assert "true or false" in message
    elif param.has_range:
        assert param.minimum in message
        assert param.maximum in message
        if param.step and Decimal(param.step) != 1:
            assert param.step in message
    else:
        assert "whole number" in message


# -- the table itself ----------------------------------------------------------------------------


def test_table_is_consistent() -> None:
    assert len(PARAMS_BY_NAME) == len(FLUX_PARAMS)
    for param in FLUX_PARAMS:
        assert param.examples, f"{param.name} has no example"
        if param.has_range:
            assert Decimal(param.minimum) < Decimal(param.maximum)
        if stepped(param):
            allowed = param.allowed_numbers()
            assert allowed[0] == Decimal(param.minimum)
            assert allowed[-1] == Decimal(param.maximum), f"{param.name}: maximum is not on a step"


def test_the_contracts_named_examples() -> None:
    """CONTRACT.md's examples: 0.15 and 0.35 are valid strengths, 0.17 is not; 3.3 is a valid guidance, 3.33 is not."""
    strength = PARAMS_BY_NAME["image_prompt_strength"].allowed_numbers()
    guidance = PARAMS_BY_NAME["guidance"].allowed_numbers()
    assert Decimal("0.15") in strength
    assert Decimal("0.35") in strength
    assert Decimal("0.17") not in strength
    assert Decimal("3.3") in guidance
    assert Decimal("3.33") not in guidance
    for name, value, ok in [
        ("image_prompt_strength", 0.15, True),
        ("image_prompt_strength", 0.35, True),
        ("image_prompt_strength", 0.17, False),
        ("guidance", 3.3, True),
        ("guidance", 3.33, False),
        ("steps", 2.5, False),
    ]:
        problems = validate_request(flux_request(**{name: value}))
        assert (problems == []) is ok, (name, value, problems)


# -- in-process validation -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_value_accepted_in_process(name: str, value: Any) -> None:
    assert validate_request(flux_request(**{name: value})) == []


@pytest.mark.parametrize(("name", "value"), REJECTED)
def test_value_rejected_in_process(name: str, value: Any) -> None:
    problems = validate_request(flux_request(**{name: value}))
    assert [p.dotted_path for p in problems] == [f"fluxParams.{name}"]
    assert_explains(PARAMS_BY_NAME[name], problems[0].message)
    assert f"got {json.dumps(value)}" in problems[0].message, "the value as the author wrote it (JSON)"


@pytest.mark.parametrize("name", STEPPED)
def test_every_step_accepted_in_process(name: str) -> None:
    param = PARAMS_BY_NAME[name]
    bad = [v for v in param.allowed_numbers() if validate_request(flux_request(**{name: json_number(v, param)}))]
    assert bad == []


@pytest.mark.parametrize("name", STEPPED)
def test_every_off_step_value_rejected_in_process(name: str) -> None:
    param = PARAMS_BY_NAME[name]
    passed = [v for v in off_step_values(param) if not validate_request(flux_request(**{name: v}))]
    assert passed == []


def test_unknown_param_rejected_with_suggestion() -> None:
    problems = validate_request(flux_request(guidence=3))
    assert [p.dotted_path for p in problems] == ["fluxParams.guidence"]
    assert "did you mean 'guidance'" in problems[0].message
    for param in FLUX_PARAMS:
        assert param.name in problems[0].message


def test_all_params_at_once_accepted() -> None:
    body = flux_request(**{p.name: p.examples[0] for p in FLUX_PARAMS})
    assert validate_request(body) == []


def test_several_problems_reported_once_per_key() -> None:
    above_max = {p.name: json_number(Decimal(p.maximum) + step_of(p), p) for p in FLUX_PARAMS if p.has_range}
    problems = validate_request(flux_request(**above_max))
    assert sorted(p.dotted_path for p in problems) == sorted(f"fluxParams.{name}" for name in above_max)


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(emulator_server: EmulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(
        base_url=emulator_server.url, headers={"X-API-Key": DEFAULT_TEST_KEY}, timeout=5.0
    ) as http_client:
        yield http_client


def submit(http: httpx2.Client, body: dict[str, Any]) -> httpx2.Response:
    return http.post("/v2/images/generate", json=body)


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_value_accepted_over_http(emulator: EmulatorServer, http: httpx2.Client, name: str, value: Any) -> None:
    response = submit(http, flux_request(**{name: value}))
    assert response.status_code == 202, response.text
    job = http.get(f"/v2/jobs/{response.json()['jobId']}").json()
    assert job["input"]["fluxParams"] == {name: value}


@pytest.mark.parametrize(("name", "value"), REJECTED)
def test_value_rejected_over_http(emulator: EmulatorServer, http: httpx2.Client, name: str, value: Any) -> None:
    response = submit(http, flux_request(**{name: value}))
    assert response.status_code == 400
    body = response.json()
    assert isinstance(body["error"], str)
    assert list(body["details"]) == [f"fluxParams.{name}"]
    (message,) = body["details"][f"fluxParams.{name}"]
    assert_explains(PARAMS_BY_NAME[name], message)
    assert emulator.accounting()["jobs_created"] == 0


@pytest.mark.parametrize("name", STEPPED)
def test_every_step_accepted_over_http(emulator: EmulatorServer, http: httpx2.Client, name: str) -> None:
    param = PARAMS_BY_NAME[name]
    statuses = {
        str(v): submit(http, flux_request(**{name: json_number(v, param)})).status_code for v in param.allowed_numbers()
    }
    assert {v: s for v, s in statuses.items() if s != 202} == {}


@pytest.mark.parametrize("name", STEPPED)
def test_every_off_step_value_rejected_over_http(emulator: EmulatorServer, http: httpx2.Client, name: str) -> None:
    param = PARAMS_BY_NAME[name]
    statuses = {v: submit(http, flux_request(**{name: v})).status_code for v in off_step_values(param)}
    assert {v: s for v, s in statuses.items() if s != 400} == {}
    assert emulator.accounting()["jobs_created"] == 0


def test_the_contracts_named_examples_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    cases = [
        ("image_prompt_strength", 0.15, 202),
        ("image_prompt_strength", 0.35, 202),
        ("image_prompt_strength", 0.17, 400),
        ("guidance", 3.3, 202),
        ("guidance", 3.33, 400),
        ("steps", 2.5, 400),
        ("output_format", "jpeg", 400),
    ]
    for name, value, status in cases:
        assert submit(http, flux_request(**{name: value})).status_code == status, (name, value)


# -- defaults, sizes, prices ---------------------------------------------------------------------


def test_apply_defaults_fills_every_documented_default() -> None:
    filled = apply_defaults({})
    assert filled == {p.name: p.default for p in FLUX_PARAMS if p.default is not None}
    assert filled == DEFAULTS
    assert validate_request(flux_request(**filled)) == [], "a default is outside its own allowed values"


@pytest.mark.parametrize("param", FLUX_PARAMS, ids=lambda p: p.name)
def test_apply_defaults_given_value_wins(param: FluxParam) -> None:
    given = {param.name: param.examples[0]}
    filled = apply_defaults(given)
    assert filled[param.name] == param.examples[0]
    assert given == {param.name: param.examples[0]}, "apply_defaults changed its argument"
    for other in FLUX_PARAMS:
        if other is not param:
            assert filled.get(other.name) == other.default


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_pixel_size(resolution: str, aspect_ratio: str) -> None:
    width, height = pixel_size(resolution, aspect_ratio)
    assert width % SIDE_MULTIPLE == 0
    assert height % SIDE_MULTIPLE == 0
    ratio_w, ratio_h = (int(part) for part in aspect_ratio.split(":"))
    target = float(megapixels(resolution)) * MEGAPIXEL
    # Rounding each side to a multiple of 16 moves it by at most 8 pixels; allow that and no more.
    slack = (SIDE_MULTIPLE / 2) / width + (SIDE_MULTIPLE / 2) / height
    assert abs(width * height / target - 1) <= min(0.03, slack * 1.01)
    assert abs((width / height) / (ratio_w / ratio_h) - 1) <= min(0.03, slack * 1.01)
    if ratio_w > ratio_h:
        assert width > height
    elif ratio_w < ratio_h:
        assert width < height
    else:
        assert width == height


def test_pixel_size_of_1mp_square_is_1024() -> None:
    assert pixel_size("1MP", "1:1") == (1024, 1024)


def test_pixel_size_grows_with_resolution() -> None:
    for aspect_ratio in ASPECT_RATIOS:
        areas = [math.prod(pixel_size(r, aspect_ratio)) for r in sorted(RESOLUTIONS, key=megapixels)]
        assert areas == sorted(areas)
        assert len(set(areas)) == len(areas)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_credit_cost(resolution: str) -> None:
    started_megapixels = max(1, math.ceil(megapixels(resolution)))
    assert credit_cost({"resolution": resolution}) == started_megapixels * CREDITS_PER_MEGAPIXEL
    with_reference = {"resolution": resolution, "image_prompt": PARAMS_BY_NAME["image_prompt"].examples[0]}
    assert credit_cost(with_reference) == (started_megapixels + 1) * CREDITS_PER_MEGAPIXEL


def test_credit_cost_uses_the_default_resolution() -> None:
    assert credit_cost({}) == credit_cost({"resolution": DEFAULTS["resolution"]})
    assert credit_cost(apply_defaults({})) == credit_cost({})


def test_credit_cost_ignores_params_that_do_not_change_the_output_size() -> None:
    base = credit_cost({"resolution": "1MP"})
    for param in FLUX_PARAMS:
        if param.name not in ("resolution", "image_prompt"):
            assert credit_cost({"resolution": "1MP", param.name: param.examples[0]}) == base, param.name


# -- the published request schema ----------------------------------------------------------------


def test_request_schema_is_valid_draft_2020_12() -> None:
    schema = request_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("param", FLUX_PARAMS, ids=lambda p: p.name)
def test_request_schema_documents_each_param(param: FluxParam) -> None:
    flux_schema = request_schema()["properties"]["fluxParams"]
    assert flux_schema["additionalProperties"] is False
    schema = flux_schema["properties"][param.name]
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    assert schema["description"].startswith(param.description)
    assert param.allowed_text() in schema["description"]
    assert schema["examples"] == list(param.examples)
    for example in schema["examples"]:
        assert validator.is_valid(example), example
    if param.default is None:
        assert "default" not in schema
    else:
        assert schema["default"] == param.default
        assert validator.is_valid(param.default)
    if param.has_range:
        assert schema["minimum"] == json_number(Decimal(param.minimum), param)
        assert schema["maximum"] == json_number(Decimal(param.maximum), param)


def test_request_schema_covers_the_whole_table() -> None:
    assert list(request_schema()["properties"]["fluxParams"]["properties"]) == [p.name for p in FLUX_PARAMS]
