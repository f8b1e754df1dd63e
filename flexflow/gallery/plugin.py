"""The Airflow plugin (entry point ``airflow.plugins``): the gallery app and its tab on every DAG's page."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.app import API_ROOT_PATH
from airflow.plugins_manager import AirflowPlugin

from flexflow.gallery.app import app
from flexflow.gallery.links import URL_PREFIX, gallery_href


class FlexflowGalleryPlugin(AirflowPlugin):
    """Serves the gallery from the api-server (``/flexflow/...``) and adds a "Gallery" tab to each DAG and run.

    The UI shows an external view with ``destination`` ``dag`` or ``dag_run`` as a tab of that page: a
    same-origin iframe of ``href``, so the browser sends the UI's login cookie with it.
    """

    name = "flexflow_gallery"
    fastapi_apps: list[Any] = [  # noqa: RUF012 (AirflowPlugin's own attributes are class-level lists)
        {"app": app, "url_prefix": URL_PREFIX, "name": "flexflow gallery"}
    ]
    external_views: list[Any] = [  # noqa: RUF012
        {"name": "Gallery", "href": gallery_href(API_ROOT_PATH), "destination": "dag", "url_route": "flexflow-gallery"},
        {
            "name": "Gallery",
            "href": gallery_href(API_ROOT_PATH, run=True),
            "destination": "dag_run",
            "url_route": "flexflow-run-gallery",
        },
    ]
