"""The gallery's FastAPI app, mounted by Airflow's api-server under ``/flexflow`` (``plugin.py``).

Every route depends on Airflow's own authorization: ``requires_access_dag("GET", XCOM)`` resolves the
user from the request's JWT (the ``Authorization`` header, else the UI's ``_token`` cookie, which the
browser sends with the UI's same-origin iframe) and asks the configured auth manager whether that user
may read the DAG's XComs (what the gallery shows is what finalize and review pushed). No token: 401; a
bad token or a user without access to the DAG: 403.
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dag import DagModel
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from flexflow import __version__
from flexflow.gallery.page import CONTENT_SECURITY_POLICY, Shown, render_gallery
from flexflow.gallery.runs import (
    GalleryError,
    RunManifest,
    Source,
    checked_thumbnail,
    latest_published,
    latest_staging,
    listed_entry,
    plain_name,
    run_manifest,
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}
_READ_DAG = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))]

app = FastAPI(title="flexflow gallery", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/dags/{dag_id}/gallery", response_class=HTMLResponse, dependencies=_READ_DAG)
def gallery(
    dag_id: str, request: Request, session: SessionDep, run_id: Annotated[str | None, Query()] = None
) -> HTMLResponse:
    """The run awaiting approval (if any) and the latest published run, or run ``run_id``'s."""
    _known_dag(session, dag_id)
    staging = latest_staging(session, dag_id, run_id)
    published = latest_published(session, dag_id, run_id)
    base = str(request.scope.get("root_path") or "").rstrip("/")
    page = render_gallery(dag_id, _shown(staging), _shown(published), base=base, run_id=run_id)
    return HTMLResponse(page, headers=_HEADERS)


@app.get("/dags/{dag_id}/thumbnail", dependencies=_READ_DAG)
def thumbnail_of(
    dag_id: str,
    session: SessionDep,
    run_id: Annotated[str, Query()],
    name: Annotated[str, Query()],
    source: Annotated[Source, Query()] = Source.PUBLISHED,
) -> Response:
    """A JPEG thumbnail of the file ``name`` that run ``run_id``'s manifest lists, checked against its sha256."""
    run = run_manifest(session, dag_id, run_id, source)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} of {dag_id} has no {source.value} manifest")
    try:
        entry = listed_entry(run.read(), name)
        if entry is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the run's manifest lists no file of that name")
        return Response(checked_thumbnail(run, entry), media_type="image/jpeg", headers=_HEADERS)
    except GalleryError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _known_dag(session: SessionDep, dag_id: str) -> None:
    if session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no DAG {dag_id}")


def _shown(run: RunManifest | None) -> Shown | None:
    """The run with its manifest read and every listed file checked (present, bounded, its sha256)."""
    if run is None:
        return None
    try:
        manifest = run.read()
    except GalleryError as exc:
        return Shown(run, problem=str(exc))
    not_shown: dict[str, str] = {}
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        if plain_name(entry["name"]) is None:
            not_shown[entry["name"]] = "not a plain file name in the run's folder: not shown"
            continue
        try:
            checked_thumbnail(run, entry)  # verified and decodable; its tag's request then reads no file
        except GalleryError as exc:
            not_shown[entry["name"]] = str(exc)
    return Shown(run, manifest, not_shown=not_shown)
