"""The emulator as a server users run: body limits, absurd JSON, checked controls, recorded requests, safe flags.

Everything over real HTTP on loopback. The fuzz tests run against a server of their own, restored
after every example, so what they post (settings, faults) never reaches another test.
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexflow.contract.wire import API_KEY_HEADER, JOBS_PATH, SUBMIT_PATH
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer, FaultRule
from flexflow.emulator.faults import Fault
from flexflow.emulator.server import accepted_keys, add_arguments
from flexflow.emulator.state import RECEIVED_BODY_KEPT, RECEIVED_REQUESTS_KEPT, EmulatorState
from tests.conftest import flux_request
from tests.deployment.harness.emulator import emulator_command, emulator_environment

ROOT = Path(__file__).resolve().parents[1]
KEY_HEADERS = {API_KEY_HEADER: DEFAULT_TEST_KEY}
#: A marker in refused bodies: a response must never echo it.
MARKER = "ECHO-CANARY-7f3a"
#: Every route and method the emulator serves (job ids that do not exist: the body is what is tested).
ROUTES = [
    ("POST", SUBMIT_PATH),
    ("GET", JOBS_PATH),
    ("GET", f"{JOBS_PATH}/{uuid.UUID(int=1)}"),
    ("GET", f"/_files/{uuid.UUID(int=1)}/0.png"),
    ("GET", f"/_emulator/jobs/{uuid.UUID(int=1)}"),
    ("GET", "/_emulator/accounting"),
    ("GET", "/_emulator/faults"),
    ("POST", "/_emulator/faults"),
    ("PUT", "/_emulator/faults"),
    ("DELETE", "/_emulator/faults"),
    ("GET", "/_emulator/config"),
    ("PATCH", "/_emulator/config"),
    ("POST", "/_emulator/reset"),
    ("GET", "/_emulator/requests"),
    ("GET", "/_emulator/health"),
    ("POST", "/no/such/route"),
]
JSON_ROUTES = [
    ("POST", SUBMIT_PATH),
    ("POST", "/_emulator/faults"),
    ("PUT", "/_emulator/faults"),
    ("PATCH", "/_emulator/config"),
]


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=emulator.url, headers=KEY_HEADERS, timeout=10.0) as client:
        yield client


@pytest.fixture
def limited(emulator: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session emulator with a small body limit, restored afterwards (the shared fixture does not)."""
    emulator.config.update({"max_body_bytes": 1000})
    yield emulator
    emulator.config.update({"max_body_bytes": EmulatorConfig().max_body_bytes})


def small(prompt: str = "a red bicycle") -> dict[str, Any]:
    return flux_request(prompt, resolution="0.5MP")


# -- body limit ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_body_over_the_limit_is_413_on_every_route_without_echo(
    limited: EmulatorServer, http: httpx2.Client, method: str, path: str
) -> None:
    body = json.dumps({"prompt": MARKER * 100}).encode()
    assert len(body) > 1000
    response = http.request(method, path, content=body)
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error"]
    assert MARKER not in response.text
    assert response.headers["x-request-id"].startswith("req_")
    assert limited.accounting()["submissions"] == 0


def test_a_chunked_body_over_the_limit_is_413(limited: EmulatorServer, http: httpx2.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        for _ in range(20):
            yield MARKER.encode() * 10

    response = http.post(SUBMIT_PATH, content=chunks())
    assert response.status_code == 413
    assert MARKER not in response.text
    assert limited.accounting()["jobs_created"] == 0


def test_a_body_at_the_limit_is_read(limited: EmulatorServer, http: httpx2.Client) -> None:
    body = json.dumps(small("x" * 10)).encode()
    padded = body[:-1] + b" " * (1000 - len(body)) + b"}"
    assert len(padded) == 1000
    assert http.post(SUBMIT_PATH, content=padded).status_code == 202


def test_the_default_limit_is_one_mebibyte(emulator: EmulatorServer, http: httpx2.Client) -> None:
    assert emulator.config.max_body_bytes == 1024 * 1024
    response = http.post(SUBMIT_PATH, content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert http.post(SUBMIT_PATH, json=small()).status_code == 202, "the server still serves"


def test_a_body_far_over_the_limit_is_refused_without_being_read_in_full(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    """Tens of MiB: refused (413, or a closed connection once the server stops reading), never stored."""
    try:
        response = http.post(SUBMIT_PATH, content=b"x" * (80 * 1024 * 1024))
        assert response.status_code == 413
    except httpx2.TransportError:
        pass
    (record,) = [r for r in emulator.received_requests() if r["path"] == SUBMIT_PATH]
    assert record["body_truncated"] is True
    assert len(record["body"]) <= RECEIVED_BODY_KEPT


def test_a_client_that_leaves_mid_body_is_recorded_and_nothing_is_carried_out(emulator: EmulatorServer) -> None:
    body = json.dumps(small()).encode()
    host, port = emulator.url.removeprefix("http://").split(":")
    head = f"POST {SUBMIT_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += f"{API_KEY_HEADER}: {DEFAULT_TEST_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(head.encode() + body[: len(body) // 2])
    deadline = time.monotonic() + 5.0
    while not emulator.received_requests():
        assert time.monotonic() < deadline, "the half-sent request was never recorded"
        time.sleep(0.01)
    (record,) = emulator.received_requests()
    assert record["body"] == body[: len(body) // 2].decode()
    assert record["body_bytes"] == len(body), "the size it announced"
    accounting = emulator.accounting()
    assert (accounting["submissions"], accounting["jobs_created"]) == (0, 0)


# -- absurd JSON -----------------------------------------------------------------------------------

ABSURD = {
    "invalid utf-8": b'{"prompt": "\xff\xfe"}',
    "nesting 100k deep (arrays)": b"[" * 100_000 + b"]" * 100_000,
    "nesting 100k deep (objects)": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nesting 40 deep": b'{"rules": ' + b"[" * 40 + b"]" * 40 + b"}",
    "1e999999": b'{"prompt": 1e999999, "rules": [], "credits": 1e999999}',
    "5000-digit integer": b'{"credits": ' + b"9" * 5000 + b"}",
    "NaN": b'{"queue_seconds": NaN, "rules": [{"fault": "http_500", "rate": NaN}]}',
    "Infinity": b'{"queue_seconds": Infinity}',
    "-Infinity": b'{"queue_seconds": -Infinity}',
    "top-level array": b'[{"fault": "http_500", "count": 1}]',
    "top-level string": b'"hello"',
    "lone surrogate": b'{"prompt": "\\ud800", "rules": [{"fault": "\\udfff"}]}',
    "empty": b"",
    "truncated": b'{"prompt": "a',
    "null bytes": b"\x00" * 64,
}


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
@pytest.mark.parametrize("body", list(ABSURD.values()), ids=list(ABSURD))
def test_absurd_json_is_a_4xx(
    emulator: EmulatorServer, http: httpx2.Client, method: str, path: str, body: bytes
) -> None:
    before = (http.get("/_emulator/faults").json(), http.get("/_emulator/config").json())
    response = http.request(method, path, content=body)
    assert 400 <= response.status_code < 500, response.text
    assert isinstance(response.json()["error"], str)
    assert (http.get("/_emulator/faults").json(), http.get("/_emulator/config").json()) == before
    assert emulator.accounting()["jobs_created"] == 0


def test_duplicate_keys_are_fine(emulator: EmulatorServer, http: httpx2.Client) -> None:
    body = json.dumps(small())[:-1] + ', "prompt": "the last one wins"}'
    job_id = http.post(SUBMIT_PATH, content=body.encode()).json()["jobId"]
    assert http.get(f"{JOBS_PATH}/{job_id}").json()["input"]["prompt"] == "the last one wins"


# -- control routes: checked whole, a refusal changes nothing ------------------------------------

INVALID_RULES: list[Any] = [
    {"fault": "http_500", "count": True},
    {"fault": "http_500", "count": 1.0},
    {"fault": "http_500", "count": "1"},
    {"fault": "http_500", "count": -1},
    {"fault": "http_500", "rate": 1.5},
    {"fault": "http_500", "rate": -0.1},
    {"fault": "http_500", "rate": "0.5"},
    {"fault": "http_500", "rate": True},
    {"fault": "rate_limit", "count": 1, "retry_after": 3601},
    {"fault": "rate_limit", "count": 1, "retry_after": -1},
    {"fault": "rate_limit", "count": 1, "retry_after": "1"},
    {"fault": "rate_limit", "count": 1, "retry_after_date": "yes"},
    {"fault": "slow", "count": 1, "delay": 601},
    {"fault": "slow", "count": 1, "delay": -0.5},
    {"fault": "several_images", "count": 1, "images": 1},
    {"fault": "several_images", "count": 1, "images": 11},
    {"fault": "several_images", "count": 1, "images": 2.5},
    {"fault": "fail", "count": 1, "message": 42},
    {"fault": "http_500", "count": 1, "route": "everywhere"},
    {"fault": "http_500", "count": 1, "colour": "red"},
    {"count": 1},
    {"fault": 7, "count": 1},
    {"fault": ["drop"], "count": 1},
    "drop",
    None,
]


@pytest.fixture
def planned(http: httpx2.Client) -> dict[str, Any]:
    """A plan with a rule and a seed in it, as GET shows it: what a refusal must leave as it was."""
    plan = http.put("/_emulator/faults", json={"seed": 5, "rules": [{"fault": "http_503", "rate": 0.0}]})
    assert plan.status_code == 200
    return dict(plan.json())


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("rule", INVALID_RULES, ids=[json.dumps(r) for r in INVALID_RULES])
def test_an_invalid_rule_refuses_the_whole_list(
    http: httpx2.Client, planned: dict[str, Any], method: str, rule: Any
) -> None:
    valid = {"fault": "drop", "count": 1}
    response = http.request(method, "/_emulator/faults", json={"rules": [valid, rule, valid]})
    assert response.status_code == 400
    assert response.json()["error"].startswith("invalid fault rules:")
    assert http.get("/_emulator/faults").json() == planned


def test_a_refused_rule_names_the_option(http: httpx2.Client) -> None:
    error = http.post("/_emulator/faults", json={"rules": [{"fault": "drop", "count": 1, "colour": 1}]}).json()
    assert "'colour'" in error["error"]
    error = http.post("/_emulator/faults", json={"rules": [{"fault": "slow", "count": 1, "delay": 700}]}).json()
    assert "delay" in error["error"] and "600" in error["error"]


@pytest.mark.parametrize(
    "payload",
    [
        {"seed": 1.5, "rules": []},
        {"seed": True, "rules": []},
        {"seed": "7", "rules": []},
        {"rules": {"fault": "drop", "count": 1}},
        {"rules": [], "colour": "red"},
    ],
)
def test_put_with_an_invalid_seed_or_key_changes_nothing(
    http: httpx2.Client, planned: dict[str, Any], payload: dict[str, Any]
) -> None:
    assert http.put("/_emulator/faults", json=payload).status_code == 400
    assert http.get("/_emulator/faults").json() == planned


def test_post_does_not_take_a_seed(http: httpx2.Client, planned: dict[str, Any]) -> None:
    response = http.post("/_emulator/faults", json={"seed": 9, "rules": []})
    assert response.status_code == 400
    assert "seed" in response.json()["error"]
    assert http.get("/_emulator/faults").json() == planned


def test_valid_rules_with_every_option_are_accepted(http: httpx2.Client) -> None:
    rules = [
        {"fault": "rate_limit", "count": 1, "retry_after": None},
        {"fault": "rate_limit", "rate": 0, "retry_after": 3600, "retry_after_date": True},
        {"fault": "slow", "count": 2, "delay": 0, "route": "any"},
        {"fault": "several_images", "count": 1, "images": 10},
        {"fault": "cut_transfer", "rate": 1},
        {"fault": "fail", "count": 1, "message": "boom"},
    ]
    response = http.put("/_emulator/faults", json={"seed": -3, "rules": rules})
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["seed"] == -3
    assert [r["fault"] for r in shown["rules"]] == [r["fault"] for r in rules]
    assert shown["rules"][0]["retry_after"] is None
    assert shown["rules"][4]["route"] == "file"


@pytest.mark.parametrize(
    "text",
    [
        "rate_limit:count=2,retry_after=none",
        "http_408:rate=0.5,route=poll",
        "cut_transfer:count=1",
        "several_images:count=1,images=5",
        "truncated_image:count=1",
        "corrupt_image:rate=0.2",
        "extra_keys:count=3",
    ],
)
def test_new_faults_parse_from_the_flag_syntax(text: str) -> None:
    rule = FaultRule.parse(text)
    assert rule.fault is Fault(text.partition(":")[0])
    assert FaultRule.from_dict(rule.to_dict()) == rule


INVALID_SETTINGS: list[dict[str, Any]] = [
    {"queue_seconds": -1},
    {"queue_seconds": "1"},
    {"queue_seconds": True},
    {"queue_seconds": None},
    {"processing_seconds": -0.001},
    {"retention_seconds": [1]},
    {"idempotency_seconds": {}},
    {"credits": -1},
    {"credits": 1.5},
    {"credits": False},
    {"result_shape": "tree"},
    {"result_shape": None},
    {"api_keys": "afk_one"},
    {"api_keys": [""]},
    {"api_keys": [1]},
    {"inactive_keys": [None]},
    {"webhook_retries": 11},
    {"webhook_retries": -1},
    {"max_body_bytes": 0},
    {"max_body_bytes": 1.5},
    {"queue_secs": 1},
    {"queue_seconds": 5, "credits": -1},  # one good, one bad: neither is applied
]


@pytest.mark.parametrize("changes", INVALID_SETTINGS, ids=[json.dumps(c) for c in INVALID_SETTINGS])
def test_an_invalid_setting_changes_nothing(
    emulator: EmulatorServer, http: httpx2.Client, changes: dict[str, Any]
) -> None:
    before = http.get("/_emulator/config").json()
    keys = emulator.config.api_keys
    response = http.patch("/_emulator/config", json=changes)
    assert response.status_code == 400
    assert "nothing was changed" in response.json()["error"]
    assert http.get("/_emulator/config").json() == before
    assert emulator.config.api_keys == keys


def test_valid_settings_are_applied_together(emulator: EmulatorServer, http: httpx2.Client) -> None:
    changes = {"queue_seconds": 2, "credits": 0, "result_shape": "list", "webhook_retries": 0, "max_body_bytes": 4096}
    settings_now = http.patch("/_emulator/config", json=changes).json()
    try:
        assert {k: settings_now[k] for k in changes} == changes
        assert isinstance(settings_now["queue_seconds"], float)
    finally:
        emulator.config.update({"max_body_bytes": EmulatorConfig().max_body_bytes, "webhook_retries": 2})


# -- received requests ---------------------------------------------------------------------------


def test_every_request_is_recorded_without_its_api_key(emulator: EmulatorServer, http: httpx2.Client) -> None:
    body = small("recorded prompt")
    http.post(SUBMIT_PATH, json=body, headers={"Idempotency-Key": "idem-1", "User-Agent": "flexflow/test"})
    http.get(JOBS_PATH, params={"limit": "5", "status": "COMPLETED"})
    emulator.faults.add({"fault": "drop", "count": 1, "route": "list"})
    with pytest.raises(httpx2.TransportError):
        http.get(JOBS_PATH, params={"dropped": "yes"})
    records = http.get("/_emulator/requests").json()["requests"]
    assert records == emulator.received_requests()[: len(records)]
    submitted, listed, dropped, _own = records
    assert (submitted["method"], submitted["path"]) == ("POST", SUBMIT_PATH)
    assert json.loads(submitted["body"]) == body
    assert submitted["body_bytes"] == len(submitted["body"].encode())
    headers = {name.lower(): value for name, value in submitted["headers"]}
    assert headers["idempotency-key"] == "idem-1"
    assert headers["user-agent"] == "flexflow/test"
    assert API_KEY_HEADER.lower() not in headers
    assert listed["query"] == "limit=5&status=COMPLETED"
    assert dropped["query"] == "dropped=yes", "a request a fault dropped is still recorded"
    assert DEFAULT_TEST_KEY not in json.dumps(records)
    assert [r["seq"] for r in records] == [1, 2, 3, 4]


def test_a_key_sent_anywhere_else_is_recorded_for_the_hunt(emulator: EmulatorServer, http: httpx2.Client) -> None:
    """The emulator hides only its key header: a key leaked into a URL, header or body must be findable."""
    http.get(JOBS_PATH, params={"k": DEFAULT_TEST_KEY}, headers={"User-Agent": DEFAULT_TEST_KEY})
    (record,) = emulator.received_requests()
    assert DEFAULT_TEST_KEY in record["query"]
    assert ["user-agent", DEFAULT_TEST_KEY] in record["headers"]


def test_recorded_bodies_are_capped_and_requests_bounded() -> None:
    state = EmulatorState()
    big = b"{" + b"x" * (RECEIVED_BODY_KEPT * 2)
    state.record_request("POST", "/", "", [("X-Api-Key", "secret"), ("a", "b")], big, len(big))
    (first,) = state.received_requests()
    assert len(first["body"]) == RECEIVED_BODY_KEPT
    assert first["body_truncated"] is True and first["body_bytes"] == len(big)
    assert first["headers"] == [["a", "b"]], "the key header is dropped whatever its case"
    state.record_request("POST", "/", "", [], b"\xff\xfe", 2)
    assert state.received_requests()[-1]["body"] == "\\xff\\xfe", "bytes that are not UTF-8 stay searchable"
    for n in range(RECEIVED_REQUESTS_KEPT):
        state.record_request("GET", f"/{n}", "", [], b"", 0)
    kept = state.received_requests()
    assert len(kept) == RECEIVED_REQUESTS_KEPT
    assert kept[0]["path"] == "/0" and kept[-1]["path"] == f"/{RECEIVED_REQUESTS_KEPT - 1}"
    state.reset()
    assert state.received_requests() == []


def test_reset_clears_the_received_requests(emulator: EmulatorServer, http: httpx2.Client) -> None:
    http.get("/_emulator/health")
    http.post("/_emulator/reset")
    assert [r["path"] for r in http.get("/_emulator/requests").json()["requests"]] == ["/_emulator/requests"]


# -- fuzz: nothing a client sends makes the emulator answer 5xx -----------------------------------


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_seconds=0.0, processing_seconds=0.0)) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_client(fuzzed: EmulatorServer) -> Iterator[httpx2.Client]:
    # One client for every example: building one (its SSL context) costs more than the request.
    with httpx2.Client(base_url=fuzzed.url, headers=KEY_HEADERS, timeout=10.0) as client:
        yield client


def restore(server: EmulatorServer, original: EmulatorConfig) -> None:
    server.state.config = copy.deepcopy(original)
    server.state.reset()
    server.faults.reset(seed=0)


KNOWN_KEYS = sorted(
    {"rules", "seed", "prompt", "model", "fluxParams", "webhookUrl", "fault", "count", "rate", "route"}
    | set(FaultRule.__dataclass_fields__)
    | set(EmulatorConfig.__dataclass_fields__)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([f.value for f in Fault] + ["submit", "file", "any", "flux-2-flex", "1MP", "png"])
    | st.text(st.characters(codec=None), max_size=20)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _json_bytes(value: Any) -> bytes:
    # NaN and Infinity go out as the literals a careless client writes; surrogates as \ud800 escapes.
    return json.dumps(value).encode()


BODIES = st.binary(max_size=300) | JSON_VALUES.map(_json_bytes)
FUZZ = settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(route=st.sampled_from(ROUTES), body=BODIES)
def test_fuzzed_bodies_never_get_a_5xx(
    fuzzed: EmulatorServer, fuzz_client: httpx2.Client, route: tuple[str, str], body: bytes
) -> None:
    original = copy.deepcopy(fuzzed.config)
    try:
        response = fuzz_client.request(route[0], route[1], content=body)
        assert response.status_code < 500, (route, body[:200], response.text[:300])
    finally:
        restore(fuzzed, original)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    path=st.text(st.characters(codec="utf-8"), max_size=30),
    query=st.dictionaries(st.sampled_from(["limit", "cursor", "status", "model"]), st.text(max_size=12), max_size=4),
)
def test_fuzzed_paths_and_queries_never_get_a_5xx(
    fuzzed: EmulatorServer, fuzz_client: httpx2.Client, method: str, path: str, query: dict[str, str]
) -> None:
    original = copy.deepcopy(fuzzed.config)
    try:
        for prefix in (f"{JOBS_PATH}/", "/_files/", "/_emulator/jobs/", JOBS_PATH):
            # Percent-encoded, so the server decodes whatever the path holds (controls, %, ?, #).
            response = fuzz_client.request(method, prefix + quote(path.lstrip("/"), safe="/"), params=query)
            assert response.status_code < 500, (method, prefix + path, query, response.text[:300])
    finally:
        restore(fuzzed, original)


# -- the command line ------------------------------------------------------------------------------


def run_cli(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flexflow.cli", "emulator", *flags]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, check=False)


def parse_flags(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexflow emulator")
    add_arguments(parser)
    return parser.parse_args(flags)


BAD_FLAGS = [
    (["--port", "70000"], "port must be from 0 to 65535"),
    (["--port", "-1"], "port must be from 0 to 65535"),
    (["--port", "http"], "port must be an integer"),
    (["--queue-seconds", "nan"], "finite number"),
    (["--processing-seconds", "-2"], "0 or more"),
    (["--retention-seconds", "inf"], "finite number"),
    (["--credits", "-5"], "credits must be 0 or more"),
    (["--credits", "1.5"], "credits must be an integer"),
    (["--fault-seed", "seven"], "seed must be an integer"),
    (["--max-body-bytes", "0"], "max body bytes must be 1 or more"),
    (["--fault", "meteor:count=1"], "unknown fault 'meteor'"),
    (["--fault", "http_500:count=1.5"], "count must be an integer"),
    (["--fault", "rate_limit:count=1,retry_after=9999"], "retry_after must be none or seconds in [0, 3600]"),
    (["--fault", "rate_limit:count=1,retry_after_date=maybe"], "retry_after_date must be true or false"),
    (["--fault", "several_images:count=1,images=50"], "images must be an integer from 2 to 10"),
    (["--fault", "drop:count=1,colour=red"], "unknown fault option(s) 'colour'"),
    (["--fault", "drop:count"], "is not key=value"),
    (["--api-key-file", "/nonexistent/keys.txt"], "cannot read the API key file"),
    (["--api-key", ""], "non-empty"),
    (["--inactive-key", " spaced "], "without surrounding spaces"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_flags(*flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [BAD_FLAGS[0], BAD_FLAGS[3], BAD_FLAGS[11], BAD_FLAGS[17]])
def test_bad_flags_exit_2_with_a_message_and_no_traceback(flags: list[str], message: str) -> None:
    result = run_cli(*flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_good_flags_are_taken() -> None:
    args = parse_flags(
        "--port", "0", "--queue-seconds", "0", "--credits", "0", "--fault-seed", "-4", "--max-body-bytes", "10",
        "--fault", "rate_limit:count=2,retry_after=none", "--api-key", "afk_a",
    )  # fmt: skip
    assert (args.port, args.queue_seconds, args.credits, args.fault_seed, args.max_body_bytes) == (0, 0.0, 0, -4, 10)
    assert args.fault[0].retry_after is None
    assert accepted_keys(args) == ("afk_a",)


def test_an_empty_key_file_is_refused_without_showing_its_contents(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# only a comment\n\n")
    result = run_cli("--api-key-file", str(keys))
    assert result.returncode == 2
    assert "holds no key" in result.stderr


def test_keys_from_a_file_and_the_environment_never_appear_in_the_command_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("afk_from_file_1\n# a comment\n afk_from_file_2 \n")
    env = emulator_environment("afk_from_env", " ", "afk_from_env_2")
    command = emulator_command("--api-key-file", str(keys), "--queue-seconds", "0", "--processing-seconds", "0")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["emulator"]
        listing = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        for key in ("afk_from_file_1", "afk_from_file_2", "afk_from_env", "afk_from_env_2"):
            assert key not in listing
            response = httpx2.post(f"{url}{SUBMIT_PATH}", json=small(), headers={API_KEY_HEADER: key}, timeout=5.0)
            assert response.status_code == 202, key
        default = httpx2.post(f"{url}{SUBMIT_PATH}", json=small(), headers=KEY_HEADERS, timeout=5.0)
        assert default.status_code == 401, "given keys replace the default test key"
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_a_port_that_cannot_be_bound_is_a_message(emulator: EmulatorServer) -> None:
    port = emulator.url.rsplit(":", 1)[1]  # taken by the session's emulator
    result = run_cli("--port", port)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
