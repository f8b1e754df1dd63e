"""An S3-compatible server on loopback for the s3 publishing tests: moto's server mode over real HTTP.

The server (``moto.server.ThreadedMotoServer``) is started once per test session on 127.0.0.1 and a free
port; each test gets a bucket of its own and the Airflow connection ``flexflow_s3`` (type ``aws``) whose
``endpoint_url`` points at it. Nothing reaches AWS: every ``AWS_*`` variable is cleared, the instance
metadata service is disabled and no config or credentials file from the home folder is read.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

CONN_ID = "flexflow_s3"
ACCESS_KEY = "AKIAFLEXFLOWTEST0001"
#: The AWS secret of the tests: distinctive, so a test can prove it never lands in a log or a file.
SECRET = "flexflow-s3-TEST-SECRET-do-not-leak-5e1d9c"
REGION = "us-east-1"
_buckets = itertools.count(1)


def _isolate_from_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, for the session; its URL."""
    from moto.server import ThreadedMotoServer  # here: a session that uses no bucket does not import moto

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate_from_aws(monkeypatch)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@dataclass(frozen=True)
class S3Bucket:
    """A bucket of the loopback server, the connection that reaches it, and a boto3 client to look inside."""

    name: str
    endpoint: str
    conn_id: str
    client: Any

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new, empty bucket and the Airflow connection ``flexflow_s3`` to it (dummy keys, loopback endpoint)."""
    _isolate_from_aws(monkeypatch)
    connection = {
        "conn_type": "aws",
        "login": ACCESS_KEY,
        "password": SECRET,
        "extra": {"endpoint_url": s3_endpoint, "region_name": REGION},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )
    name = f"flexflow-test-{os.getpid()}-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return S3Bucket(name, s3_endpoint, CONN_ID, client)
