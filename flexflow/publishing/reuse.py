"""No paying twice for the same picture: images already published, found by the digest of their request.

A spec with ``reuse`` indexes every job it publishes under its publish root (the literal part of
``publish.to``, where the ledger lives too): ``<root>/.flexflow-reuse/<digest>.json`` lists the files
the job's images were stored as; the newest copy wins. The digest is of what decides the picture
(:func:`~flexflow.client.requests.request_digest`: model, rendered prompt, every flux param), and each
manifest record carries it too (``request_sha256``). The index is a folder of small files, not one
shared file, so runs of several specs and workers write it without a lock and a restart loses nothing.

Everything found in the target is checked before it stands for a paid image: the entry's shape, that
each file lies under the root, and its size and sha256 (here, in ``prepare``, before anything is
submitted); the copy is decoded whole, as a download would be, before it is published.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.sdk import ObjectStoragePath

from flexflow.client.requests import generation_request, request_digest
from flexflow.client.results import MAX_IMAGE_BYTES, DownloadedImage, DownloadError, check_image
from flexflow.publishing.paths import PathRefused, checked_folder, checked_name
from flexflow.publishing.store import MAX_RECORD_BYTES, TooLarge, read_bounded, target_folder, url_of, write_atomic

REUSE_DIR = ".flexflow-reuse"
REUSE_VERSION = 1
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
#: What an index entry keeps of each stored file (a subset of its manifest record).
FILE_FIELDS = ("file", "name", "sha256", "bytes", "job_id", "index", "job_images")


class ReuseRefused(ValueError):
    """A published file that cannot stand for a new image (changed, gone, outside the root); the message says which."""


@dataclass(frozen=True)
class Lookup:
    """The published files of one request (None: submit it), and why."""

    files: list[dict[str, Any]] | None
    why: str


def planned_digest(job: Mapping[str, Any]) -> str:
    """The digest of a job ``{"prompt", "flux"}`` as its submit task will build the request (webhooks aside)."""
    return request_digest(generation_request(str(job["prompt"]), job["flux"]))


def entry_path(root: str, conn_id: str | None, digest: str) -> ObjectStoragePath:
    if not _DIGEST.match(digest):
        raise ValueError(f"not a request digest: {digest!r}")
    return target_folder(root, conn_id) / REUSE_DIR / f"{digest}.json"


def find_published(root: str, conn_id: str | None, digest: str) -> Lookup:
    """The files an earlier run published for this request, each checked to be there unchanged."""
    path = entry_path(root, conn_id, digest)
    try:  # read at once: on an object store, a check that it exists first would be a second request
        files = _entry_files(json.loads(read_bounded(path, MAX_RECORD_BYTES)), digest)
        for file in files:
            _check_unchanged(file, root, conn_id)  # a missing file is ReuseRefused, not FileNotFoundError
    except FileNotFoundError:
        return Lookup(None, "not published before")
    except (ValueError, TypeError, KeyError, OSError, ReuseRefused) as exc:
        return Lookup(None, f"{url_of(path)} cannot be reused: {exc}")
    return Lookup(files, f"published as {', '.join(f['file'] for f in files)}")


def _entry_files(entry: Any, digest: str) -> list[dict[str, Any]]:
    """The entry's files, every one of its job's images once (``index`` 1..``job_images``)."""
    if not isinstance(entry, Mapping) or entry.get("request_sha256") != digest:
        raise ReuseRefused("it is not this request's index entry")
    files = [{key: file[key] for key in FILE_FIELDS} for file in entry["files"]]
    whole = sorted(int(file["index"]) for file in files) == [*range(1, len(files) + 1)]
    if not files or not whole or any(int(file["job_images"]) != len(files) for file in files):
        raise ReuseRefused("its files are not one job's images")
    return files


def _check_unchanged(file: Mapping[str, Any], root: str, conn_id: str | None) -> None:
    """The file lies under the root and still has the size and sha256 it was published with."""
    data = _read_under_root(str(file["file"]), root, conn_id, int(file["bytes"]))
    if len(data) != int(file["bytes"]) or hashlib.sha256(data).hexdigest() != file["sha256"]:
        raise ReuseRefused(f"{file['file']} changed since it was published")


def _read_under_root(url: str, root: str, conn_id: str | None, size: int) -> bytes:
    """The file, when it lies under the root and has no more than the ``size`` it was published with."""
    folder, _, name = url.rpartition("/")
    try:
        checked_folder(folder, root)
        checked_name(name)
    except PathRefused as exc:
        raise ReuseRefused(f"{url}: {exc}") from exc
    try:  # read at once: on an object store, a check that it is there first would be a second request
        return read_bounded(target_folder(url, conn_id), min(size, MAX_IMAGE_BYTES))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ReuseRefused(f"{url} is gone") from exc
    except TooLarge as exc:
        raise ReuseRefused(f"{url} changed since it was published ({exc})") from exc


def reused_image(
    file: Mapping[str, Any],
    root: str,
    conn_id: str | None,
    expected_format: str,
    expected_size: tuple[int, int] | None,
) -> DownloadedImage:
    """A published file read back for a copy: unchanged and, decoded whole, the image the request asks for."""
    url = str(file["file"])
    data = _read_under_root(url, root, conn_id, int(file["bytes"]))
    try:
        image = check_image(url, data, expected_format, expected_size)
    except DownloadError as exc:
        raise ReuseRefused(str(exc)) from exc
    if image.sha256 != file["sha256"]:
        raise ReuseRefused(f"{url} changed since it was published")
    return image


def record_published(
    root: str, conn_id: str | None, digest: str, records: Sequence[Mapping[str, Any]], dag_id: str, run_id: str
) -> ObjectStoragePath:
    """Index one job's stored files under its request's digest (replacing an older copy's entry)."""
    path = entry_path(root, conn_id, digest)
    entry = {
        "reuse_version": REUSE_VERSION,
        "request_sha256": digest,
        "dag_id": dag_id,
        "run_id": run_id,
        "files": [{key: record[key] for key in FILE_FIELDS} for record in records],
    }
    write_atomic(path, json.dumps(entry, indent=2).encode())
    return path
