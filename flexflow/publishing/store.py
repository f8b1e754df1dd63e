"""Writing files to local folders and object stores so that a reader never sees a partial file.

What "atomic" means differs (docs/guarantees.md, section 3):

* a local folder has rename: a file is written under a temporary name in its folder and renamed over
  its target, so the name shows the old file or the new one, whole;
* an object store (``s3://``, ``gs://``) has no rename, but a PUT (or a completed multipart upload)
  makes an object readable only whole, so the object is written directly under its final name. No
  temporary object is made (an ``s3fs`` "rename" is a copy then a delete, not atomic).

On neither is a *set* of files atomic: a run's manifest is written last, as its commit point, and a
reader trusts only the files a manifest lists.
"""

from __future__ import annotations

import hashlib
import mimetypes
import uuid
from pathlib import Path

from airflow.sdk import BaseHook, ObjectStoragePath
from airflow.sdk.exceptions import AirflowNotFoundException

LOCAL_PROTOCOLS = ("file", "local", "")
S3_PROTOCOLS = ("s3", "s3a")


class NoSuchConnection(LookupError):
    """A target names a storage connection (``publish.conn_id``, ``--conn-id``) that this Airflow does not have."""


def require_connection(conn_id: str | None) -> None:
    """The storage connection a target names must exist.

    Without it the object store filesystems do not fail: the Amazon one, for one, logs a warning and
    goes on with whatever credentials the machine has (another account's, maybe) or anonymously, so a
    misspelt ``conn_id`` would publish somewhere unintended, or fail only after the images were paid for.
    """
    if conn_id is None:
        return
    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise NoSuchConnection(
            f"the storage connection {conn_id!r} is not defined in this Airflow: add it (`airflow connections "
            f"add`, or the AIRFLOW_CONN_{conn_id.upper()} variable), or name an existing one"
        ) from exc


def target_folder(url: str, conn_id: str | None) -> ObjectStoragePath:
    return ObjectStoragePath(url, conn_id=conn_id)


def is_local(path: ObjectStoragePath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def url_of(path: ObjectStoragePath) -> str:
    """The path as the URL a spec names it by: ``s3://bucket/key``, ``file:///folder/name``.

    ``str()`` of an object store path with a connection is ``s3://<conn_id>@bucket/key``: not a URL a
    reader of the manifest can use, and not under the spec's ``publish.to`` (so reuse would refuse it).
    """
    if is_local(path):
        return str(path)
    return f"{path.protocol}://{path.path}"


def write_atomic(target: ObjectStoragePath, data: bytes) -> None:
    """Local files: written under a temporary name, then renamed over the target (atomic on POSIX).

    Object stores (s3://, gs://) make an object visible only once its upload completes, so the
    object is written directly, in one call that uploads it whole or not at all (s3fs: one PUT up to
    100 MB, above that a multipart upload aborted on any error). No folder is made (an object store
    has none, and s3fs's mkdir would create a missing bucket), and an S3 object gets the Content-Type
    of its name, so a browser shows ``index.html`` and the images (through ``open("wb")`` every
    object was ``binary/octet-stream``). Either way a retry rewrites the same name: nothing is
    duplicated.
    """
    if not is_local(target):
        target.fs.pipe_file(target.path, data, **_upload_options(target))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
    try:
        temporary.write_bytes(data)
        temporary.replace(target)
    finally:
        if temporary.exists():
            temporary.unlink()


def _upload_options(target: ObjectStoragePath) -> dict[str, str]:
    content_type, _ = mimetypes.guess_type(target.name)
    if target.protocol in S3_PROTOCOLS and content_type is not None:
        return {"ContentType": f"{content_type}; charset=utf-8" if content_type.startswith("text/") else content_type}
    return {}


def fresh_listing(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The files directly in ``folder`` as the store has them now (none when it does not exist).

    fsspec filesystems are cached per connection for the life of a worker process, and s3fs keeps
    every listing it made: without dropping it, a long-lived worker would not see files that other
    workers wrote since (another run's budget reservation, say).
    """
    folder.fs.invalidate_cache(folder.path)
    if not folder.exists():
        return []
    return sorted((path for path in folder.iterdir() if path.is_file()), key=str)


def promote(source: ObjectStoragePath, target: ObjectStoragePath, sha256: str) -> None:
    """Move one file from ``source`` to ``target`` (a staging prefix to its published place), replacing it.

    * local: a rename (same file system: atomic per file; the target folder is made first);
    * object store: a server-side copy (s3fs ``copy`` is S3's CopyObject), its size checked, then the
      source deleted. The target object appears whole; between the copy and the delete both exist.

    Idempotent, so a re-run after a crash finishes the move: a source that is gone while the target holds
    ``sha256`` means it was promoted (an older file of the same name is no such proof); a source still
    there beside a target with the same bytes (a crash between copy and delete) is deleted. Otherwise,
    with no source: ``FileNotFoundError``.
    """
    if source.protocol != target.protocol or source.conn_id != target.conn_id:
        raise ValueError(f"cannot promote {url_of(source)} to {url_of(target)}: another store or connection")
    if is_local(source):
        _promote_local(Path(source.path), Path(target.path), sha256)
        return
    fs = source.fs
    fs.invalidate_cache(source.path)
    fs.invalidate_cache(target.path)
    if not fs.isfile(source.path):
        if fs.isfile(target.path) and _sha256(target.read_bytes()) == sha256:
            return
        raise FileNotFoundError(f"{url_of(source)} is gone and {url_of(target)} does not hold the approved file")
    size = int(fs.size(source.path))
    if not (fs.isfile(target.path) and int(fs.size(target.path)) == size and _same_bytes(source, target)):
        fs.copy(source.path, target.path)
        fs.invalidate_cache(target.path)
        copied = int(fs.size(target.path))
        if copied != size:
            raise OSError(f"copying {url_of(source)} to {url_of(target)} gave {copied} bytes, not {size}")
    fs.rm_file(source.path)
    fs.invalidate_cache(source.path)


def _promote_local(source: Path, target: Path, sha256: str) -> None:
    if not source.is_file():
        if target.is_file() and _sha256(target.read_bytes()) == sha256:
            return
        raise FileNotFoundError(f"{source} is gone and {target} does not hold the approved file")
    target.parent.mkdir(parents=True, exist_ok=True)
    source.replace(target)


def _same_bytes(source: ObjectStoragePath, target: ObjectStoragePath) -> bool:
    return source.read_bytes() == target.read_bytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: The most a JSON record flexflow keeps beside the images may hold (a reuse index entry, a budget
#: reservation): real ones are a few KB.
MAX_RECORD_BYTES = 1024 * 1024


class TooLarge(ValueError):
    """A file in a target is larger than what reads it allows: planted or changed, it is not read whole."""


def read_bounded(path: ObjectStoragePath, limit: int) -> bytes:
    """The file's bytes when it has at most ``limit`` of them; reading stops one byte past the limit.

    Everything flexflow reads back from a target (index entries, reservations, published images) has a
    size it knows; a file planted there must not make a task read gigabytes into memory.
    """
    with path.open("rb") as file:  # type: ignore[no-untyped-call]  # universal-pathlib types no open()
        data = file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{url_of(path)} is larger than {limit} bytes")
    return bytes(data)
