"""Contract test: the emulator's responses (and the client's requests) against the published OpenAPI document.

The document is Apiframe's OpenAPI 3.1 (``shared/reference/apiframe-openapi.json``); its schemas are
JSON Schema 2020-12, validated here with ``jsonschema`` and a ``referencing`` registry holding the
whole document, so ``$ref: "#/components/schemas/..."`` resolves as it is published.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from flexflow.client import FluxClient
from flexflow.contract import FLUX_PARAMS, MODEL_ID, request_schema
from flexflow.contract.wire import JOBS_PATH, SUBMIT_PATH, WEBHOOK_EVENTS, JobStatus
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer
from tests.conftest import flux_request

OPENAPI_PATH = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "apiframe-openapi.json"
if not OPENAPI_PATH.is_file():
    pytest.skip(
        f"the published OpenAPI document is not at {OPENAPI_PATH} (CI places a copy of shared/ beside the clone)",
        allow_module_level=True,
    )

OPENAPI: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
BASE_URI = "urn:apiframe:openapi"
REGISTRY: Registry = Registry().with_resource(BASE_URI, DRAFT202012.create_resource(OPENAPI))

# jsonschema checks "date-time" and "uri" only with optional packages; these two are enough here.
FORMATS = FormatChecker()
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]+$")


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not RFC3339.match(value):
        return False
    datetime.fromisoformat(value)
    return True


@FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(ABSOLUTE_URI.match(value))


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{BASE_URI}#{pointer}"}, registry=REGISTRY, format_checker=FORMATS)


def assert_valid(instance: object, pointer: str) -> None:
    errors = sorted(validator(pointer).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"not valid against {pointer}:\n" + "\n".join(
        f"  {'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in errors
    )


def response_pointer(path: str, method: str, status: int) -> str:
    responses = OPENAPI["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document a {status} response"
    return _pointer("paths", path, method, "responses", str(status), "content", "application/json", "schema")


def assert_response(response: httpx2.Response, path: str, method: str, status: int) -> dict[str, Any]:
    """The response has the status, a JSON body, and the body validates against the documented schema."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert_valid(body, response_pointer(path, method, status))
    return body


def component(name: str) -> str:
    return _pointer("components", "schemas", name)


def flux_flex_variant() -> tuple[str, dict[str, Any]]:
    """Pointer to, and content of, the GenerateImageRequest oneOf entry whose model enum is ["flux-2-flex"]."""
    variants = OPENAPI["components"]["schemas"]["GenerateImageRequest"]["oneOf"]
    found = [i for i, v in enumerate(variants) if v.get("properties", {}).get("model", {}).get("enum") == [MODEL_ID]]
    assert len(found) == 1, f"expected one {MODEL_ID} variant, found {len(found)}"
    return component("GenerateImageRequest") + f"/oneOf/{found[0]}", variants[found[0]]


JOB_PATH = JOBS_PATH + "/{id}"


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": DEFAULT_TEST_KEY}, timeout=5.0) as http_client:
        yield http_client


def submit(http: httpx2.Client, body: dict[str, Any] | None = None, **headers: str) -> httpx2.Response:
    return http.post(SUBMIT_PATH, json=body or flux_request(resolution="0.5MP"), headers=headers)


# -- the document itself -------------------------------------------------------------------------


def test_openapi_document_is_3_1_with_the_routes_flexflow_uses() -> None:
    assert OPENAPI["openapi"].startswith("3.1")
    for path in (SUBMIT_PATH, JOBS_PATH, JOB_PATH):
        assert path in OPENAPI["paths"]
    for name in ("JobAccepted", "Job", "JobList", "ErrorResponse", "ValidationError", "InsufficientCredits"):
        Draft202012Validator.check_schema(OPENAPI["components"]["schemas"][name])


def test_the_validator_is_not_vacuous() -> None:
    """The resolved schemas do reject bad bodies, so a pass below means something."""
    assert not validator(component("JobAccepted")).is_valid({"jobId": "not-a-uuid", "status": "QUEUED"})
    assert not validator(component("Job")).is_valid({"id": str(uuid.uuid4()), "status": "DONE"})
    assert not validator(response_pointer(SUBMIT_PATH, "post", 402)).is_valid({"error": "Insufficient credits"})
    assert not validator(component("Job")).is_valid(
        {
            "id": str(uuid.uuid4()),
            "status": "QUEUED",
            "model": MODEL_ID,
            "progress": 0,
            "error": None,
            "creditCost": None,
            "webhookStatus": None,
            "createdAt": "yesterday",
            "completedAt": None,
        }
    )


# -- submit --------------------------------------------------------------------------------------


def test_submit_202_is_job_accepted(http: httpx2.Client) -> None:
    body = assert_response(submit(http), SUBMIT_PATH, "post", 202)
    assert body["status"] == "QUEUED"


def test_submit_400_is_validation_error(http: httpx2.Client) -> None:
    body = assert_response(submit(http, flux_request(guidance=3.33, output_format="jpeg")), SUBMIT_PATH, "post", 400)
    assert set(body["details"]) == {"fluxParams.guidance", "fluxParams.output_format"}


def test_submit_400_for_a_body_that_is_not_json(http: httpx2.Client) -> None:
    response = http.post(SUBMIT_PATH, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_response(response, SUBMIT_PATH, "post", 400)


def test_submit_400_for_an_idempotency_key_too_long(http: httpx2.Client) -> None:
    limit = OPENAPI["components"]["parameters"]["IdempotencyKey"]["schema"]["maxLength"]
    assert_response(submit(http, **{"Idempotency-Key": "k" * (limit + 1)}), SUBMIT_PATH, "post", 400)
    assert_response(submit(http, **{"Idempotency-Key": "k" * limit}), SUBMIT_PATH, "post", 202)


@pytest.mark.parametrize("key", [None, "afk_unknown"], ids=["missing", "unknown"])
def test_submit_401_is_error_response(emulator: EmulatorServer, key: str | None) -> None:
    headers = {"X-API-Key": key} if key else {}
    with httpx2.Client(base_url=emulator.url, headers=headers, timeout=5.0) as anonymous:
        assert_response(submit(anonymous), SUBMIT_PATH, "post", 401)


def test_submit_402_is_insufficient_credits(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"credits": 1})
    body = assert_response(submit(http), SUBMIT_PATH, "post", 402)
    assert body["creditsAvailable"] == 1
    assert body["creditsRequired"] > 1


def test_submit_403_is_error_response(emulator: EmulatorServer) -> None:
    emulator.config.update({"inactive_keys": ["afk_inactive"]})
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_inactive"}, timeout=5.0) as inactive:
        assert_response(submit(inactive), SUBMIT_PATH, "post", 403)


def test_submit_429_is_error_response_with_retry_after(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "rate_limit", "count": 1, "route": "submit"})
    response = submit(http)
    assert_response(response, SUBMIT_PATH, "post", 429)
    assert float(response.headers["Retry-After"]) >= 0


def test_submit_503_is_error_response(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "http_503", "count": 1, "route": "submit"})
    assert_response(submit(http), SUBMIT_PATH, "post", 503)


def test_submit_409_is_the_generic_error_envelope(http: httpx2.Client) -> None:
    # The OpenAPI document lists no 409 for this route (CONTRACT.md does): the generic envelope is
    # what "most failure cases" return.
    assert "409" not in OPENAPI["paths"][SUBMIT_PATH]["post"]["responses"]
    assert submit(http, flux_request("one"), **{"Idempotency-Key": "k409"}).status_code == 202
    response = submit(http, flux_request("another"), **{"Idempotency-Key": "k409"})
    assert response.status_code == 409
    assert_valid(response.json(), component("ErrorResponse"))


# -- GET /v2/jobs/{id}, for every status ---------------------------------------------------------

JOB_CASES = [
    pytest.param({"queue_seconds": 30.0}, None, "QUEUED", id="queued"),
    pytest.param({"queue_seconds": 0.0, "processing_seconds": 30.0}, None, "PROCESSING", id="processing"),
    pytest.param({}, None, "COMPLETED", id="completed"),
    pytest.param({}, "fail", "FAILED", id="failed"),
    pytest.param({}, "moderation", "FAILED", id="failed-moderation"),
    pytest.param({}, "cancel", "CANCELLED", id="cancelled"),
    pytest.param({}, "expired_result", "COMPLETED", id="completed-expired"),
    pytest.param({"result_shape": "string"}, None, "COMPLETED", id="completed-result-string"),
    pytest.param({}, "result_list", "COMPLETED", id="completed-result-list"),
]


def _job_in_state(
    emulator: EmulatorServer, http: httpx2.Client, config: dict[str, Any], fault: str | None, key: str | None = None
) -> str:
    emulator.config.update({"queue_seconds": 0.0, "processing_seconds": 0.0, "result_shape": "images", **config})
    if fault:
        emulator.faults.add({"fault": fault, "count": 1})
    headers = {"Idempotency-Key": key} if key else {}
    return assert_response(submit(http, **headers), SUBMIT_PATH, "post", 202)["jobId"]


@pytest.mark.parametrize(("config", "fault", "status"), JOB_CASES)
def test_get_job_200_is_job_for_every_status(
    emulator: EmulatorServer, http: httpx2.Client, config: dict[str, Any], fault: str | None, status: str
) -> None:
    job_id = _job_in_state(emulator, http, config, fault)
    job = assert_response(http.get(f"{JOBS_PATH}/{job_id}"), JOB_PATH, "get", 200)
    assert job["id"] == job_id
    assert job["status"] == status
    assert job["model"] == MODEL_ID
    terminal = JobStatus(status).is_terminal
    assert (job["completedAt"] is not None) is terminal
    assert (job["creditCost"] is not None) is terminal
    assert (job["result"] is not None) is (status == "COMPLETED")
    assert job["expired"] is (fault == "expired_result")
    if status in ("FAILED", "CANCELLED"):
        assert job["creditCost"] == 0
        assert job["error"]
    else:
        assert job["error"] is None


@pytest.mark.parametrize(("config", "fault", "status"), JOB_CASES)
def test_idempotent_replay_is_job_accepted_for_every_status(
    emulator: EmulatorServer, http: httpx2.Client, config: dict[str, Any], fault: str | None, status: str
) -> None:
    """A replay answers the job's current status; JobAccepted's enum is the contract for it."""
    job_id = _job_in_state(emulator, http, config, fault, key=f"replay-{status}")
    replay = assert_response(submit(http, **{"Idempotency-Key": f"replay-{status}"}), SUBMIT_PATH, "post", 202)
    assert replay["jobId"] == job_id
    if status in OPENAPI["components"]["schemas"]["JobAccepted"]["properties"]["status"]["enum"]:
        assert replay["status"] == status


def test_get_job_with_webhook_status_is_job(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"queue_seconds": 30.0})
    body = {**flux_request(resolution="0.5MP"), "webhookUrl": "https://example.com/hook", "webhookEvents": ["failed"]}
    job_id = assert_response(submit(http, body), SUBMIT_PATH, "post", 202)["jobId"]
    job = assert_response(http.get(f"{JOBS_PATH}/{job_id}"), JOB_PATH, "get", 200)
    assert job["webhookStatus"] in ("pending", "failed")


def test_get_job_400_for_a_non_uuid_id(http: httpx2.Client) -> None:
    assert_response(http.get(f"{JOBS_PATH}/not-a-uuid"), JOB_PATH, "get", 400)


def test_get_job_404_for_an_unknown_id(http: httpx2.Client) -> None:
    assert_response(http.get(f"{JOBS_PATH}/{uuid.uuid4()}"), JOB_PATH, "get", 404)


def test_get_job_404_for_another_users_job(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"api_keys": [DEFAULT_TEST_KEY, "afk_other"]})
    job_id = submit(http).json()["jobId"]
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_other"}, timeout=5.0) as other:
        assert_response(other.get(f"{JOBS_PATH}/{job_id}"), JOB_PATH, "get", 404)


def test_get_job_401_and_403(emulator: EmulatorServer) -> None:
    emulator.config.update({"inactive_keys": ["afk_inactive"]})
    path = f"{JOBS_PATH}/{uuid.uuid4()}"
    for key, status in ((None, 401), ("afk_unknown", 401), ("afk_inactive", 403)):
        with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": key} if key else {}, timeout=5.0) as c:
            assert_response(c.get(path), JOB_PATH, "get", status)


def test_get_job_429(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "rate_limit", "count": 1, "route": "poll"})
    assert_response(http.get(f"{JOBS_PATH}/{uuid.uuid4()}"), JOB_PATH, "get", 429)


# -- GET /v2/jobs --------------------------------------------------------------------------------


def test_list_jobs_200_is_job_list(emulator: EmulatorServer, http: httpx2.Client) -> None:
    for config, fault, _status in (case.values for case in JOB_CASES):
        _job_in_state(emulator, http, config, fault)
    body = assert_response(http.get(JOBS_PATH, params={"model": MODEL_ID}), JOBS_PATH, "get", 200)
    assert len(body["jobs"]) == len(JOB_CASES)
    assert body["hasMore"] is False
    assert {j["status"] for j in body["jobs"]} == {c.values[2] for c in JOB_CASES}


def test_list_jobs_pages_are_job_lists(emulator: EmulatorServer, http: httpx2.Client) -> None:
    ids = [submit(http).json()["jobId"] for _ in range(3)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = assert_response(http.get(JOBS_PATH, params=params), JOBS_PATH, "get", 200)
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["nextCursor"]
        assert page["hasMore"] is (cursor is not None)
        if cursor is None:
            break
    assert seen == list(reversed(ids)), "newest first"


def test_list_jobs_filtered_by_status(emulator: EmulatorServer, http: httpx2.Client) -> None:
    _job_in_state(emulator, http, {}, "fail")
    _job_in_state(emulator, http, {}, None)
    body = assert_response(http.get(JOBS_PATH, params={"status": "FAILED"}), JOBS_PATH, "get", 200)
    assert [j["status"] for j in body["jobs"]] == ["FAILED"]


@pytest.mark.parametrize("cursor", ["abc", "-2"])
def test_list_jobs_400_for_a_cursor_the_api_never_returned(http: httpx2.Client, cursor: str) -> None:
    """The route documents 400 for an invalid cursor; a negative one must not page from the end."""
    for _ in range(3):
        submit(http)
    assert_response(http.get(JOBS_PATH, params={"limit": "1", "cursor": cursor}), JOBS_PATH, "get", 400)


def test_list_jobs_400_and_401(emulator: EmulatorServer, http: httpx2.Client) -> None:
    assert_response(http.get(JOBS_PATH, params={"limit": "0"}), JOBS_PATH, "get", 400)
    assert_response(http.get(JOBS_PATH, params={"status": "DONE"}), JOBS_PATH, "get", 400)
    with httpx2.Client(base_url=emulator.url, timeout=5.0) as anonymous:
        assert_response(anonymous.get(JOBS_PATH), JOBS_PATH, "get", 401)


# -- requests ------------------------------------------------------------------------------------


def full_request() -> dict[str, Any]:
    """A request with every documented param set (and the webhook fields)."""
    return {
        **flux_request("a lighthouse at dusk", **{p.name: p.examples[0] for p in FLUX_PARAMS}),
        "webhookUrl": "https://example.com/hooks/flexflow",
        "webhookEvents": list(WEBHOOK_EVENTS),
    }


def test_the_clients_request_validates_against_the_flux_2_flex_variant(
    emulator: EmulatorServer, client: FluxClient, http: httpx2.Client
) -> None:
    request = full_request()
    assert set(request["fluxParams"]) == {p.name for p in FLUX_PARAMS}
    job_id = client.submit(request)
    sent = http.get(f"{JOBS_PATH}/{job_id}").json()["input"]  # the body exactly as the emulator received it
    assert sent == request
    variant_pointer, _ = flux_flex_variant()
    assert_valid(sent, variant_pointer)
    assert_valid(sent, component("GenerateImageRequest"))  # oneOf: exactly the flux-2-flex entry matches


def _openapi_property(variant: dict[str, Any], name: str) -> dict[str, Any]:
    return variant["properties"]["fluxParams"]["properties"][name]


def test_request_schema_allows_only_what_the_openapi_variant_allows() -> None:
    _, variant = flux_flex_variant()
    ours = request_schema()
    assert ours["additionalProperties"] is False
    assert variant["additionalProperties"] is False
    assert set(ours["properties"]) <= set(variant["properties"])
    assert set(variant["required"]) <= set(ours["required"])
    ours_flux = ours["properties"]["fluxParams"]
    theirs_flux = variant["properties"]["fluxParams"]
    assert ours_flux["additionalProperties"] is False
    assert set(ours_flux["properties"]) <= set(theirs_flux["properties"])
    for name, schema in ours_flux["properties"].items():
        theirs = _openapi_property(variant, name)
        assert schema["type"] == theirs["type"], name
        if "enum" in theirs:
            assert set(schema["enum"]) <= set(theirs["enum"]), name
        for bound, tighter in (("minimum", Decimal.__ge__), ("maximum", Decimal.__le__)):
            if bound in theirs:
                assert bound in schema, f"{name}: the OpenAPI bounds it, flexflow does not"
                assert tighter(Decimal(str(schema[bound])), Decimal(str(theirs[bound]))), (name, bound)


def test_every_value_flexflow_allows_is_allowed_by_the_openapi_variant() -> None:
    variant_pointer, _ = flux_flex_variant()
    for param in FLUX_PARAMS:
        property_validator = validator(f"{variant_pointer}/properties/fluxParams/properties/{param.name}")
        values: list[Any] = [*param.choices, *param.examples]
        if param.default is not None:
            values.append(param.default)
        if param.has_range and param.step:
            values += [int(v) if param.type == "integer" else float(v) for v in param.allowed_numbers()]
        if param.type == "boolean":
            values += [True, False]
        rejected = [v for v in values if not property_validator.is_valid(v)]
        assert rejected == [], f"flexflow allows {param.name}={rejected!r}; the OpenAPI does not"
    for event in WEBHOOK_EVENTS:
        assert validator(f"{variant_pointer}/properties/webhookEvents").is_valid([event])


def test_openapi_only_params_are_not_accepted_by_default() -> None:
    """width, height, input_images, raw (and any other key the seed page lacks) stay out of flexflow's schema."""
    _, variant = flux_flex_variant()
    extensions = set(variant["properties"]["fluxParams"]["properties"]) - {p.name for p in FLUX_PARAMS}
    assert extensions, "the OpenAPI variant has no extra keys any more: revisit this test"
    flux_properties = request_schema()["properties"]["fluxParams"]["properties"]
    assert not extensions & set(flux_properties)
