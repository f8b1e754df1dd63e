"""Writing files to object storage so that a reader never sees a partial file."""

from __future__ import annotations

import hashlib
import uuid

from airflow.sdk import ObjectStoragePath

LOCAL_PROTOCOLS = ("file", "local", "")


def target_folder(url: str, conn_id: str | None) -> ObjectStoragePath:
    return ObjectStoragePath(url, conn_id=conn_id)


def write_atomic(target: ObjectStoragePath, data: bytes) -> None:
    """Local files: written under a temporary name, then renamed over the target (atomic on POSIX).

    Object stores (s3://, gs://) make an object visible only once its upload completes, so the
    object is written directly. Either way a retry rewrites the same name: nothing is duplicated.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.protocol not in LOCAL_PROTOCOLS:
        target.write_bytes(data)
        return
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
    try:
        temporary.write_bytes(data)
        temporary.replace(target)
    finally:
        if temporary.exists():
            temporary.unlink()


def promote(staged: ObjectStoragePath, target: ObjectStoragePath, sha256: str) -> None:
    """Move an approved file from its staging folder into the target, each file appearing whole.

    Local files: one rename (staging lies under the target, so on the same file system: atomic, and the
    staged copy is gone in the same step). Object stores have no rename: a server-side copy, which makes the
    object visible only once complete, then the staged copy is deleted. A retry after a crash between the
    two copies again; one after both finds the staged copy gone and the target holding the approved bytes
    (checked by sha256, so an older file of the same name is never taken for it).
    """
    if not staged.exists():
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            return
        raise FileNotFoundError(f"{staged} is gone and {target} does not hold the approved image")
    target.parent.mkdir(parents=True, exist_ok=True)
    if staged.protocol in LOCAL_PROTOCOLS:
        staged.replace(target)
        return
    staged.fs.copy(staged.path, target.path)
    staged.unlink()
