"""Writing files to object storage so that a reader never sees a partial file."""

from __future__ import annotations

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
