"""Shared fixtures: a real emulator on a loopback port, and clients pointed at it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest

from flexflow.client import AsyncFluxClient, FluxClient, RetryPolicy
from flexflow.emulator import DEFAULT_TEST_KEY, EmulatorConfig, EmulatorServer


def fast_retry(**overrides: float) -> RetryPolicy:
    """Retries with tiny, seeded backoff so tests exercise every path without waiting."""
    settings = {"max_attempts": 4, "max_elapsed": 30.0, "backoff_base": 0.01, "backoff_cap": 0.05, **overrides}
    return RetryPolicy(jitter=random.Random(7), **settings)


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorConfig(queue_seconds=0.0, processing_seconds=0.0)) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> EmulatorServer:
    """The session's emulator, reset: no jobs, no faults, instant jobs, default settings."""
    emulator_server.state.reset()
    emulator_server.faults.reset(seed=0)
    emulator_server.config.update(
        {
            "api_keys": [DEFAULT_TEST_KEY],
            "inactive_keys": [],
            "queue_seconds": 0.0,
            "processing_seconds": 0.0,
            "retention_seconds": 24 * 3600.0,
            "credits": None,
            "result_shape": "images",
        }
    )
    return emulator_server


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[FluxClient]:
    with FluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=5.0, retry=fast_retry()) as flux_client:
        yield flux_client


@pytest.fixture
async def async_client(emulator: EmulatorServer) -> AsyncIterator[AsyncFluxClient]:
    async with AsyncFluxClient(emulator.url, DEFAULT_TEST_KEY, timeout=5.0, retry=fast_retry()) as flux_client:
        yield flux_client


def flux_request(prompt: str = "a red bicycle", **flux: object) -> dict[str, object]:
    return {"prompt": prompt, "model": "flux-2-flex", "fluxParams": flux}
