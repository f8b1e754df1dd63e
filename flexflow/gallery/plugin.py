"""The Airflow plugin (entry point ``airflow.plugins``): the gallery app and its tab on every DAG's page."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from flexflow.gallery.app import URL_PREFIX, app


class FlexflowGalleryPlugin(AirflowPlugin):
    """Serves the gallery from the api-server (``/flexflow/...``) and adds a "Gallery" tab to each DAG and run.

    The UI shows an external view with ``destination`` ``dag`` or ``dag_run`` as a tab of that page, an
    iframe of ``href`` with ``{DAG_ID}`` and ``{RUN_ID}`` filled in (URL-encoded) by the UI.
    """

    name = "flexflow_gallery"
    fastapi_apps: list[Any] = [  # noqa: RUF012 (AirflowPlugin's own attributes are class-level lists)
        {"app": app, "url_prefix": URL_PREFIX, "name": "flexflow gallery"}
    ]
    external_views: list[Any] = [  # noqa: RUF012
        {
            "name": "Gallery",
            "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/gallery",
            "destination": "dag",
            "url_route": "flexflow-gallery",
        },
        {
            "name": "Gallery",
            "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/gallery?run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "flexflow-run-gallery",
        },
    ]
