"""The client against the emulator over real HTTP on loopback: every error class, every retry path."""

from __future__ import annotations

import json
import logging
import socket
import time

import httpx2
import pytest

from flexflow import __version__
from flexflow.client import (
    USER_AGENT,
    ApiConnectionError,
    ApiStatusError,
    ApiTimeout,
    AsyncFluxClient,
    AuthenticationFailed,
    FluxClient,
    IdempotencyConflict,
    InsufficientCredits,
    JobNotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RetryPolicy,
    ServerError,
    UnexpectedResponse,
    ValidationFailed,
    parse_result,
)
from flexflow.client._calls import ApiCalls, Sleep, error_for
from flexflow.client.errors import STATUS_ERRORS
from flexflow.client.retry import RATE_LIMIT_SPREAD, parse_retry_after
from flexflow.contract.wire import JobStatus
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer
from tests.conftest import fast_retry, flux_request


def test_submit_and_poll_to_completion(client: FluxClient, emulator: EmulatorServer) -> None:
    job_id = client.submit(flux_request(seed=1, output_format="png", resolution="1MP"), "key-1")
    job = client.get_job(job_id)
    assert job.id == job_id
    assert job.status is JobStatus.COMPLETED
    assert job.progress == 100
    assert job.credit_cost == 5
    assert len(job.result_urls) == 1
    assert job.result_urls[0].startswith(emulator.url) and job.result_urls[0].endswith(".png")
    assert emulator.accounting()["polls_per_job"] == {job_id: 1}


@pytest.mark.parametrize(("shape", "fault"), [("string", None), ("list", None), (None, "result_string")])
def test_every_result_shape_gives_the_urls(
    client: FluxClient, emulator: EmulatorServer, shape: str | None, fault: str | None
) -> None:
    if shape:
        emulator.config.update({"result_shape": shape})
    if fault:
        emulator.faults.add({"fault": fault, "count": 1})
    job = client.get_job(client.submit(flux_request(), "shape"))
    assert len(job.result_urls) == 1 and job.result_urls[0].startswith("http://127.0.0.1")


def test_validation_error_carries_the_per_field_details(client: FluxClient, emulator: EmulatorServer) -> None:
    with pytest.raises(ValidationFailed) as caught:
        client.submit(flux_request(guidance=3.33, steps=2.5), "bad")
    error = caught.value
    assert error.status_code == 400
    assert set(error.details) == {"fluxParams.guidance", "fluxParams.steps"}
    assert "steps of 0.1" in error.details["fluxParams.guidance"][0]
    assert "fluxParams.guidance" in str(error) and "Fix the request" in str(error)
    assert error.request_id and error.request_id in str(error)
    assert emulator.accounting()["submissions"] == 1, "a 400 is final: not retried"


def test_unknown_key_is_401(emulator: EmulatorServer) -> None:
    with FluxClient(emulator.url, "afk_wrong", retry=fast_retry()) as client, pytest.raises(AuthenticationFailed) as e:
        client.submit(flux_request(), "k")
    assert "API key in the Airflow connection" in str(e.value)
    assert emulator.accounting()["submissions"] == 0


def test_inactive_key_is_403(emulator: EmulatorServer) -> None:
    emulator.config.update({"inactive_keys": ["afk_inactive"]})
    with FluxClient(emulator.url, "afk_inactive", retry=fast_retry()) as client, pytest.raises(PermissionDenied):
        client.get_job("3f0c2a59-1111-4c9e-9d55-0123456789ab")


def test_insufficient_credits_is_402_with_the_numbers(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.config.update({"credits": 12})
    client.submit(flux_request(resolution="2MP"), "first")  # costs 10
    with pytest.raises(InsufficientCredits) as caught:
        client.submit(flux_request(resolution="2MP", seed=2), "second")
    assert (caught.value.credits_required, caught.value.credits_available) == (10, 2)
    assert "top up" in str(caught.value)


def test_unknown_job_is_404(client: FluxClient) -> None:
    with pytest.raises(JobNotFound):
        client.get_job("3f0c2a59-1111-4c9e-9d55-0123456789ab")


def test_same_key_with_another_body_is_409(client: FluxClient) -> None:
    client.submit(flux_request(seed=1), "shared-key")
    with pytest.raises(IdempotencyConflict) as caught:
        client.submit(flux_request(seed=2), "shared-key")
    assert "bug" in str(caught.value)


def test_same_key_same_body_returns_the_same_job(client: FluxClient, emulator: EmulatorServer) -> None:
    first = client.submit(flux_request(seed=1), "same")
    assert client.submit(flux_request(seed=1), "same") == first
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1 and accounting["submissions_per_key"] == {"same": 2}


def test_rate_limit_waits_the_retry_after_then_succeeds(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "rate_limit", "count": 2, "route": "submit", "retry_after": 0.3})
    started = time.monotonic()
    client.submit(flux_request(), "rl")
    assert time.monotonic() - started >= 0.6, "two Retry-After waits of 0.3 s"
    accounting = emulator.accounting()
    assert accounting["faults_injected"] == {"rate_limit": 2}
    assert accounting["submissions_per_key"] == {"rl": 1}, "rate-limited calls never reach the API"


def test_rate_limit_that_never_ends_raises_after_the_attempts(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "rate_limit", "count": 10, "route": "poll", "retry_after": 0})
    job_id = client.submit(flux_request(), "rl2")
    with pytest.raises(RateLimited) as caught:
        client.get_job(job_id)
    assert caught.value.retry_after == 0
    assert emulator.accounting()["faults_injected"] == {"rate_limit": 4}, "max_attempts=4"


@pytest.mark.parametrize("fault", ["http_500", "http_502", "http_503", "http_504", "drop"])
def test_outages_are_retried_with_backoff(client: FluxClient, emulator: EmulatorServer, fault: str) -> None:
    emulator.faults.add({"fault": fault, "count": 2, "route": "api"})
    job_id = client.submit(flux_request(), f"outage-{fault}")
    assert client.get_job(job_id).status is JobStatus.COMPLETED
    assert emulator.accounting()["jobs_created"] == 1


def test_a_persistent_outage_raises_server_error(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "http_503", "count": 4, "route": "submit"})
    with pytest.raises(ServerError) as caught:
        client.submit(flux_request(), "down")
    assert caught.value.status_code == 503 and caught.value.retryable
    assert emulator.accounting()["submissions"] == 0, "the outage answered before the API saw the call"


def test_a_slow_response_times_out_and_is_retried(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "slow", "count": 1, "route": "submit", "delay": 1.0})
    with FluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=0.3, retry=fast_retry()) as client:
        job_id = client.submit(flux_request(), "slow")
    # The slow attempt still reached the API after the client gave up: the key made it one job.
    deadline = time.monotonic() + 5
    while emulator.accounting()["submissions"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1 and accounting["jobs_billed"] == 1
    assert job_id in accounting["polls_per_job"]


def test_timeouts_that_never_end_raise_api_timeout(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "slow", "count": 2, "route": "poll", "delay": 0.5})
    with FluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=0.2, retry=fast_retry(max_attempts=2)) as client:
        job_id = client.submit(flux_request(), "t")
        with pytest.raises(ApiTimeout) as caught:
            client.get_job(job_id)
    assert "timed out" in str(caught.value)


def test_connection_refused_raises_api_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = FluxClient(f"http://127.0.0.1:{port}", DEFAULT_TEST_KEY, retry=fast_retry(max_attempts=2))
    with client, pytest.raises(ApiConnectionError) as caught:
        client.submit(flux_request(), "refused")
    assert f"127.0.0.1:{port} is reachable" in str(caught.value)


def test_lost_submit_response_reuses_the_key_and_bills_one_job(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "lost_response", "count": 1, "route": "submit"})
    job_id = client.submit(flux_request(seed=9), "lost")
    assert client.get_job(job_id).status is JobStatus.COMPLETED
    accounting = emulator.accounting()
    assert accounting["submissions_per_key"] == {"lost": 2}
    assert accounting["jobs_created"] == 1
    assert accounting["jobs_billed"] == 1
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}


def test_submit_without_a_key_still_sends_one(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "lost_response", "count": 1, "route": "submit"})
    client.submit(flux_request())
    keys = emulator.accounting()["submissions_per_key"]
    assert list(keys.values()) == [2] and len(next(iter(keys))) == 32


def test_a_post_without_idempotency_key_is_never_retried(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "http_503", "count": 1, "route": "submit"})
    calls = ApiCalls(emulator.url, DEFAULT_TEST_KEY, fast_retry())
    request = calls._request("POST", "/v2/images/generate", json=flux_request())
    flow = calls._call(request)
    with httpx2.Client() as http:
        sent = next(flow)
        assert sent is request
        with pytest.raises(ServerError):
            flow.send(http.send(sent))


def test_attempts_and_total_time_are_bounded(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "http_500", "count": 10, "route": "submit"})
    client = FluxClient(emulator.url, DEFAULT_TEST_KEY, retry=fast_retry(max_attempts=3))
    with client, pytest.raises(ServerError):
        client.submit(flux_request(), "bounded")
    assert emulator.accounting()["faults_injected"] == {"http_500": 3}
    emulator.faults.reset()
    emulator.faults.add({"fault": "rate_limit", "count": 10, "route": "submit", "retry_after": 0.2})
    client = FluxClient(emulator.url, DEFAULT_TEST_KEY, retry=fast_retry(max_attempts=10, max_elapsed=0.5))
    with client, pytest.raises(RateLimited):
        client.submit(flux_request(), "bounded-time")
    assert emulator.accounting()["faults_injected"] == {"rate_limit": 3}, "0.2 + 0.2 fit in 0.5 s, a third wait not"


def test_unexpected_bodies_raise_unexpected_response() -> None:
    """The emulator always answers per contract, so a mock transport plays a broken API."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            return httpx2.Response(202, text="<html>proxy page</html>", headers={"content-type": "text/html"})
        job = {"id": "j", "status": "COMPLETED", "result": {"files": ["x"]}}
        return httpx2.Response(200, json=job)

    with FluxClient("http://api.test", "afk_k", transport=httpx2.MockTransport(handler)) as client:
        with pytest.raises(UnexpectedResponse, match="not a JSON object"):
            client.submit(flux_request(), "k")
        with pytest.raises(UnexpectedResponse, match="unknown shape"):
            client.get_job("j")


def test_501_is_not_retried() -> None:
    calls: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.method)
        return httpx2.Response(501, json={"error": "Not implemented"})

    client = FluxClient("http://api.test", "afk_k", transport=httpx2.MockTransport(handler), retry=fast_retry())
    with client, pytest.raises(ServerError) as caught:
        client.get_job("j")
    assert not caught.value.retryable and calls == ["GET"]


@pytest.mark.parametrize("status", [*STATUS_ERRORS, 418])
def test_each_status_maps_to_the_class_that_names_it(status: int) -> None:
    error = error_for(httpx2.Response(status, json={"error": "no"}))
    assert type(error) is STATUS_ERRORS.get(status, ApiStatusError)
    assert isinstance(error, ApiStatusError) and error.status_code == status


async def test_both_clients_show_their_class_and_base_url() -> None:
    with FluxClient("http://api.test/", "afk_k") as blocking:
        async with AsyncFluxClient("http://api.test/", "afk_k") as awaiting:
            assert repr(blocking) == "FluxClient(base_url='http://api.test')"
            assert repr(awaiting) == "AsyncFluxClient(base_url='http://api.test')"
            assert blocking.base_url == awaiting.base_url == "http://api.test"


def test_the_api_key_never_leaks(emulator: EmulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    secret = "afk_live_0123456789abcdef_do_not_print"
    emulator.config.update({"api_keys": [secret]})
    emulator.faults.add(
        {"fault": "http_503", "count": 1, "route": "submit"},
        {"fault": "lost_response", "count": 1, "route": "submit"},
    )
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with FluxClient(emulator.url, secret, retry=fast_retry()) as client:
        texts = [repr(client), str(client)]
        job = client.get_job(client.submit(flux_request(), "leak"))
        texts.append(json.dumps(job.to_dict()))
        for call in (lambda: client.get_job("not-a-uuid"), lambda: client.submit(flux_request(steps=0), "x")):
            try:
                call()
            except Exception as exc:
                errors.append(exc)
    with FluxClient(emulator.url, secret + "x", retry=fast_retry()) as client:
        try:
            client.submit(flux_request(), "y")
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 3
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [repr(vars(e)) for e in errors]
    texts.append(caplog.text)
    assert "attempt 1 failed" in caplog.text, "the retries were logged"
    assert all(secret not in text for text in texts)


async def test_async_client_submits_polls_and_retries(async_client: AsyncFluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add(
        {"fault": "lost_response", "count": 1, "route": "submit"},
        {"fault": "rate_limit", "count": 1, "route": "poll", "retry_after": 0},
        {"fault": "drop", "count": 1, "route": "poll"},
    )
    job_id = await async_client.submit(flux_request(seed=3), "async")
    job = await async_client.get_job(job_id)
    assert job.status is JobStatus.COMPLETED and job.result_urls
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 1 and accounting["jobs_billed"] == 1
    assert accounting["faults_injected"] == {"lost_response": 1, "rate_limit": 1, "drop": 1}


async def test_async_client_maps_errors_like_the_sync_one(async_client: AsyncFluxClient) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await async_client.submit(flux_request(image_prompt_strength=0.17), "a")
    assert list(caught.value.details) == ["fluxParams.image_prompt_strength"]
    with pytest.raises(JobNotFound):
        await async_client.get_job("3f0c2a59-1111-4c9e-9d55-0123456789ab")


def test_list_jobs(client: FluxClient) -> None:
    ids = {client.submit(flux_request(seed=i), f"list-{i}") for i in range(3)}
    page = client.list_jobs(limit=2)
    assert len(page["jobs"]) == 2 and page["hasMore"]
    rest = client.list_jobs(limit=2, cursor=page["nextCursor"])
    assert {j["id"] for j in page["jobs"] + rest["jobs"]} == ids


def _recording_handler(seen: list[httpx2.Request]) -> httpx2.MockTransport:
    """A transport that keeps each request and answers per contract (the emulator keeps no headers)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx2.Response(202, json={"jobId": "j", "status": "QUEUED"})
        if request.url.path == "/v2/jobs":
            return httpx2.Response(200, json={"jobs": [], "hasMore": False})
        return httpx2.Response(200, json={"id": "j", "status": "QUEUED"})

    return httpx2.MockTransport(handler)


async def test_every_request_names_flexflow_and_its_version() -> None:
    assert f"flexflow/{__version__}" == USER_AGENT
    seen: list[httpx2.Request] = []
    with FluxClient("http://api.test", "afk_k", transport=_recording_handler(seen)) as client:
        client.submit(flux_request(), "ua")
        client.get_job("j")
        client.list_jobs()
    async with AsyncFluxClient("http://api.test", "afk_k", transport=_recording_handler(seen)) as awaiting:
        await awaiting.submit(flux_request(), "ua")
        await awaiting.get_job("j")
    assert [r.method for r in seen] == ["POST", "GET", "GET", "POST", "GET"]
    assert {r.headers["user-agent"] for r in seen} == {USER_AGENT}


def test_408_is_retried_like_a_timeout() -> None:
    """No emulator fault answers 408 (a proxy's status), so a mock transport plays the proxy."""
    answers = iter([408, 202, 408, 200])
    calls: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.method)
        status = next(answers)
        if status == 408:
            return httpx2.Response(408, text="Request Timeout")
        body = {"jobId": "j", "status": "QUEUED"} if request.method == "POST" else {"id": "j", "status": "QUEUED"}
        return httpx2.Response(status, json=body)

    client = FluxClient("http://api.test", "afk_k", transport=httpx2.MockTransport(handler), retry=fast_retry())
    with client:
        assert client.submit(flux_request(), "k408") == "j"
        assert client.get_job("j").status is JobStatus.QUEUED
    assert calls == ["POST", "POST", "GET", "GET"]
    assert isinstance(error_for(httpx2.Response(408)), RequestTimeout)


def test_408_on_a_post_without_idempotency_key_is_not_retried() -> None:
    """Without a key the API may have made the job before the proxy gave up: a second POST could bill twice."""
    calls = ApiCalls("http://api.test", "afk_k", fast_retry())
    flow = calls._call(calls._request("POST", "/v2/images/generate", json=flux_request()))
    request = next(flow)
    assert isinstance(request, httpx2.Request)
    with pytest.raises(RequestTimeout) as caught:
        flow.send(httpx2.Response(408, request=request))
    assert caught.value.retryable and "timed out on the way" in str(caught.value)


def _first_wait(policy: RetryPolicy, response: httpx2.Response) -> float:
    """The Sleep a GET's flow asks for after its first response: the wait chosen, without sleeping."""
    calls = ApiCalls("http://api.test", "afk_k", policy, clock=lambda: 0.0)
    flow = calls.get_job("j")
    next(flow)
    step = flow.send(response)
    assert isinstance(step, Sleep), "the flow retries"
    return step.seconds


@pytest.mark.parametrize("header", [None, "soon", "nan", "inf"])
def test_429_without_a_readable_retry_after_waits_the_default(header: str | None) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    response = httpx2.Response(429, json={"error": "Too many requests"}, headers=headers)
    policy = fast_retry()  # one seeded jitter for all: each call draws anew
    waits = [_first_wait(policy, response) for _ in range(50)]
    default = RetryPolicy().rate_limit_wait
    assert default == 5.0
    assert all(default <= wait <= default * (1 + RATE_LIMIT_SPREAD) for wait in waits), "never shorter"
    assert len(set(waits)) > 1, "jittered: clients told to wait together come back apart"


def test_the_default_429_wait_is_capped_and_bounded_by_the_total_time() -> None:
    response = httpx2.Response(429, json={"error": "Too many requests"})
    assert _first_wait(fast_retry(rate_limit_wait=2.0), response) <= 2.0 * (1 + RATE_LIMIT_SPREAD)
    assert _first_wait(fast_retry(retry_after_cap=1.5), response) == 1.5
    calls = ApiCalls("http://api.test", "afk_k", fast_retry(max_elapsed=4.0), clock=lambda: 0.0)
    flow = calls.get_job("j")
    next(flow)
    with pytest.raises(RateLimited) as caught:
        flow.send(response)  # a 5 s wait would end past the 4 s allowed: final now, not after the wait
    assert caught.value.retry_after is None
    with pytest.raises(ValueError, match="rate_limit_wait"):
        RetryPolicy(rate_limit_wait=float("nan"))


def test_a_retry_after_the_api_names_is_still_honoured_exactly() -> None:
    response = httpx2.Response(429, json={"error": "Too many requests"}, headers={"Retry-After": "0.5"})
    assert _first_wait(fast_retry(), response) == 0.5
    assert parse_retry_after("1e400") is None and parse_retry_after("-3") == 0.0


#: A job as a later API version might answer it: fields flexflow has never seen, at both levels.
GROWN_JOB = {
    "id": "j",
    "status": "COMPLETED",
    "model": "flux-2-flex",
    "progress": 100,
    "result": {
        "images": ["https://cdn.test/a.png", "https://cdn.test/b.png"],
        "thumbnails": ["https://cdn.test/a-small.png"],
        "seed": 42,
        "nsfw": [False, False],
    },
    "creditCost": 5,
    "priority": "high",
    "usage": {"gpuSeconds": 3.2},
    "tags": ["x"],
}


async def test_keys_the_api_may_add_are_ignored_sync_and_async() -> None:
    """Mocked: a job with unknown keys is not what the emulator answers by default."""
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, json=GROWN_JOB))
    with FluxClient("http://api.test", "afk_k", transport=transport) as client:
        job = client.get_job("j")
    async with AsyncFluxClient("http://api.test", "afk_k", transport=transport) as awaiting:
        assert await awaiting.get_job("j") == job
    assert job.status is JobStatus.COMPLETED and job.credit_cost == 5
    assert job.result_urls == ("https://cdn.test/a.png", "https://cdn.test/b.png"), "images only, no thumbnails"
    assert "priority" not in job.to_dict() and "usage" not in job.to_dict()


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ({"thumbnails": ["https://cdn.test/a-small.png"]}, "unknown shape"),
        ({"images": "https://cdn.test/a.png", "seed": 1}, "other than http"),
        ({"images": [{"url": "https://cdn.test/a.png"}]}, "other than http"),
        ({"images": ["file:///etc/passwd"], "thumbnails": []}, "other than http"),
        (7, "unknown shape"),
    ],
)
def test_a_result_without_a_usable_images_list_is_refused(result: object, why: str) -> None:
    with pytest.raises(UnexpectedResponse, match=why):
        parse_result(result)


def test_a_job_with_extra_keys_from_the_emulator_is_read(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "extra_keys", "count": 1})
    job = client.get_job(client.submit(flux_request(seed=4), "extra"))
    assert job.status is JobStatus.COMPLETED
    assert len(job.result_urls) == 1 and "thumbnail" not in job.result_urls[0]
    assert emulator.accounting()["faults_injected"] == {"extra_keys": 1}


async def test_408_from_the_emulator_is_retried(async_client: AsyncFluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "http_408", "count": 2, "route": "api"})
    job = await async_client.get_job(await async_client.submit(flux_request(seed=5), "timeout-408"))
    assert job.status is JobStatus.COMPLETED
    accounting = emulator.accounting()
    assert accounting["faults_injected"] == {"http_408": 2}
    assert accounting["jobs_created"] == 1 and accounting["jobs_billed"] == 1


def test_a_429_without_retry_after_from_the_emulator_waits_the_default(emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "rate_limit", "count": 1, "route": "submit", "retry_after": None})
    waits: list[float] = []
    calls = ApiCalls(emulator.url, DEFAULT_TEST_KEY, fast_retry(rate_limit_wait=0.05))
    flow = calls.submit(flux_request(seed=6), "rl-none")
    with httpx2.Client() as http:
        step = next(flow)
        try:
            while True:  # pump by hand: record the pause asked for instead of sleeping it
                if isinstance(step, Sleep):
                    waits.append(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(http.send(step))
        except StopIteration as done:
            job_id = done.value
    assert job_id and len(waits) == 1
    assert 0.05 <= waits[0] <= 0.05 * (1 + RATE_LIMIT_SPREAD), "the default wait, not the tiny backoff"
    assert emulator.accounting()["faults_injected"] == {"rate_limit": 1}
