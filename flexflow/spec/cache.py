"""A content-hash cache of validated specs, on disk, for the DAG processor's hot path.

Airflow re-parses the DAG folder every 30 seconds, each file in a fresh process, so an in-memory
cache would never be hit. The key is the spec's text together with the flexflow version and the
schema, so a spec is validated again whenever it, or the rules, change. Only valid specs are
stored: an invalid one is re-validated each time so that its problems are reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from flexflow import __version__
from flexflow.defaults import Limits, deployment_limits
from flexflow.spec.schema import spec_schema

CACHE_DIR_ENV = "FLEXFLOW_CACHE_DIR"


@cache
def _rules_fingerprint(limits: Limits) -> str:
    """The rules a cached spec passed: a changed deployment limit validates every spec again."""
    rules = f"{__version__}\0{json.dumps(spec_schema(), sort_keys=True)}\0{limits!r}"
    return hashlib.sha256(rules.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``FLEXFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/flexflow/specs`` (``~/.cache/flexflow/specs``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flexflow" / "specs"


class SpecCache:
    """Validated spec data by content hash; any failure to read or write is a cache miss, never an error.

    Entries skip validation, so the folder must be writable only by the user Airflow runs as.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or default_cache_dir()

    def _entry(self, text: str) -> Path:
        key = hashlib.sha256(f"{_rules_fingerprint(deployment_limits())}\0{text}".encode()).hexdigest()
        return self.folder / f"{key}.json"

    def get(self, text: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._entry(text).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, text: str, data: dict[str, Any]) -> None:
        entry = self._entry(text)
        partial = entry.with_name(f"{entry.stem}.{os.getpid()}.partial")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(data), encoding="utf-8")
            os.replace(partial, entry)
        except (OSError, TypeError, ValueError):
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
