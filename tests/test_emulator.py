"""The emulator over real HTTP on loopback: auth, lifecycle, files, money, faults, controls, webhooks, the CLI."""

from __future__ import annotations

import io
import json
import queue
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import Message
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from PIL import Image

from flexflow.client import FluxClient
from flexflow.contract import MODEL_ID, apply_defaults, credit_cost, pixel_size, webhooks
from flexflow.contract.params import ASPECT_RATIOS, OUTPUT_FORMATS
from flexflow.contract.wire import JOBS_PATH, SUBMIT_PATH
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer, FaultRule
from flexflow.emulator import images as emulator_images
from flexflow.emulator.server import announced_url
from tests.conftest import flux_request
from tests.deployment.harness.emulator import emulator_command

ROOT = Path(__file__).resolve().parents[1]
MAGIC: dict[str, Callable[[bytes], bool]] = {
    "jpg": lambda data: data[:3] == b"\xff\xd8\xff",
    "png": lambda data: data[:8] == b"\x89PNG\r\n\x1a\n",
    "webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: What PIL says when a full decode fails (by format: truncated, broken stream, no decoder).
UNDECODABLE = "truncated|broken data stream|decoder object|read next frame"
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx2.Client]:
    """A fresh connection pool per test: connection faults must not leak into the next test."""
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": DEFAULT_TEST_KEY}, timeout=5.0) as http_client:
        yield http_client


def small(prompt: str = "a red bicycle", **flux: object) -> dict[str, object]:
    """A cheap request: half a megapixel unless told otherwise."""
    return flux_request(prompt, **{"resolution": "0.5MP", **flux})


def submit(http: httpx2.Client, body: dict[str, Any] | None = None, key: str | None = None) -> httpx2.Response:
    return http.post(SUBMIT_PATH, json=body or small(), headers={"Idempotency-Key": key} if key else {})


def submit_ok(http: httpx2.Client, body: dict[str, Any] | None = None, key: str | None = None) -> str:
    response = submit(http, body, key)
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def get_job(http: httpx2.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"{JOBS_PATH}/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def result_urls(job: dict[str, Any]) -> list[str]:
    result = job["result"]
    return result["images"] if isinstance(result, dict) else [result] if isinstance(result, str) else result


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until condition() is truthy; its value, or a failed test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(interval)


# -- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("afk_unknown", 401), ("afk_inactive", 403)],
    ids=["missing", "unknown", "inactive"],
)
def test_auth(emulator: EmulatorServer, key: str | None, status: int) -> None:
    emulator.config.update({"inactive_keys": ["afk_inactive"]})
    headers = {"X-API-Key": key} if key else {}
    with httpx2.Client(base_url=emulator.url, headers=headers, timeout=5.0) as c:
        for response in (c.post(SUBMIT_PATH, json=small()), c.get(f"{JOBS_PATH}/{uuid.uuid4()}"), c.get(JOBS_PATH)):
            assert response.status_code == status
            assert isinstance(response.json()["error"], str)
            assert response.headers["x-request-id"].startswith("req_")
    assert emulator.accounting()["submissions"] == 0


def test_inactive_key_wins_over_being_listed(emulator: EmulatorServer) -> None:
    emulator.config.update({"api_keys": [DEFAULT_TEST_KEY, "afk_both"], "inactive_keys": ["afk_both"]})
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_both"}, timeout=5.0) as c:
        assert c.post(SUBMIT_PATH, json=small()).status_code == 403


def test_jobs_are_private_to_their_key(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"api_keys": [DEFAULT_TEST_KEY, "afk_other"]})
    job_id = submit_ok(http)
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_other"}, timeout=5.0) as other:
        assert other.get(f"{JOBS_PATH}/{job_id}").status_code == 404
        assert other.get(JOBS_PATH).json()["jobs"] == []


# -- lifecycle -----------------------------------------------------------------------------------


def test_job_lifecycle_queued_processing_completed(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"queue_seconds": 0.2, "processing_seconds": 0.6})
    accepted = submit(http)
    assert accepted.json()["status"] == "QUEUED"
    job_id = accepted.json()["jobId"]
    seen: list[tuple[str, int | None]] = []

    def completed() -> bool:
        job = get_job(http, job_id)
        seen.append((job["status"], job["progress"]))
        return job["status"] == "COMPLETED"

    wait_for(completed, timeout=5.0, interval=0.05)
    statuses = [s for s, _ in seen]
    order = ["QUEUED", "PROCESSING", "COMPLETED"]
    assert sorted(statuses, key=order.index) == statuses, f"out of order: {seen}"
    assert set(statuses) == set(order), f"a state was never observed: {seen}"
    assert all(p == 0 for s, p in seen if s == "QUEUED")
    processing = [p for s, p in seen if s == "PROCESSING"]
    assert all(p is not None and 1 <= p <= 99 for p in processing)
    assert processing == sorted(processing)
    assert processing[-1] > processing[0], f"progress did not rise: {seen}"
    assert seen[-1] == ("COMPLETED", 100)
    job = get_job(http, job_id)
    assert job["completedAt"] > job["createdAt"]
    assert job["creditCost"] == credit_cost(apply_defaults(small()["fluxParams"]))


def test_project_client_reads_a_completed_job(emulator: EmulatorServer, client: FluxClient) -> None:
    job_id = client.submit(small(output_format="png"))
    job = client.get_job(job_id)
    assert job.is_terminal
    assert job.status.value == "COMPLETED"
    assert len(job.result_urls) == 1
    assert job.result_urls[0].endswith(".png")


# -- result files --------------------------------------------------------------------------------


def download(http: httpx2.Client, job_id: str) -> httpx2.Response:
    (url,) = result_urls(get_job(http, job_id))
    return httpx2.get(url, timeout=5.0)  # signed-URL style: no API key


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_result_is_a_real_image_of_the_requested_format_and_size(
    emulator: EmulatorServer, http: httpx2.Client, output_format: str, aspect_ratio: str
) -> None:
    job_id = submit_ok(http, small(output_format=output_format, aspect_ratio=aspect_ratio, seed=1))
    response = download(http, job_id)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPES[output_format]
    assert MAGIC[output_format](response.content)
    image = Image.open(io.BytesIO(response.content))
    assert image.format == PIL_FORMATS[output_format]
    assert image.size == pixel_size("0.5MP", aspect_ratio)


def test_default_request_gives_the_default_size_and_format(emulator: EmulatorServer, http: httpx2.Client) -> None:
    defaults = apply_defaults({})
    job_id = submit_ok(http, flux_request())
    image = Image.open(io.BytesIO(download(http, job_id).content))
    assert image.format == PIL_FORMATS[str(defaults["output_format"])]
    assert image.size == pixel_size(str(defaults["resolution"]), str(defaults["aspect_ratio"]))


def test_1mp_square_is_1024(emulator: EmulatorServer, http: httpx2.Client) -> None:
    job_id = submit_ok(http, flux_request(resolution="1MP", aspect_ratio="1:1", output_format="png"))
    assert Image.open(io.BytesIO(download(http, job_id).content)).size == (1024, 1024)


def test_images_are_deterministic_per_request_and_seed(emulator: EmulatorServer, http: httpx2.Client) -> None:
    first = submit_ok(http, small(seed=7, output_format="png"))
    emulator_images._render.cache_clear()  # render again rather than serve a cached copy
    second = submit_ok(http, small(seed=7, output_format="png"))
    other_seed = submit_ok(http, small(seed=8, output_format="png"))
    other_prompt = submit_ok(http, small("a blue bicycle", seed=7, output_format="png"))
    data = {
        name: download(http, job_id).content
        for name, job_id in (
            ("first", first),
            ("second", second),
            ("other_seed", other_seed),
            ("other_prompt", other_prompt),
        )
    }
    assert first != second
    assert data["first"] == data["second"]
    assert data["other_seed"] != data["first"]
    assert data["other_prompt"] != data["first"]


def test_file_of_an_unfinished_job_is_404(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"queue_seconds": 30.0})
    job_id = submit_ok(http, small(output_format="png"))
    assert httpx2.get(f"{emulator.url}/_files/{job_id}/0.png", timeout=5.0).status_code == 404
    assert httpx2.get(f"{emulator.url}/_files/{uuid.uuid4()}/0.png", timeout=5.0).status_code == 404


# -- idempotency ---------------------------------------------------------------------------------


def test_idempotency(emulator: EmulatorServer, http: httpx2.Client) -> None:
    body = small()
    job_id = submit_ok(http, body, key="order-1")
    replay = submit(http, {**body}, key="order-1")
    assert replay.status_code == 202
    assert replay.json() == {"jobId": job_id, "status": "COMPLETED"}
    conflict = submit(http, small("something else"), key="order-1")
    assert conflict.status_code == 409
    assert "Idempotency-Key" in conflict.json()["error"]
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1
    assert accounting["submissions"] == 3
    assert accounting["submissions_per_key"] == {"order-1": 3}
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}


def test_idempotency_keys_are_per_api_key(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"api_keys": [DEFAULT_TEST_KEY, "afk_other"]})
    mine = submit_ok(http, small(), key="shared")
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_other"}, timeout=5.0) as other:
        theirs = other.post(SUBMIT_PATH, json=small("another"), headers={"Idempotency-Key": "shared"})
    assert theirs.status_code == 202
    assert theirs.json()["jobId"] != mine


# -- credits -------------------------------------------------------------------------------------


def test_insufficient_credits(emulator: EmulatorServer, http: httpx2.Client) -> None:
    cost = credit_cost(apply_defaults(small()["fluxParams"]))
    emulator.config.update({"credits": cost + cost // 2})
    job_id = submit_ok(http)
    refused = submit(http)
    assert refused.status_code == 402
    assert refused.json() == {"error": "Insufficient credits", "creditsRequired": cost, "creditsAvailable": cost // 2}
    assert get_job(http, job_id)["creditCost"] == cost
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1
    assert accounting["credits_billed"] == cost
    assert accounting["credits_available"] == cost // 2


def test_failed_jobs_cost_nothing_and_give_credits_back(emulator: EmulatorServer, http: httpx2.Client) -> None:
    cost = credit_cost(apply_defaults(small()["fluxParams"]))
    emulator.config.update({"credits": cost})
    emulator.faults.add({"fault": "fail", "count": 1})
    failed = get_job(http, submit_ok(http))
    assert failed["status"] == "FAILED"
    assert failed["creditCost"] == 0
    assert failed["error"]
    assert get_job(http, submit_ok(http))["creditCost"] == cost
    assert submit(http).status_code == 402
    assert emulator.accounting()["jobs_billed"] == 1


@pytest.mark.parametrize("resolution", ["0.5MP", "2MP"])
def test_credit_cost_of_a_completed_job_follows_the_price_table(
    emulator: EmulatorServer, http: httpx2.Client, resolution: str
) -> None:
    flux = {"resolution": resolution, "image_prompt": "https://example.com/ref.png"}
    job = get_job(http, submit_ok(http, flux_request(**flux)))
    assert job["creditCost"] == credit_cost(apply_defaults(flux))


# -- job outcomes and result shapes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "error_has"),
    [("fail", "FAILED", "Provider error"), ("moderation", "FAILED", "moderation"), ("cancel", "CANCELLED", "cancel")],
)
def test_failed_outcomes(
    emulator: EmulatorServer, http: httpx2.Client, fault: str, status: str, error_has: str
) -> None:
    emulator.faults.add({"fault": fault, "count": 1})
    job = get_job(http, submit_ok(http))
    assert job["status"] == status
    assert error_has.lower() in job["error"].lower()
    assert job["result"] is None
    assert job["progress"] is None
    assert emulator.accounting()["faults_injected"] == {fault: 1}


def test_fail_fault_with_a_custom_message(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "fail", "count": 1, "message": "GPU on fire"})
    assert get_job(http, submit_ok(http))["error"] == "GPU on fire"


@pytest.mark.parametrize(
    ("config_shape", "fault", "expected"),
    [
        ("images", None, "images"),
        ("string", None, "string"),
        ("list", None, "list"),
        ("images", "result_string", "string"),
        ("images", "result_list", "list"),
    ],
)
def test_result_shapes(
    emulator: EmulatorServer, http: httpx2.Client, config_shape: str, fault: str | None, expected: str
) -> None:
    emulator.config.update({"result_shape": config_shape})
    if fault:
        emulator.faults.add({"fault": fault, "count": 1})
    job_id = submit_ok(http, small(output_format="webp"))
    result = get_job(http, job_id)["result"]
    url = f"{emulator.url}/_files/{job_id}/0.webp"
    assert result == {"images": {"images": [url]}, "string": url, "list": [url]}[expected]
    assert httpx2.get(url, timeout=5.0).headers["content-type"] == "image/webp"


def test_results_expire_after_retention(emulator: EmulatorServer, http: httpx2.Client) -> None:
    retention = 0.5
    emulator.config.update({"retention_seconds": retention})
    job_id = submit_ok(http, small(output_format="png"))
    fresh = get_job(http, job_id)
    assert fresh["expired"] is False
    (url,) = result_urls(fresh)
    assert httpx2.get(url, timeout=5.0).status_code == 200
    time.sleep(retention + 0.05)
    stale = get_job(http, job_id)
    assert stale["expired"] is True
    assert stale["status"] == "COMPLETED"
    assert httpx2.get(url, timeout=5.0).status_code == 404


@pytest.mark.parametrize(("fault", "expired"), [("expired_result", True), ("missing_result", False)])
def test_result_file_faults(emulator: EmulatorServer, http: httpx2.Client, fault: str, expired: bool) -> None:
    """A COMPLETED job whose file is gone: said by ``expired`` (retention), or not at all (missing)."""
    emulator.faults.add({"fault": fault, "count": 1})
    job = get_job(http, submit_ok(http))
    assert job["status"] == "COMPLETED"
    assert job["expired"] is expired
    assert httpx2.get(result_urls(job)[0], timeout=5.0).status_code == 404


def test_wrong_content_type_fault(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "wrong_content_type", "count": 1})
    response = download(http, submit_ok(http))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert b"<html" in response.content


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_truncated_image_fault_serves_an_honest_length_that_cannot_be_decoded(
    emulator: EmulatorServer, http: httpx2.Client, output_format: str
) -> None:
    body = small(output_format=output_format, seed=3)
    whole = download(http, submit_ok(http, body, key="whole")).content
    emulator.faults.add({"fault": "truncated_image", "count": 1})
    job_id = submit_ok(http, body, key="cut")
    for _ in range(2):  # permanently: a second download is just as short
        response = download(http, job_id)
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPES[output_format]
        assert int(response.headers["content-length"]) == len(response.content) < len(whole)
        assert response.content == whole[: len(response.content)]
        with pytest.raises(OSError, match=UNDECODABLE):
            Image.open(io.BytesIO(response.content)).load()


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_corrupt_image_fault_has_full_length_and_headers_but_fails_a_full_decode(
    emulator: EmulatorServer, http: httpx2.Client, output_format: str, seed: int
) -> None:
    body = small(f"poster {seed}", output_format=output_format, seed=seed)
    whole = download(http, submit_ok(http, body, key="whole")).content
    emulator.faults.add({"fault": "corrupt_image", "count": 1})
    response = download(http, submit_ok(http, body, key="corrupt"))
    assert response.status_code == 200
    data = response.content
    assert len(data) == len(whole) == int(response.headers["content-length"])
    assert data != whole
    assert MAGIC[output_format](data), "the magic bytes still look right"
    image = Image.open(io.BytesIO(data))  # the headers are intact: it opens, with the right size
    assert image.format == PIL_FORMATS[output_format]
    assert image.size == Image.open(io.BytesIO(whole)).size
    with pytest.raises(OSError, match=UNDECODABLE):
        image.load()


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_several_images_fault_returns_distinct_valid_images(
    emulator: EmulatorServer, http: httpx2.Client, output_format: str
) -> None:
    emulator.faults.add({"fault": "several_images", "count": 1, "images": 4})
    job = get_job(http, submit_ok(http, small(output_format=output_format, aspect_ratio="16:9", seed=5)))
    urls = result_urls(job)
    assert len(urls) == len(set(urls)) == 4
    files = [httpx2.get(url, timeout=5.0) for url in urls]
    assert len({f.content for f in files}) == 4, "each image is distinct"
    for response in files:
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPES[output_format]
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.format == PIL_FORMATS[output_format]
        assert image.size == pixel_size("0.5MP", "16:9")
    assert job["creditCost"] == credit_cost(apply_defaults(small()["fluxParams"])), "one job, billed once"
    assert emulator.accounting()["jobs_billed"] == 1


def test_several_images_defaults_to_three(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "several_images", "count": 1})
    assert len(result_urls(get_job(http, submit_ok(http)))) == 3
    assert len(result_urls(get_job(http, submit_ok(http)))) == 1, "the next job is a plain one"


def test_several_images_first_file_is_the_one_a_single_image_job_gets(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    body = small(output_format="png", seed=9)
    single = download(http, submit_ok(http, body, key="one")).content
    emulator.faults.add({"fault": "several_images", "count": 1, "images": 2})
    first = httpx2.get(result_urls(get_job(http, submit_ok(http, body, key="two")))[0], timeout=5.0).content
    assert first == single


def test_extra_keys_fault_adds_keys_the_contract_does_not_name(
    emulator: EmulatorServer, http: httpx2.Client, client: FluxClient
) -> None:
    emulator.faults.add({"fault": "extra_keys", "count": 1})
    job_id = submit_ok(http, small(output_format="png", seed=1234))
    job = get_job(http, job_id)
    assert job["seedUsed"] == 1234
    assert job["region"] == "eu"
    assert set(job["result"]) >= {"images", "thumbnails"}
    (url,) = job["result"]["images"]
    assert httpx2.get(url, timeout=5.0).status_code == 200
    assert "seedUsed" not in get_job(http, submit_ok(http)), "only the faulted job has them"


# -- request faults ------------------------------------------------------------------------------


def test_http_408_fault(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "http_408", "count": 1, "route": "poll"})
    job_id = submit_ok(http)
    timed_out = http.get(f"{JOBS_PATH}/{job_id}")
    assert timed_out.status_code == 408
    assert isinstance(timed_out.json()["error"], str)
    assert get_job(http, job_id)["status"] == "COMPLETED"
    assert emulator.accounting()["faults_injected"] == {"http_408": 1}


def test_rate_limit_fault_without_retry_after(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add(FaultRule.parse("rate_limit:count=1,route=submit,retry_after=none"))
    response = submit(http)
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert submit(http).status_code == 202


def raw_get(url: str) -> tuple[dict[str, str], bytes]:
    """A GET over a plain socket: the response head, and every body byte that arrived before the close."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5.0) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    headers[":status"] = lines[0].split()[1]
    return headers, body


def test_cut_transfer_fault_announces_the_full_length_sends_half_and_closes(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    (url,) = result_urls(get_job(http, submit_ok(http, small(output_format="png", seed=2))))
    whole = httpx2.get(url, timeout=5.0).content
    emulator.faults.add({"fault": "cut_transfer", "count": 1})  # route: file, by default
    assert emulator.faults.to_dict()["rules"][0]["route"] == "file"
    headers, partial = raw_get(url)
    assert headers[":status"] == "200"
    assert int(headers["content-length"]) == len(whole)
    assert 0 < len(partial) < len(whole)
    assert abs(len(partial) - len(whole) // 2) <= 1
    assert partial == whole[: len(partial)]
    emulator.faults.add({"fault": "cut_transfer", "count": 1})
    with pytest.raises(httpx2.RemoteProtocolError):  # what a client sees: an incomplete body
        httpx2.get(url, timeout=5.0)
    assert httpx2.get(url, timeout=5.0).content == whole, "transient: the next download is whole"
    assert emulator.accounting()["faults_injected"] == {"cut_transfer": 2}


def test_cut_transfer_leaves_the_api_routes_alone(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "cut_transfer", "count": 1})
    job = get_job(http, submit_ok(http))
    assert emulator.faults.to_dict()["injected"] == {}
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.get(result_urls(job)[0], timeout=5.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_status_faults(emulator: EmulatorServer, http: httpx2.Client, status: int) -> None:
    emulator.faults.add({"fault": f"http_{status}", "count": 1, "route": "submit"})
    response = submit(http)
    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert response.headers["x-request-id"]
    assert emulator.accounting()["jobs_created"] == 0
    assert submit(http).status_code == 202, "a count=1 fault hits once"
    assert emulator.accounting()["faults_injected"] == {f"http_{status}": 1}


def test_faults_hit_only_their_route(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "http_503", "count": 1, "route": "poll"})
    job_id = submit_ok(http)
    assert http.get(JOBS_PATH).status_code == 200
    assert http.get(f"{JOBS_PATH}/{job_id}").status_code == 503
    assert http.get(f"{JOBS_PATH}/{job_id}").status_code == 200


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http-date"])
def test_rate_limit_fault_sends_retry_after(emulator: EmulatorServer, http: httpx2.Client, as_date: bool) -> None:
    emulator.faults.add(
        {"fault": "rate_limit", "count": 1, "route": "submit", "retry_after": 3, "retry_after_date": as_date}
    )
    response = submit(http)
    assert response.status_code == 429
    retry_after = response.headers["Retry-After"]
    if as_date:
        wait = parsedate_to_datetime(retry_after).timestamp() - time.time()
        assert 1 <= wait <= 4
    else:
        assert retry_after == "3"
    assert submit(http).status_code == 202


def test_drop_fault_cuts_the_connection_before_the_request_is_handled(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    emulator.faults.add({"fault": "drop", "count": 1, "route": "submit"})
    with pytest.raises(httpx2.RemoteProtocolError):
        submit(http)
    assert emulator.accounting()["jobs_created"] == 0
    assert submit(http).status_code == 202


def test_lost_response_fault_creates_the_job_but_cuts_the_connection(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    emulator.faults.add({"fault": "lost_response", "count": 1, "route": "submit"})
    with pytest.raises(httpx2.RemoteProtocolError):
        submit(http)
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1
    assert accounting["faults_injected"] == {"lost_response": 1}


def test_lost_response_then_idempotent_retry_bills_once(emulator: EmulatorServer, client: FluxClient) -> None:
    emulator.faults.add({"fault": "lost_response", "count": 1, "route": "submit"})
    job_id = client.submit(small(), "lost-1")
    accounting = emulator.accounting()
    assert list(emulator.state.jobs) == [job_id]
    assert accounting["jobs_created"] == 1
    assert accounting["submissions_per_key"] == {"lost-1": 2}
    assert accounting["duplicates"]["by_key"] == {}


def test_slow_fault_delays_the_response(emulator: EmulatorServer, http: httpx2.Client) -> None:
    delay = 0.3
    emulator.faults.add({"fault": "slow", "count": 1, "route": "poll", "delay": delay})
    path = f"{JOBS_PATH}/{uuid.uuid4()}"
    started = time.monotonic()
    assert http.get(path).status_code == 404
    assert time.monotonic() - started >= delay
    started = time.monotonic()
    http.get(path)
    assert time.monotonic() - started < delay


def test_slow_fault_times_a_client_out(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "slow", "count": 1, "route": "list", "delay": 0.5})
    headers = {"X-API-Key": DEFAULT_TEST_KEY}
    with (
        httpx2.Client(base_url=emulator.url, headers=headers, timeout=0.1) as impatient,
        pytest.raises(httpx2.ReadTimeout),
    ):
        impatient.get(JOBS_PATH)


def test_an_any_route_request_fault_is_not_taken_as_a_job_outcome(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    """A request fault aimed at every route must be spent on HTTP exchanges only, once per exchange."""
    emulator.faults.add({"fault": "slow", "count": 2, "route": "any", "delay": 0.01})
    submit_ok(http)
    plan = emulator.faults.to_dict()
    assert plan["injected"] == {"slow": 1}, "one request was slowed, so one fault was injected"
    assert [(r["fault"], r["count"]) for r in plan["rules"]] == [("slow", 1)]


def test_request_faults_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    added = http.post("/_emulator/faults", json={"rules": [{"fault": "http_502", "count": 1, "route": "submit"}]})
    assert added.status_code == 200
    assert [r["fault"] for r in added.json()["rules"]] == ["http_502"]
    replaced = http.put(
        "/_emulator/faults", json={"seed": 3, "rules": [{"fault": "rate_limit", "count": 1, "route": "submit"}]}
    )
    assert replaced.json()["seed"] == 3
    assert [r["fault"] for r in replaced.json()["rules"]] == ["rate_limit"]
    assert http.get("/_emulator/faults").json() == replaced.json()
    assert submit(http).status_code == 429
    assert http.get("/_emulator/faults").json()["injected"] == {"rate_limit": 1}
    http.post("/_emulator/faults", json={"rules": [{"fault": "http_504", "count": 5}]})
    cleared = http.delete("/_emulator/faults")
    assert cleared.json()["rules"] == []
    assert submit(http).status_code == 202


@pytest.mark.parametrize(
    "rule",
    [
        {"fault": "meteor"},
        {"fault": "http_500"},  # neither count nor rate
        {"fault": "http_500", "count": 1, "rate": 0.5},
        {"fault": "http_500", "count": 0},
        {"fault": "http_500", "rate": 1.5},
        {"fault": "http_500", "count": 1, "route": "everywhere"},
        {"fault": "http_500", "count": 1, "colour": "red"},
    ],
)
def test_invalid_fault_rules_are_400(emulator: EmulatorServer, http: httpx2.Client, rule: dict[str, Any]) -> None:
    response = http.post("/_emulator/faults", json={"rules": [rule]})
    assert response.status_code == 400
    assert "invalid fault rules" in response.json()["error"]
    assert emulator.faults.to_dict()["rules"] == []


def poll_sequence(http: httpx2.Client, n: int = 40) -> list[int]:
    path = f"{JOBS_PATH}/{uuid.uuid4()}"
    return [http.get(path).status_code for _ in range(n)]


def test_rate_faults_are_reproducible_with_a_seed(emulator: EmulatorServer, http: httpx2.Client) -> None:
    rule = {"fault": "http_503", "rate": 0.5, "route": "poll"}
    http.put("/_emulator/faults", json={"seed": 11, "rules": [rule]})
    first = poll_sequence(http)
    http.put("/_emulator/faults", json={"seed": 11, "rules": [rule]})
    again = poll_sequence(http)
    emulator.faults.reset(seed=11)  # the same through the Python API
    emulator.faults.add(rule)
    python_api = poll_sequence(http)
    http.put("/_emulator/faults", json={"seed": 12, "rules": [rule]})
    other_seed = poll_sequence(http)
    assert set(first) == {404, 503}, "a rate of 0.5 over 40 calls hits some and misses some"
    assert first == again == python_api
    assert other_seed != first


def test_rate_faults_with_rate_one_and_zero(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.faults.add({"fault": "http_500", "rate": 0.0, "route": "poll"})
    assert set(poll_sequence(http, 10)) == {404}
    emulator.faults.add({"fault": "http_503", "rate": 1.0, "route": "poll"})
    assert set(poll_sequence(http, 10)) == {503}


# -- controls: accounting and config -------------------------------------------------------------


def test_accounting_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    body = small()
    first = submit_ok(http, body, key="a")
    second = submit_ok(http, body, key="b")
    submit_ok(http, body, key="a")  # replay: no new job
    for _ in range(3):
        get_job(http, first)
    get_job(http, second)
    http.get(JOBS_PATH)  # a list is not a poll
    accounting = http.get("/_emulator/accounting").json()
    assert accounting["submissions"] == 3
    assert accounting["jobs_created"] == 2
    assert accounting["jobs_billed"] == 2
    assert accounting["credits_billed"] == 2 * credit_cost(apply_defaults(body["fluxParams"]))
    assert accounting["submissions_per_key"] == {"a": 2, "b": 1}
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 1}
    assert accounting["polls_per_job"] == {first: 3, second: 1}
    assert accounting["jobs_by_status"] == {"COMPLETED": 2}
    assert accounting["credits_available"] is None


def test_peak_in_flight(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"queue_seconds": 30.0})
    for i in range(3):
        submit_ok(http, small(f"prompt {i}"))
    emulator.config.update({"queue_seconds": 0.0})
    submit_ok(http, small("instant"))
    accounting = http.get("/_emulator/accounting").json()
    assert accounting["peak_in_flight"] == 3
    assert accounting["jobs_billed"] == 1
    assert accounting["jobs_by_status"] == {"QUEUED": 3, "COMPLETED": 1}


def test_patch_config_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    response = http.patch("/_emulator/config", json={"queue_seconds": 30.0, "credits": 1000})
    assert response.status_code == 200
    settings = response.json()
    assert settings["queue_seconds"] == 30.0
    assert settings["credits"] == 1000
    assert "api_keys" not in settings
    assert "inactive_keys" not in settings
    assert http.get("/_emulator/config").json() == settings
    job_id = submit_ok(http)
    assert get_job(http, job_id)["status"] == "QUEUED"
    assert http.patch("/_emulator/config", json={"queue_secs": 1}).status_code == 400


def test_patch_config_keys_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    assert http.patch("/_emulator/config", json={"api_keys": ["afk_new"]}).status_code == 200
    assert submit(http).status_code == 401
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": "afk_new"}, timeout=5.0) as new:
        assert new.post(SUBMIT_PATH, json=small()).status_code == 202


def test_reset_and_health_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    submit_ok(http)
    emulator.faults.add({"fault": "http_500", "count": 3})
    assert http.get("/_emulator/health").json() == {"status": "ok"}  # controls are never faulted
    assert http.post("/_emulator/reset").json() == {"reset": True}
    assert emulator.accounting()["jobs_created"] == 0
    assert emulator.faults.to_dict()["rules"] == []


def test_job_page_needs_no_key(emulator: EmulatorServer, http: httpx2.Client) -> None:
    job_id = submit_ok(http)
    page = httpx2.get(f"{emulator.url}/_emulator/jobs/{job_id}", timeout=5.0)
    assert page.status_code == 200
    assert page.json()["id"] == job_id
    assert emulator.accounting()["polls_per_job"] == {job_id: 0}


# -- webhooks ------------------------------------------------------------------------------------


class WebhookReceiver:
    """A loopback HTTP server in a thread that records every POST; the first ``fail_first`` get a 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: queue.Queue[tuple[Message, bytes]] = queue.Queue()
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.put((self.headers, body))
                failing = receiver.fail_first > 0
                receiver.fail_first -= 1
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flexflow"

    def next(self, timeout: float = 5.0) -> tuple[Message, bytes, dict[str, Any]]:
        headers, body = self.received.get(timeout=timeout)
        return headers, body, json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    yield hooks
    hooks.close()


def assert_signed(headers: Message, body: bytes, event: str) -> None:
    assert headers["X-Webhook-Event"] == event
    assert headers["Content-Type"] == "application/json"
    assert webhooks.verify(body, headers["X-Webhook-Signature"], DEFAULT_TEST_KEY)
    assert not webhooks.verify(body, headers["X-Webhook-Signature"], "afk_someone_else")
    assert not webhooks.verify(body + b" ", headers["X-Webhook-Signature"], DEFAULT_TEST_KEY)


def webhook_status(http: httpx2.Client, job_id: str, wanted: str) -> bool:
    return get_job(http, job_id)["webhookStatus"] == wanted


WEBHOOK_FIELDS = {
    "progress": {"event", "jobId", "status", "progress", "model"},
    "completed": {"event", "jobId", "status", "progress", "result", "model", "creditCost", "completedAt"},
    "failed": {"event", "jobId", "status", "error", "model"},
}


def test_webhook_progress_event(emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver) -> None:
    # queue 0: the progress event goes out at once, while the job is PROCESSING for another 0.3 s.
    emulator.config.update({"queue_seconds": 0.0, "processing_seconds": 0.3})
    job_id = submit_ok(http, {**small(), "webhookUrl": receiver.url, "webhookEvents": ["progress"]})
    assert get_job(http, job_id)["webhookStatus"] == "pending"
    headers, raw, progress = receiver.next()
    assert_signed(headers, raw, "progress")
    assert set(progress) == WEBHOOK_FIELDS["progress"]
    assert progress["event"] == "progress"
    assert progress["jobId"] == job_id
    assert progress["status"] == "PROCESSING"
    assert 1 <= progress["progress"] <= 99
    assert progress["model"] == MODEL_ID
    wait_for(lambda: webhook_status(http, job_id, "delivered"))
    assert receiver.received.empty(), "only the events asked for"


def test_webhook_completed_event(emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver) -> None:
    body = {**small(output_format="png"), "webhookUrl": receiver.url, "webhookEvents": ["completed", "failed"]}
    job_id = submit_ok(http, body)
    headers, raw, completed = receiver.next()
    assert_signed(headers, raw, "completed")
    assert set(completed) == WEBHOOK_FIELDS["completed"]
    job = wait_for(lambda: webhook_status(http, job_id, "delivered") and get_job(http, job_id))
    assert completed["event"] == "completed"
    assert completed["jobId"] == job_id
    assert completed["status"] == "COMPLETED"
    assert completed["progress"] == 100
    assert completed["model"] == MODEL_ID
    assert completed["result"] == job["result"]
    assert completed["creditCost"] == job["creditCost"] == credit_cost(apply_defaults(body["fluxParams"]))
    assert completed["completedAt"] == job["completedAt"]
    assert receiver.received.empty()


def test_webhook_final_event_agrees_with_the_job_outcome(
    emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver
) -> None:
    """A job that completes gets a "completed" event with status COMPLETED, never "failed".

    The emulator sleeps until a job's finish time, then reads its status. Event-loop timers may fire
    early (uvicorn runs uvloop, whose timers round to whole milliseconds), so a reader that trusts the
    timer can still see PROCESSING (about one job in five here). One job at a time, so each wake-up
    lands on an idle loop; thirty, so an early timer does not go unnoticed.
    """
    emulator.config.update({"queue_seconds": 0.0, "processing_seconds": 0.03})
    received: dict[str, tuple[str, str]] = {}
    for i in range(30):
        job_id = submit_ok(http, {**small(f"job {i}"), "webhookUrl": receiver.url})
        headers, raw, event = receiver.next()
        assert_signed(headers, raw, event["event"])
        assert event["jobId"] == job_id
        received[job_id] = (event["event"], event["status"])
    wrong = {job_id: got for job_id, got in received.items() if got != ("completed", "COMPLETED")}
    assert wrong == {}, f"{len(wrong)} of {len(received)} completed jobs got a contradicting event"
    assert {get_job(http, job_id)["status"] for job_id in received} == {"COMPLETED"}


def test_webhook_failed_event(emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver) -> None:
    emulator.faults.add({"fault": "moderation", "count": 1})
    job_id = submit_ok(http, {**small(), "webhookUrl": receiver.url, "webhookEvents": ["failed"]})
    headers, raw, failed = receiver.next()
    assert_signed(headers, raw, "failed")
    assert set(failed) == WEBHOOK_FIELDS["failed"]
    assert failed["event"] == "failed"
    assert failed["jobId"] == job_id
    assert failed["status"] == "FAILED"
    assert failed["error"] == get_job(http, job_id)["error"]
    assert failed["model"] == MODEL_ID
    wait_for(lambda: webhook_status(http, job_id, "delivered"))
    assert receiver.received.empty()


def test_webhook_default_events_are_completed_and_failed(
    emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver
) -> None:
    job_id = submit_ok(http, {**small(), "webhookUrl": receiver.url})
    headers, _raw, event = receiver.next()
    assert event["event"] == headers["X-Webhook-Event"] == "completed"
    wait_for(lambda: webhook_status(http, job_id, "delivered"))
    assert receiver.received.empty(), "no progress event unless asked for"


def test_webhook_retried_after_a_receiver_error(emulator: EmulatorServer, http: httpx2.Client) -> None:
    flaky = WebhookReceiver(fail_first=1)
    try:
        job_id = submit_ok(http, {**small(), "webhookUrl": flaky.url})
        first_headers, first_body, _ = flaky.next()
        second_headers, second_body, _ = flaky.next()
        assert first_body == second_body
        assert first_headers["X-Webhook-Signature"] == second_headers["X-Webhook-Signature"]
        wait_for(lambda: webhook_status(http, job_id, "delivered"))
    finally:
        flaky.close()


def test_webhook_failing_receiver_marks_the_job(emulator: EmulatorServer, http: httpx2.Client) -> None:
    retries = emulator.config.webhook_retries
    failing = WebhookReceiver(fail_first=10**6)
    emulator.config.update({"webhook_retries": 0})
    try:
        job_id = submit_ok(http, {**small(), "webhookUrl": failing.url})
        failing.next()
        wait_for(lambda: webhook_status(http, job_id, "failed"))
        assert failing.received.empty(), "webhook_retries=0: one attempt"
    finally:
        emulator.config.update({"webhook_retries": retries})
        failing.close()


def test_webhook_to_a_non_loopback_url_is_not_contacted(emulator: EmulatorServer, http: httpx2.Client) -> None:
    # 192.0.2.0/24 is TEST-NET-1: a real attempt would hang until the 5 s timeout (and retry).
    started = time.monotonic()
    job_id = submit_ok(http, {**small(), "webhookUrl": "http://192.0.2.1:9/hook"})
    wait_for(lambda: webhook_status(http, job_id, "failed"), timeout=2.0)
    assert time.monotonic() - started < 2.0


def test_webhook_not_sent_again_on_idempotent_replay(
    emulator: EmulatorServer, http: httpx2.Client, receiver: WebhookReceiver
) -> None:
    body = {**small(), "webhookUrl": receiver.url}
    job_id = submit_ok(http, body, key="hooked")
    receiver.next()
    wait_for(lambda: webhook_status(http, job_id, "delivered"))
    assert submit_ok(http, body, key="hooked") == job_id
    with pytest.raises(queue.Empty):
        receiver.received.get(timeout=0.2)


# -- the CLI -------------------------------------------------------------------------------------


def test_cli_emulator_with_a_fault() -> None:
    command = emulator_command(
        "--api-key",
        "k1",
        "--fault",
        "rate_limit:count=1,route=submit",
        "--queue-seconds",
        "0",
        "--processing-seconds",
        "0",
    )
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the emulator printed nothing within 30 s"
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"the emulator exited: {process.poll()}"
        url = announced_url(line)
        assert url is not None and url.startswith("http://127.0.0.1:"), line
        with httpx2.Client(base_url=url, headers={"X-API-Key": "k1"}, timeout=5.0) as k1:
            limited = k1.post(SUBMIT_PATH, json=small())
            assert limited.status_code == 429
            assert limited.headers["Retry-After"] == "1"
            accepted = k1.post(SUBMIT_PATH, json=small())
            assert accepted.status_code == 202
            assert k1.get(f"{JOBS_PATH}/{accepted.json()['jobId']}").json()["status"] == "COMPLETED"
        default_key = httpx2.post(f"{url}{SUBMIT_PATH}", json=small(), headers={"X-API-Key": DEFAULT_TEST_KEY})
        assert default_key.status_code == 401, "--api-key replaces the default test key"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_wait_idle_lets_a_request_its_client_gave_up_on_land_before_a_reset(emulator: EmulatorServer) -> None:
    """Without it, a slow submit an earlier test abandoned would create a job in the next test's fresh state."""
    emulator.faults.add({"fault": "slow", "count": 1, "route": "submit", "delay": 0.5})
    impatient = httpx2.Client(base_url=emulator.url, headers={"X-API-Key": DEFAULT_TEST_KEY}, timeout=0.1)
    with impatient, pytest.raises(httpx2.TimeoutException):
        impatient.post(SUBMIT_PATH, json=small())
    assert emulator.state.requests_in_flight == 1, "the server still handles the request its client left"
    emulator.wait_idle()
    assert emulator.state.requests_in_flight == 0
    assert emulator.accounting()["jobs_created"] == 1, "the abandoned submit landed before wait_idle returned"
    emulator.state.reset()
    assert emulator.accounting()["jobs_created"] == 0
