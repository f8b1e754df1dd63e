"""What the gallery shows, read from Airflow's metadata database and from the run's published folder.

A run is *published* when its ``finalize`` task's XCom ``return_value`` names a manifest; a run is
*awaiting approval* while its ``review`` task instance is ``awaiting_input`` and that task pushed the
XCom ``staging`` (``{"manifest": url, "contact_sheet": url, "conn_id": id}``). Both name the manifest
and the connection it is read with; nothing of a request (a path, a URL) ever chooses a file: a file
is read only when the manifest of that run lists its name, as one plain segment in the manifest's folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.sdk import ObjectStoragePath
from airflow.utils.state import TaskInstanceState
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from flexflow.client.results import MAX_IMAGE_BYTES
from flexflow.publishing.paths import PathRefused, checked_name
from flexflow.publishing.review import STAGING_XCOM_KEY
from flexflow.publishing.store import TooLarge, read_bounded
from flexflow.spec.checks import RUN_FILES
from flexflow.text import visible

#: The task that writes the manifest (``compiler/layout.py: FINALIZE``) and its XCom.
FINALIZE_TASK_ID = "finalize"
#: The approval task (``compiler/layout.py: REVIEW``); it pushes STAGING_XCOM_KEY while it waits.
REVIEW_TASK_ID = "review"
#: How many of a DAG's latest runs are searched for one with a manifest.
RECENT_RUNS = 50
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: Thumbnails fit in this box; an image with more pixels than this is not decoded at all.
THUMBNAIL_BOX = (320, 320)
MAX_IMAGE_PIXELS = 64_000_000
#: Thumbnails kept per api-server process (a few MB): (file URL, sha256, size, mtime) -> JPEG bytes.
THUMBNAIL_CACHE_SIZE = 256
_THUMBNAILS: OrderedDict[tuple[str, str, int, float], bytes] = OrderedDict()
_CACHE_LOCK = threading.Lock()


class Source(StrEnum):
    """Which XCom of a run names its manifest."""

    PUBLISHED = "published"
    STAGING = "staging"


class GalleryError(Exception):
    """Something the gallery cannot show, said in a sentence for the page."""


@dataclass(frozen=True)
class RunManifest:
    """Where a run's manifest is, as its XCom says."""

    run_id: str
    source: Source
    manifest_url: str
    conn_id: str | None

    def folder(self) -> ObjectStoragePath:
        return ObjectStoragePath(self.manifest_url, conn_id=self.conn_id).parent

    def read(self) -> dict[str, Any]:
        """The manifest document; GalleryError when it is missing, too large or not a manifest."""
        path = ObjectStoragePath(self.manifest_url, conn_id=self.conn_id)
        try:
            data = read_bounded(path, MAX_MANIFEST_BYTES)
        except TooLarge as exc:
            raise GalleryError(f"the manifest of run {self.run_id} is larger than {MAX_MANIFEST_BYTES} bytes") from exc
        except (OSError, ValueError) as exc:
            raise GalleryError(f"the manifest {self.manifest_url} of run {self.run_id} cannot be read ({exc})") from exc
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise GalleryError(f"the manifest of run {self.run_id} is not JSON ({exc})") from exc
        if not isinstance(document, dict) or not isinstance(document.get("files"), list):
            raise GalleryError(f"the manifest of run {self.run_id} lists no files")
        return document


def latest_published(session: Session, dag_id: str, run_id: str | None = None) -> RunManifest | None:
    """The latest run of ``dag_id`` (or run ``run_id``) whose finalize named a manifest."""
    query = (
        select(XComModel.run_id, XComModel.value)
        .join(DagRun, DagRun.id == XComModel.dag_run_id)
        .where(
            XComModel.dag_id == dag_id,
            XComModel.task_id == FINALIZE_TASK_ID,
            XComModel.key == "return_value",
            XComModel.map_index == -1,
        )
        .order_by(DagRun.run_after.desc(), DagRun.id.desc())
        .limit(RECENT_RUNS)
    )
    if run_id is not None:
        query = query.where(XComModel.run_id == run_id)
    for found_run, value in session.execute(query):
        if (found := _manifest_of(found_run, value, Source.PUBLISHED)) is not None:
            return found
    return None


def latest_staging(
    session: Session, dag_id: str, run_id: str | None = None, *, waiting: bool = True
) -> RunManifest | None:
    """The latest run whose review task staged a manifest; with ``waiting``, only while it awaits input."""
    query = (
        select(XComModel.run_id, XComModel.value)
        .join(DagRun, DagRun.id == XComModel.dag_run_id)
        .join(
            TaskInstance,
            (TaskInstance.dag_id == XComModel.dag_id)
            & (TaskInstance.run_id == XComModel.run_id)
            & (TaskInstance.task_id == XComModel.task_id)
            & (TaskInstance.map_index == XComModel.map_index),
        )
        .where(
            XComModel.dag_id == dag_id,
            XComModel.task_id == REVIEW_TASK_ID,
            XComModel.key == STAGING_XCOM_KEY,
            XComModel.map_index == -1,
        )
        .order_by(DagRun.run_after.desc(), DagRun.id.desc())
        .limit(RECENT_RUNS)
    )
    if waiting:
        query = query.where(TaskInstance.state == TaskInstanceState.AWAITING_INPUT)
    if run_id is not None:
        query = query.where(XComModel.run_id == run_id)
    for found_run, value in session.execute(query):
        if (found := _manifest_of(found_run, value, Source.STAGING)) is not None:
            return found
    return None


def run_manifest(session: Session, dag_id: str, run_id: str, source: Source) -> RunManifest | None:
    if source is Source.PUBLISHED:
        return latest_published(session, dag_id, run_id)
    return latest_staging(session, dag_id, run_id, waiting=False)


def _manifest_of(run_id: str, value: Any, source: Source) -> RunManifest | None:
    """The manifest an XCom value names (stored as JSON text or as a JSON document), or None."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict) or not isinstance(value.get("manifest"), str) or not value["manifest"]:
        return None
    conn_id = value.get("conn_id")
    return RunManifest(run_id, source, value["manifest"], conn_id if isinstance(conn_id, str) and conn_id else None)


def plain_name(name: object) -> str | None:
    """``name`` when it is a file name a run may publish (``publishing/paths.py: checked_name``: one segment,
    no separator, ``..`` or control character, even percent-decoded) and shows as itself, else None."""
    if not isinstance(name, str) or visible(name) != name:
        return None
    try:
        return checked_name(name, reserved=tuple(RUN_FILES))
    except PathRefused:
        return None


def listed_entry(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The manifest's record of the file ``name``, when the name is listed and is a plain segment."""
    if plain_name(name) is None:
        return None
    for entry in manifest.get("files") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return None


def verified_file(run: RunManifest, entry: dict[str, Any]) -> bytes:
    """The bytes of a listed file, read from the manifest's folder: bounded, and only when its sha256 is the
    manifest's. GalleryError says why not (missing, too large, changed since it was published)."""
    name = plain_name(entry.get("name"))
    if name is None:
        raise GalleryError("the file's name is not a plain file name in the run's folder; it is not shown")
    path = run.folder() / name
    try:
        data = read_bounded(path, MAX_IMAGE_BYTES)
    except TooLarge as exc:
        raise GalleryError(f"{name} is larger than {MAX_IMAGE_BYTES} bytes; it is not shown") from exc
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{name} cannot be read ({type(exc).__name__})") from exc
    if not isinstance(entry.get("sha256"), str):
        raise GalleryError(f"the manifest records no sha256 for {name}; it is not shown")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise GalleryError(f"{name} changed since it was published (its sha256 is not the manifest's); not shown")
    return data


def checked_thumbnail(run: RunManifest, entry: dict[str, Any]) -> bytes:
    """The thumbnail of a listed file, made once its bytes are verified (``verified_file``) and decoded.

    Kept in a small in-process cache by the file's URL, its manifest sha256 and its current size and
    modification time (one ``stat``): looking at a gallery again reads no file, while a file rewritten
    since (a new size or mtime) is read and verified again.
    """
    name = plain_name(entry.get("name"))
    if name is None:
        return verified_file(run, entry)  # raises, saying why
    path = run.folder() / name
    try:
        status = path.stat()
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{name} cannot be read ({type(exc).__name__})") from exc
    key = (str(path), str(entry.get("sha256")), int(status.st_size), float(status.st_mtime))
    with _CACHE_LOCK:
        if (cached := _THUMBNAILS.get(key)) is not None:
            _THUMBNAILS.move_to_end(key)
            return cached
    small = thumbnail(verified_file(run, entry))
    with _CACHE_LOCK:
        _THUMBNAILS[key] = small
        while len(_THUMBNAILS) > THUMBNAIL_CACHE_SIZE:
            _THUMBNAILS.popitem(last=False)
    return small


def thumbnail(data: bytes) -> bytes:
    """A JPEG that fits in THUMBNAIL_BOX; GalleryError for what is not an image or has too many pixels."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS:  # checked from the header, before anything is decoded
                raise GalleryError(f"the image has {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}")
            picture.draft("RGB", THUMBNAIL_BOX)  # JPEG: decode at a reduced scale
            small = picture.convert("RGB")
            small.thumbnail(THUMBNAIL_BOX)
            out = io.BytesIO()
            small.save(out, "JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GalleryError(f"not a readable image ({type(exc).__name__})") from exc
    return out.getvalue()
