"""Polling until a deployment gets somewhere, and the harness's own error."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class HarnessError(RuntimeError):
    """The deployment could not be brought up, or did not behave."""


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.5,
    check: Callable[[], None] = lambda: None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; ``check`` may raise to stop early."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        check()
        try:
            value = condition()
        except (HarnessError, OSError) as exc:  # not up yet, or a transient error: try again
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
