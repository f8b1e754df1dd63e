"""Where the gallery is served: one place for its URLs, cheap to import (the compiler links to it)."""

from __future__ import annotations

#: Where the api-server mounts the app (plugin.py); not under Airflow's reserved prefixes.
URL_PREFIX = "/flexflow"


def gallery_href(root_path: str, *, run: bool = False) -> str:
    """Where a Gallery tab points: the app's page under the api-server's path (``[api] base_url``'s), with the
    UI's ``{DAG_ID}`` (and ``{RUN_ID}``) placeholders, which the UI fills in URL-encoded."""
    href = f"{root_path.rstrip('/')}{URL_PREFIX}/dags/{{DAG_ID}}/gallery"
    return f"{href}?run_id={{RUN_ID}}" if run else href
