"""The emulator's concurrent-job cap per API key, over real HTTP on loopback: 429 beyond it, nothing created."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import httpx2
import pytest
from httpx2 import Response

from flexflow.contract.wire import SUBMIT_PATH
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorServer
from flexflow.emulator.server import add_arguments
from tests.conftest import flux_request

OTHER_KEY = "afk_flexflow_other_team_key"


@pytest.fixture
def http(emulator: EmulatorServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=emulator.url, headers={"X-API-Key": DEFAULT_TEST_KEY}, timeout=5.0) as client:
        yield client


def submit(http: httpx2.Client, prompt: str, key: str | None = None, api_key: str = DEFAULT_TEST_KEY) -> Response:
    headers = {"X-API-Key": api_key, **({"Idempotency-Key": key} if key else {})}
    return http.post(SUBMIT_PATH, json=flux_request(prompt, resolution="0.5MP"), headers=headers)


def slow_jobs_capped_at(emulator: EmulatorServer, cap: int) -> None:
    """Jobs that stay in flight for the whole test (one hour), at most ``cap`` of them per key."""
    emulator.config.update(
        {"queue_seconds": 1800.0, "processing_seconds": 1800.0, "max_concurrent_jobs": cap,
         "api_keys": [DEFAULT_TEST_KEY, OTHER_KEY]}
    )  # fmt: skip


def test_a_submit_beyond_the_cap_is_429_with_retry_after_and_creates_nothing(
    emulator: EmulatorServer, http: httpx2.Client
) -> None:
    slow_jobs_capped_at(emulator, 2)
    assert [submit(http, f"picture {n}").status_code for n in range(2)] == [202, 202]
    refused = submit(http, "picture 2")
    assert refused.status_code == 429
    assert "at most 2" in refused.json()["error"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 2
    assert accounting["rate_limited_submits"] == 1
    assert accounting["peak_in_flight"] == 2


def test_the_cap_is_per_api_key(emulator: EmulatorServer, http: httpx2.Client) -> None:
    slow_jobs_capped_at(emulator, 1)
    assert submit(http, "mine").status_code == 202
    assert submit(http, "theirs", api_key=OTHER_KEY).status_code == 202
    assert submit(http, "mine again").status_code == 429
    assert emulator.accounting()["jobs_created"] == 2


def test_an_idempotent_replay_is_answered_at_the_cap(emulator: EmulatorServer, http: httpx2.Client) -> None:
    slow_jobs_capped_at(emulator, 1)
    first = submit(http, "once", key="image-1")
    replay = submit(http, "once", key="image-1")
    assert (first.status_code, replay.status_code) == (202, 202)
    assert replay.json()["jobId"] == first.json()["jobId"]
    assert emulator.accounting()["rate_limited_submits"] == 0


def test_ended_jobs_free_their_place(emulator: EmulatorServer, http: httpx2.Client) -> None:
    emulator.config.update({"max_concurrent_jobs": 1})  # instant jobs: each has ended before the next submit
    assert [submit(http, f"quick {n}").status_code for n in range(3)] == [202, 202, 202]
    assert emulator.accounting()["rate_limited_submits"] == 0


def test_the_cap_is_set_and_cleared_over_http(emulator: EmulatorServer, http: httpx2.Client) -> None:
    assert http.patch("/_emulator/config", json={"max_concurrent_jobs": 10}).status_code == 200
    assert emulator.config.max_concurrent_jobs == 10
    assert http.patch("/_emulator/config", json={"max_concurrent_jobs": None}).status_code == 200
    assert emulator.config.max_concurrent_jobs is None


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "10"])
def test_a_bad_cap_is_refused_and_changes_nothing(emulator: EmulatorServer, http: httpx2.Client, value: object) -> None:
    answer = http.patch("/_emulator/config", json={"max_concurrent_jobs": value, "queue_seconds": 7})
    assert answer.status_code == 400
    assert "max_concurrent_jobs must be null (no cap) or an integer, 1 or more" in answer.text
    assert emulator.config.max_concurrent_jobs is None
    assert emulator.config.queue_seconds == 0.0


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flexflow emulator")
    add_arguments(parser)
    return parser.parse_args(flags)


def test_the_flag_takes_a_positive_integer(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse().max_concurrent_jobs is None
    assert parse("--max-concurrent-jobs", "10").max_concurrent_jobs == 10
    for bad, message in (("0", "must be 1 or more"), ("ten", "must be an integer")):
        with pytest.raises(SystemExit) as exited:
            parse("--max-concurrent-jobs", bad)
        assert exited.value.code == 2
        assert f"max concurrent jobs {message}" in capsys.readouterr().err
