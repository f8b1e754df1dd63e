"""Publishing to ``s3://`` through Airflow's object storage and an Amazon connection, end to end.

The bucket is on moto's S3 server (its server mode, the one s3fs's own tests use) on loopback, reached over
real HTTP by the Amazon provider's s3fs filesystem, exactly as a worker reaches S3 or an S3-compatible store
through ``endpoint_url``. Runs go through Airflow (``dag.test()``) against the image API emulator; what
landed is read back with boto3 straight from the server, not through flexflow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath
from PIL import Image

from flexflow.cli import main as flexflow_main
from flexflow.compiler.loader import SPECS_DIR_ENV
from flexflow.publishing.ledger import LEDGER_DIR, ledger_name
from flexflow.publishing.operators import MANIFEST_NAME
from flexflow.publishing.paths import PathRefused, checked_folder
from flexflow.publishing.reuse import REUSE_DIR, find_published, record_published
from flexflow.publishing.review import STAGING_DIR
from flexflow.publishing.store import fresh_listing, promote, url_of, write_atomic
from flexflow.spec.checks import CONTACT_SHEET_NAME
from tests.airflow_helpers import answer_review, load_module, ready_to_answer_from_a_thread, rows, task_states, xcom
from tests.conftest import ROOT as REPOSITORY
from tests.conftest import SECRET_KEY, EmulatedAirflow
from tests.s3_helpers import SECRET, S3Bucket

DAG_ID = "flexflow_test_s3"
FIRST, SECOND = (datetime(2026, 11, day, 6, tzinfo=UTC) for day in (2, 3))
JOBS = 3

SPEC = """\
version: 1
dag_id: flexflow_test_s3
tags: [flexflow-test]
params: {campaign: spring}
defaults:
  flux: {resolution: 0.5MP, output_format: png}
  retries: 0
  poll_interval: 50ms
  timeout: 1m
images:
  - name: hero
    prompt: "HERO_PROMPT"
    flux: {seed: 1}
  - name: card
    prompt: "a card for the spring sale"
    variants: {seed: [2, 3]}
publish:
  to: "s3://BUCKET/out/{{ params.campaign }}/{{ run_id | replace(':', '_') }}"
  conn_id: flexflow_s3
  filename: "{image}{variant}.{ext}"
budget: {credits_per_day: 15}
"""


def spec_text(bucket: S3Bucket, hero: str = "a hero image of a bicycle") -> str:
    return SPEC.replace("BUCKET", bucket.name).replace("HERO_PROMPT", hero)


@pytest.fixture
def specs(spec_folder: Path) -> Path:
    return spec_folder


def run(
    text: str, when: datetime, airflow: EmulatedAirflow, conf: dict[str, Any] | None = None
) -> tuple[Any, dict[str, tuple[str, int]]]:
    """The spec, as the tests' DAG-folder loader compiles it, run once at ``when``."""
    (Path(os.environ[SPECS_DIR_ENV]) / "s3.yaml").write_text(text)
    dag = load_module(REPOSITORY / "tests/dags/flexflow_reuse_test_dags.py").DAGS[DAG_ID]
    dag_run = dag.test(logical_date=when, run_conf=conf)
    return dag_run, task_states(airflow.db, DAG_ID, dag_run.run_id)


def run_prefix(dag_run: Any, campaign: str = "spring") -> str:
    return f"out/{campaign}/{dag_run.run_id.replace(':', '_')}/"


def manifest(bucket: S3Bucket, dag_run: Any) -> dict[str, Any]:
    return json.loads(bucket.get(run_prefix(dag_run) + MANIFEST_NAME))  # type: ignore[no-any-return]


def content_type(bucket: S3Bucket, key: str) -> str:
    return str(bucket.client.head_object(Bucket=bucket.name, Key=key)["ContentType"])


def key_of(bucket: S3Bucket, url: str) -> str:
    assert url.startswith(bucket.url()), f"{url} is a plain s3:// URL in the bucket (no connection id in it)"
    return url.removeprefix(bucket.url())


def assert_no_secret(bucket: S3Bucket, output: str, db: Path) -> None:
    """Neither the AWS secret nor the API key is in what the runs printed, in XCom or in any object of the bucket."""
    assert output, "the runs' output was captured"
    xcoms = [str(value) for (value,) in rows(db, "SELECT value FROM xcom WHERE dag_id = ?", DAG_ID)]
    assert xcoms, "the runs' XComs are there to search"
    for secret in (SECRET, SECRET_KEY):
        assert secret not in output
        assert not [value for value in xcoms if secret in value]
        for key in bucket.keys(prefix=""):
            assert secret.encode() not in bucket.get(key), key


# -- through Airflow -------------------------------------------------------------------------------------------


def test_a_run_publishes_to_s3_and_an_unchanged_rerun_reuses_what_it_published(
    s3_bucket: S3Bucket, specs: Path, emulated_airflow: EmulatedAirflow
) -> None:
    bucket, emulator = s3_bucket, emulated_airflow.emulator
    first, states = run(spec_text(bucket), FIRST, emulated_airflow)
    assert first.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS

    prefix = run_prefix(first)
    document = manifest(bucket, first)
    names = sorted(record["name"] for record in document["files"])
    assert names == ["card_seed-2.png", "card_seed-3.png", "hero.png"]
    run_files = [MANIFEST_NAME, CONTACT_SHEET_NAME]
    assert bucket.keys(prefix) == sorted(prefix + name for name in [*names, *run_files])
    sheet = bucket.get(prefix + CONTACT_SHEET_NAME).decode()
    assert sorted(re.findall(r'<img src="([^"]+)"', sheet)) == names, "the sheet shows the images beside it"
    assert content_type(bucket, prefix + CONTACT_SHEET_NAME) == "text/html; charset=utf-8", "a browser renders it"
    assert {content_type(bucket, prefix + name) for name in names} == {"image/png"}
    for record in document["files"]:
        data = bucket.get(key_of(bucket, record["file"]))
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decoded whole
            assert (image.format, image.size) == ("PNG", (record["width"], record["height"]))
    [finalized] = xcom(emulated_airflow.db, DAG_ID, first.run_id, "finalize")
    assert finalized["manifest"] == bucket.url(prefix + MANIFEST_NAME)
    assert finalized["contact_sheet"] == bucket.url(prefix + CONTACT_SHEET_NAME)
    assert finalized["conn_id"] == bucket.conn_id

    ledger = f"{LEDGER_DIR}/{DAG_ID}/{ledger_name(first.run_id)}"
    assert json.loads(bucket.get(f"out/{ledger}"))["totals"] == document["spend"]
    assert len(bucket.keys(f"out/{LEDGER_DIR}/{DAG_ID}/days/")) == 1, "the day's budget reservation"
    index = bucket.keys(f"out/{REUSE_DIR}/")
    assert len(index) == JOBS
    assert {record["request_sha256"] for record in document["files"]} == {
        key.removeprefix(f"out/{REUSE_DIR}/").removesuffix(".json") for key in index
    }

    # The next day, unchanged: every picture is found in the bucket, checked and copied; nothing is submitted.
    second, states = run(spec_text(bucket), SECOND, emulated_airflow)
    assert second.state == "success", states
    assert emulator.accounting()["submissions"] == JOBS, "the rerun submitted nothing"
    assert all(s == "skipped" for t, (s, _) in states.items() if ".submit" in t), states
    before = {(r["image"], r["variant"]): r for r in document["files"]}
    after = manifest(bucket, second)
    for record in after["files"]:
        earlier = before[(record["image"], record["variant"])]
        assert record["reused_from"] == earlier["file"] and record["sha256"] == earlier["sha256"]
        assert hashlib.sha256(bucket.get(key_of(bucket, record["file"]))).hexdigest() == record["sha256"]
    assert (after["spend"]["submitted"], after["spend"]["reused"], after["spend"]["credits"]) == (0, JOBS, 0)

    # Its day's cap is one run's cost: a changed prompt would pay again, and the reservation read back from
    # the bucket refuses it before it submits.
    refused, states = run(spec_text(bucket, hero="a new hero"), FIRST.replace(hour=9), emulated_airflow)
    assert refused.state == "failed" and states["prepare"] == ("failed", 1), states
    assert emulator.accounting()["submissions"] == JOBS

    assert not [key for key in bucket.keys(prefix="") if key.endswith(".partial")], "no temporary object, ever"
    assert_no_secret(bucket, emulated_airflow.output(), emulated_airflow.db)

    # flexflow report reads the ledger in the bucket: through the spec (its publish root and conn_id), or the
    # target's URL and --conn-id. The refused run submitted nothing, so recorded nothing.
    expected = {"runs": 2, "jobs": JOBS, "reused_jobs": JOBS, "credits": document["spend"]["credits"]}
    assert expected["credits"] == emulator.accounting()["credits_billed"]
    for argv in ([str(specs / "s3.yaml")], [bucket.url("out/"), "--conn-id", bucket.conn_id]):
        assert flexflow_main(["report", *argv, "--format", "json"]) == 0
        total = json.loads(emulated_airflow.capfd.readouterr().out)["total"]
        assert {key: total[key] for key in expected} == expected, argv


def test_a_storage_connection_that_does_not_exist_fails_the_run_before_it_pays(
    s3_bucket: S3Bucket, specs: Path, emulated_airflow: EmulatedAirflow
) -> None:
    """The Amazon filesystem would not fail on it: it would go on with the machine's own credentials or none."""
    text = spec_text(s3_bucket).replace("conn_id: flexflow_s3", "conn_id: flexflow_s3_typo")
    dag_run, states = run(text, FIRST, emulated_airflow)
    assert dag_run.state == "failed" and states["prepare"] == ("failed", 1), states
    assert emulated_airflow.emulator.accounting()["submissions"] == 0, "nothing was paid for"
    assert s3_bucket.keys(prefix="") == [], "nothing was written"
    said = "nothing was submitted: the storage connection 'flexflow_s3_typo' is not defined"
    assert said in emulated_airflow.output()


def test_a_partly_failed_run_leaves_its_stored_image_and_no_manifest_in_the_bucket(
    s3_bucket: S3Bucket, specs: Path, emulated_airflow: EmulatedAirflow
) -> None:
    emulated_airflow.emulator.faults.add({"count": 1, "fault": "fail"})
    dag_run, states = run(spec_text(s3_bucket), FIRST, emulated_airflow)
    assert dag_run.state == "failed" and states["finalize"] == ("failed", 1), states
    published = [t for t, (s, _) in states.items() if ".publish" in t and s == "success"]
    assert len(published) == JOBS - 1, states
    keys = s3_bucket.keys(run_prefix(dag_run))
    assert len(keys) == JOBS - 1 and all(key.endswith(".png") for key in keys), "no manifest, no contact sheet"
    output = emulated_airflow.output()
    assert "so no manifest was written and no Asset event sent" in output
    assert all(f"  {s3_bucket.url(key)}" in output for key in keys), "the stored files, by their URL"
    assert not [key for key in s3_bucket.keys(prefix="") if key.endswith(".partial")]
    assert_no_secret(s3_bucket, output, emulated_airflow.db)


def test_a_trigger_param_that_climbs_out_of_the_bucket_prefix_writes_nothing_and_submits_nothing(
    s3_bucket: S3Bucket, specs: Path, emulated_airflow: EmulatedAirflow
) -> None:
    dag_run, states = run(spec_text(s3_bucket), FIRST, emulated_airflow, conf={"campaign": "../../elsewhere"})
    assert dag_run.state == "failed" and states["prepare"] == ("failed", 1), states
    assert emulated_airflow.emulator.accounting()["submissions"] == 0
    assert s3_bucket.keys() == []


@pytest.mark.parametrize(
    "rendered",
    [
        "s3://bucket/out/../other",
        "s3://bucket/out/%2e%2e/other",
        "s3://bucket/out/a%2Fb",
        "s3://other-bucket/out/x",
        "s3://bucket/outside",
        "s3://bucket/out//x",
        "s3://bucket/out/x?versionId=1",
        "gs://bucket/out/x",
        "file:///bucket/out/x",
    ],
)
def test_an_s3_target_stays_under_its_bucket_prefix(rendered: str) -> None:
    with pytest.raises(PathRefused):
        checked_folder(rendered, "s3://bucket/out/")


def test_an_s3_target_under_its_prefix_is_accepted() -> None:
    assert checked_folder("s3://bucket/out/spring/run_1/", "s3://bucket/out/") == "s3://bucket/out/spring/run_1"
    # The bucket itself, as `flexflow validate` accepts it; a local target names a folder, never `/`.
    assert checked_folder("s3://bucket", "s3://bucket") == checked_folder("s3://bucket/", "s3://") == "s3://bucket"
    for root in ("file:///", "file://"):
        with pytest.raises(PathRefused):
            checked_folder("file:///", root)


# -- the store's helpers on a bucket -----------------------------------------------------------------------------


def s3_path(bucket: S3Bucket, key: str) -> ObjectStoragePath:
    return ObjectStoragePath(bucket.url(key), conn_id=bucket.conn_id)


def test_write_atomic_puts_the_object_whole_under_its_name_and_nothing_beside_it(s3_bucket: S3Bucket) -> None:
    target = s3_path(s3_bucket, "run/a.png")
    for data in (b"first" * 1000, b"second"):
        write_atomic(target, data)
        assert s3_bucket.get("run/a.png") == data
    assert s3_bucket.keys() == ["run/a.png"], "no temporary object, no folder marker"
    assert url_of(target) == s3_bucket.url("run/a.png") and s3_bucket.conn_id in str(target)


def test_a_write_that_fails_halfway_leaves_the_old_object_whole(s3_bucket: S3Bucket) -> None:
    """The connection breaks during an upload larger than s3fs's block (5 MB): nothing new becomes readable."""
    target = s3_path(s3_bucket, "run/big.png")
    old, new = b"old image", bytes(range(256)) * (12 * 2**20 // 256)
    write_atomic(target, old)
    fs = target.fs
    method_kwargs = fs._get_s3_method_kwargs
    calls: list[str] = []

    def breaking(method: Any, *args: Any, **kwargs: Any) -> Any:
        """Every request s3fs makes passes here: from the second part (or a whole PUT) on, the connection breaks."""
        calls.append(method.__name__)
        if method.__name__ == "put_object" or (method.__name__ == "upload_part" and calls.count("upload_part") > 1):
            raise ConnectionResetError("the connection broke mid-upload")
        return method_kwargs(method, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fs, "_get_s3_method_kwargs", breaking)
        with pytest.raises(OSError, match="mid-upload"):
            write_atomic(target, new)
    assert s3_bucket.get("run/big.png") == old
    assert s3_bucket.keys() == ["run/big.png"]
    uploads = s3_bucket.client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert uploads == [], "no multipart upload left open"


def test_write_atomic_does_not_create_a_missing_bucket(s3_bucket: S3Bucket) -> None:
    missing = ObjectStoragePath(f"s3://{s3_bucket.name}-missing/run/a.png", conn_id=s3_bucket.conn_id)
    with pytest.raises(FileNotFoundError):
        write_atomic(missing, b"data")
    names = [b["Name"] for b in s3_bucket.client.list_buckets()["Buckets"]]
    assert f"{s3_bucket.name}-missing" not in names


def test_a_fresh_listing_sees_objects_another_writer_put_since(s3_bucket: S3Bucket) -> None:
    """A worker process keeps its s3fs filesystem: what another worker wrote since its last listing counts."""
    folder = s3_path(s3_bucket, "days/2026-11-02")
    assert fresh_listing(folder) == []
    write_atomic(folder / "run1.json", b"{}")
    assert [p.name for p in fresh_listing(folder)] == ["run1.json"]
    s3_bucket.put("days/2026-11-02/run2.json", b"{}")  # another worker, not through this filesystem
    assert [p.name for p in fresh_listing(folder)] == ["run1.json", "run2.json"]


def test_promote_moves_an_object_server_side_and_a_rerun_after_a_crash_finishes(s3_bucket: S3Bucket) -> None:
    data = b"\x89PNG staged image" * 500
    staged, final = s3_path(s3_bucket, "staging/a.png"), s3_path(s3_bucket, "published/a.png")
    write_atomic(staged, data)
    promote(staged, final, sha(data))
    assert s3_bucket.keys() == ["published/a.png"] and s3_bucket.get("published/a.png") == data
    assert content_type(s3_bucket, "published/a.png") == "image/png", "the copy keeps what the upload set"
    promote(staged, final, sha(data))  # run again after it finished: done already
    assert s3_bucket.keys() == ["published/a.png"]
    with pytest.raises(FileNotFoundError, match="does not hold the approved file"):
        promote(staged, final, sha(b"another image"))  # an older file of that name is no proof of a promotion

    # A crash between the copy and the delete: both are there, the same bytes; the rerun deletes the source.
    s3_bucket.put("staging/a.png", data)
    promote(staged, final, sha(data))
    assert s3_bucket.keys() == ["published/a.png"] and s3_bucket.get("published/a.png") == data

    # A newer staged file replaces the published one.
    s3_bucket.put("staging/a.png", b"newer")
    promote(staged, final, sha(b"newer"))
    assert s3_bucket.keys() == ["published/a.png"] and s3_bucket.get("published/a.png") == b"newer"

    with pytest.raises(FileNotFoundError):
        promote(s3_path(s3_bucket, "staging/none.png"), s3_path(s3_bucket, "published/none.png"), sha(data))
    for elsewhere in (ObjectStoragePath("file:///tmp/a.png"), ObjectStoragePath(s3_bucket.url("published/a.png"))):
        with pytest.raises(ValueError, match="another store or connection"):
            promote(staged, elsewhere, sha(data))


def test_an_index_entry_in_the_bucket_is_reused_only_while_its_object_is_unchanged_and_under_the_root(
    s3_bucket: S3Bucket,
) -> None:
    root, digest, data = s3_bucket.url("out/"), "ab" * 32, b"\x89PNG published image"
    s3_bucket.put("out/run1/a.png", data)
    s3_bucket.put("elsewhere/a.png", data)
    record = {
        "file": s3_bucket.url("out/run1/a.png"),
        "name": "a.png",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "job_id": "job-1",
        "index": 1,
        "job_images": 1,
    }
    assert find_published(root, s3_bucket.conn_id, digest).files is None, "nothing indexed yet"
    record_published(root, s3_bucket.conn_id, digest, [record], "dag", "run1")
    assert s3_bucket.keys(f"out/{REUSE_DIR}/") == [f"out/{REUSE_DIR}/{digest}.json"]
    assert find_published(root, s3_bucket.conn_id, digest).files == [record]

    for planted in (
        s3_bucket.url("elsewhere/a.png"),
        s3_bucket.url("out/run1/../../elsewhere/a.png"),
        f"s3://{s3_bucket.conn_id}@{s3_bucket.name}/elsewhere/a.png",
        f"s3://{s3_bucket.name}-other/out/run1/a.png",
    ):
        record_published(root, s3_bucket.conn_id, digest, [{**record, "file": planted}], "dag", "run1")
        assert find_published(root, s3_bucket.conn_id, digest).files is None, planted

    record_published(root, s3_bucket.conn_id, digest, [record], "dag", "run1")
    s3_bucket.put("out/run1/a.png", data + b"\0")  # changed behind flexflow's back
    assert "changed" in find_published(root, s3_bucket.conn_id, digest).why
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="out/run1/a.png")
    assert "gone" in find_published(root, s3_bucket.conn_id, digest).why


def test_promote_renames_a_local_file_and_a_rerun_after_it_is_done(tmp_path: Path) -> None:
    staged = ObjectStoragePath(f"file://{tmp_path}/staging/a.png")
    final = ObjectStoragePath(f"file://{tmp_path}/published/a.png")
    write_atomic(staged, b"staged")
    promote(staged, final, sha(b"staged"))
    assert (tmp_path / "published/a.png").read_bytes() == b"staged"
    assert list((tmp_path / "staging").iterdir()) == []
    promote(staged, final, sha(b"staged"))  # the source is gone, the target holds the file: done
    with pytest.raises(FileNotFoundError, match="does not hold the approved file"):
        promote(staged, final, sha(b"another image"))
    write_atomic(staged, b"newer")
    promote(staged, final, sha(b"newer"))
    assert (tmp_path / "published/a.png").read_bytes() == b"newer"
    with pytest.raises(FileNotFoundError):
        promote(ObjectStoragePath(f"file://{tmp_path}/staging/none.png"), final.parent / "none.png", sha(b""))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_approved_review_promotes_the_staged_objects_and_leaves_none_behind(
    s3_bucket: S3Bucket, specs: Path, emulated_airflow: EmulatedAirflow
) -> None:
    """``review: required`` on S3: the images wait as objects under the run's staging prefix; approved, each is
    copied server-side into place and its staged copy deleted, then the manifest and sheet are written."""
    bucket = s3_bucket
    filename = '  filename: "{image}{variant}.{ext}"\n'
    text = (
        spec_text(bucket)
        .replace("budget: {credits_per_day: 15}\n", "")
        .replace(filename, filename + "  review: required\n")
    )
    assert "review: required" in text
    (Path(os.environ[SPECS_DIR_ENV]) / "s3.yaml").write_text(text)
    dag = load_module(REPOSITORY / "tests/dags/flexflow_reuse_test_dags.py").DAGS[DAG_ID]
    staged_then: dict[str, Any] = {}

    def seen(run_id: str) -> dict[str, Any]:
        prefix = f"out/spring/{run_id.replace(':', '_')}/"
        staged_then["keys"] = bucket.keys(prefix)
        return {}

    ready_to_answer_from_a_thread()
    responder = threading.Thread(target=lambda: answer_review(DAG_ID, "Approve", "ok", seen=seen), daemon=True)
    responder.start()
    dag_run = dag.test(logical_date=FIRST)
    responder.join(timeout=30)
    assert dag_run.state == "success", task_states(emulated_airflow.db, DAG_ID, dag_run.run_id)

    prefix = run_prefix(dag_run)
    names = ["card_seed-2.png", "card_seed-3.png", "hero.png"]
    staged = [key for key in staged_then["keys"] if f"/{STAGING_DIR}/" in key]
    assert sorted(key.rpartition("/")[2] for key in staged) == sorted([*names, MANIFEST_NAME, CONTACT_SHEET_NAME])
    assert len(staged) == len(staged_then["keys"]), "while it waited, nothing was outside the staging prefix"
    assert bucket.keys(prefix) == sorted(prefix + name for name in [*names, MANIFEST_NAME, CONTACT_SHEET_NAME]), (
        "promoted, and no staged object left behind"
    )
    document = manifest(bucket, dag_run)
    for record in document["files"]:
        assert key_of(bucket, record["file"]) == prefix + record["name"]
        assert hashlib.sha256(bucket.get(prefix + record["name"])).hexdigest() == record["sha256"]
    assert {content_type(bucket, prefix + name) for name in names} == {"image/png"}, "the copy keeps its type"
    assert emulated_airflow.emulator.accounting()["jobs_billed"] == JOBS
