"""Publishing: downloads are checked before anyone trusts them, files appear whole or not at all, and a
run that did not publish everything says so (no manifest, no Asset event)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.server
import io
import json
import random
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from flexflow.airflow.outcome import JobOutcome
from flexflow.client import USER_AGENT, FluxClient
from flexflow.client.results import MAX_REDIRECTS, DownloadError, download_image
from flexflow.contract import apply_defaults, output_size
from flexflow.emulator import EmulatorServer
from flexflow.publishing.ledger import LEDGER_DIR, ledger_name
from flexflow.publishing.operators import MANIFEST_NAME, PublishImageOperator
from flexflow.publishing.paths import (
    PathRefused,
    PlannedFile,
    checked_folder,
    checked_name,
    checked_param,
    literal_prefix,
    numbered,
    planned_target,
    substituted,
    unique_names,
)
from flexflow.publishing.records import published_jobs
from flexflow.publishing.reuse import REUSE_DIR
from flexflow.publishing.store import write_atomic
from flexflow.spec.cache import CACHE_DIR_ENV
from flexflow.spec.checks import RUN_FILES, template_params
from tests.airflow_helpers import load_module, rows, task_states, xcom
from tests.conftest import ROOT, fast_retry, flux_request

PUBLISH_ROOT = Path("/tmp/flexflow-test-publish")


def finished_job(client: FluxClient, key: str, **flux: Any) -> tuple[str, dict[str, Any]]:
    """Submit one job to the emulator; its first result URL and its full flux params."""
    flux = {"resolution": "0.5MP", "output_format": "png", "seed": 3, **flux}
    job = client.get_job(client.submit(flux_request(**flux), key))
    assert job.result_urls, job
    return job.result_urls[0], apply_defaults(flux)


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- paths: the rendered target and names stay inside the target (flexflow/publishing/paths.py) ----

TO = "file:///srv/assets/{{ params.campaign }}/{{ ds }}"


@pytest.mark.parametrize(
    ("rendered", "template"),
    [
        ("file:///srv/assets/spring/2026-12-07", TO),
        ("file:///srv/assets/spring/2026-12-07/", TO),
        ("s3://bucket/assets/spring", "s3://bucket/assets/{{ params.campaign }}"),
        ("gs://bucket-x/spring", "gs://{{ params.bucket }}/spring"),
        ("file:///srv/out-ä €", "file:///srv/out-{{ ds }}"),
    ],
)
def test_a_folder_under_its_root_is_accepted(rendered: str, template: str) -> None:
    assert checked_folder(rendered, literal_prefix(template)) == rendered.rstrip("/")


@pytest.mark.parametrize(
    ("rendered", "reason"),
    [
        ("file:///srv/assets/../../etc/x", "'..' path segment"),
        ("file:///srv/assets/spring/..", "'..' path segment"),
        ("file:///srv/assets/./x", "'.' or '..' path segment"),
        ("file:///srv/assets//x", "empty, '.' or '..' path segment"),
        ("file:///srv/assets/%2e%2e/x", "'..' path segment"),
        ("file:///srv/assets/a%2Fb", "path separator in a name"),
        ("file:///srv/assets/a%5Cb", "path separator in a name"),
        ("file:///srv/assets/a\\b", "has a backslash"),
        ("file:///srv/assets/a\x00b", "control character ('\\x00')"),
        ("file:///srv/assets/a\nb", "control character ('\\n')"),
        ("file:///srv/assets/a\u2028b", "control character"),
        ("file:///srv/assets/a%00b", "control character"),
        ("file:///etc/assets/x", "is not under 'file:///srv/assets/'"),
        ("file:///srv/assetsX/x", "is not under"),
        ("s3://srv/assets/x", "is not under"),
        ("file:///srv/assets/x?y", "query or fragment"),
        ("file:///srv/assets/x#y", "query or fragment"),
        ("file:///srv/assets/" + "x" * 256, "a name of 256 bytes is longer than 255 bytes"),
        ("file:///srv/assets/" + "é" * 128, "a name of 256 bytes"),
    ],
)
def test_a_folder_that_could_leave_its_root_is_refused(rendered: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=re.escape(reason)):
        checked_folder(rendered, literal_prefix(TO))


@pytest.mark.parametrize(
    ("rendered", "template", "reason"),
    [
        ("file://host/srv/x", "file://{{ params.dir }}", "is not a local path"),
        ("file:////srv/x", "file://{{ params.dir }}", "is not a local path"),
        ("file://relative/x", "file://{{ params.dir }}", "is not a local path"),
        ("s3:///x", "s3://{{ params.bucket }}", "(its bucket) has an empty"),
        ("s3://../x", "s3://{{ params.bucket }}", "(its bucket) has an empty, '.' or '..'"),
        ("gs://b/x", "s3://{{ params.bucket }}", "is not under 's3://'"),
    ],
)
def test_host_forms_and_scheme_changes_are_refused(rendered: str, template: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=re.escape(reason)):
        checked_folder(rendered, literal_prefix(template))


def test_the_root_is_the_literal_text_before_the_first_template() -> None:
    assert literal_prefix(TO) == "file:///srv/assets/"
    assert literal_prefix("s3://b/{% if x %}a{% endif %}") == "s3://b/"
    assert literal_prefix("file:///srv/{# note #}x") == "file:///srv/"
    assert literal_prefix("file:///srv/fixed") == "file:///srv/fixed"


@pytest.mark.parametrize("name", ["hero.png", "story_seed-1.webp", "ünïcode €.jpg", "a" * 251 + ".png", "x..y.png"])
def test_a_plain_name_is_one_segment(name: str) -> None:
    assert checked_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/b.png", "path separator"),
        ("a\\b.png", "backslash"),
        ("%2e%2e", "'..'"),
        ("a\x00.png", "control character"),
        ("a\n.png", "control character"),
        ("a\r.png", "control character"),
        ("a\x1b[31m.png", "control character"),
        ("a" * 252 + ".png", "a name of 256 bytes is longer than 255 bytes"),
        ("manifest.json", "is reserved: the run writes that file itself"),
    ],
)
def test_a_name_that_is_not_one_plain_segment_is_refused(name: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=re.escape(reason)):
        checked_name(name, reserved=[MANIFEST_NAME])


def test_placeholders_are_replaced_literally_once() -> None:
    values = {"image": "hero", "variant": "_seed-1", "ext": "png"}
    assert substituted("{image}{variant}.{ext}", values) == "hero_seed-1.png"
    assert substituted("{image}-{job_id}.{ext}", values) == "hero-{job_id}.png", "an unknown value stays"
    assert substituted("{image!r}{image:>9}{image.__class__}{image[0]}", values) == (
        "{image!r}{image:>9}{image.__class__}{image[0]}"
    ), "no format specs, conversions or attribute access"
    assert substituted("{image}", {"image": "{ext}", "ext": "png"}) == "{ext}", "a value is not substituted again"


def test_two_jobs_never_share_a_name() -> None:
    unique_names(["a.png", "b.png", "{job_id}.png", "{job_id}.png"])
    with pytest.raises(PathRefused, match=re.escape("two images of the run would be written to 'a.png'")):
        unique_names(["a.png", "b.png", "a.png"])


def test_a_jobs_several_images_are_numbered_before_the_extension() -> None:
    assert [numbered("poster.png", n) for n in (1, 2)] == ["poster-1.png", "poster-2.png"]
    assert numbered("a.b.webp", 3) == "a.b-3.webp", "the number goes before the last extension only"
    assert numbered("noext", 2) == "noext-2"
    assert numbered(".hidden", 2) == ".hidden-2"


@pytest.mark.parametrize(
    "names",
    [
        ["poster.png", "poster-1.png"],
        ["poster_seed.png", "poster_seed-1.png", "poster_seed-2.png"],
        ["noext", "noext-12"],
    ],
)
def test_a_name_that_another_jobs_numbered_images_would_take_is_refused(names: list[str]) -> None:
    with pytest.raises(PathRefused, match=f"the file name {names[1]!r} is what the job writing {names[0]!r} names"):
        unique_names(names)


def test_names_that_only_look_numbered_are_accepted() -> None:
    unique_names(["poster-1.png", "poster-2.png"])  # no job writes "poster.png"
    unique_names(["poster.png", "poster-0.png", "poster-01.png", "poster-x.png", "poster-1.jpg.png"])
    unique_names(["{job_id}.png", "{job_id}-1.png"])  # two jobs' ids never make one name


def test_an_image_and_a_variant_that_could_collide_are_refused_before_any_submit() -> None:
    """Image ``poster_seed`` would number its images ``poster_seed-1.png``: the file of ``poster``'s seed 1."""
    files = [PlannedFile("poster", "_seed-1", "png"), PlannedFile("poster_seed", "", "png")]
    with pytest.raises(PathRefused, match=re.escape("'poster_seed-1.png' is what the job writing 'poster_seed.png'")):
        planned_target("file:///srv/x", "file:///srv/", "{image}{variant}.{ext}", files, {})


@pytest.mark.parametrize("value", ["../../etc", "/abs", "a/b", "..", "a\x00b", "a\nb", "a\\b", "x..y"])
def test_a_param_value_with_path_syntax_is_refused(value: str) -> None:
    with pytest.raises(PathRefused, match="param 'campaign'"):
        checked_param("campaign", value)


@pytest.mark.parametrize("value", ["Spring 2027", "spring-2027", 2027, 2.5, "été", "a.b"])
def test_a_plain_param_value_is_accepted(value: object) -> None:
    checked_param("campaign", value)


def test_the_params_a_template_reads_are_found() -> None:
    assert template_params(TO, "{image}{{ params['suffix'] }}.{ext}") == {"campaign", "suffix"}
    assert template_params("file:///srv/{{ ds }}") == frozenset()
    assert template_params("file:///srv/{{ params | tojson }}") is None, "params read whole: every param counts"
    assert template_params("file:///srv/{{ params[name] }}") is None
    assert template_params("file:///srv/{% for p in params %}{{ p }}{% endfor %}") is None


FILES = [
    PlannedFile("hero", "", "png"),
    PlannedFile("story", "_seed-1", "webp"),
    PlannedFile("story", "_seed-2", "webp"),
]


def test_the_run_target_is_rendered_once_with_every_name() -> None:
    target = planned_target(
        "file:///srv/assets/x/", "file:///srv/assets/", "{image}{variant}-{job_id}.{ext}", FILES, {}
    )
    assert target == {
        "folder": "file:///srv/assets/x",
        "names": {
            "hero": {"": "hero-{job_id}.png"},
            "story": {"_seed-1": "story_seed-1-{job_id}.webp", "_seed-2": "story_seed-2-{job_id}.webp"},
        },
    }, "{job_id} stays for publish, which knows the job"


@pytest.mark.parametrize(
    ("pattern", "params", "reason"),
    [
        ("{image}.{ext}", {}, "two images of the run would be written to 'story.webp'"),
        ("manifest.json", {}, "'manifest.json' is reserved"),
        ("x" * 215 + "{job_id}.{ext}", {}, "a name of 256 bytes"),
        ("{image}{variant}.{ext}", {"campaign": "../x"}, "param 'campaign' is '../x'"),
    ],
)
def test_a_bad_run_target_is_refused_before_anything_is_submitted(
    pattern: str, params: dict[str, Any], reason: str
) -> None:
    with pytest.raises(PathRefused, match=re.escape(reason)):
        planned_target("file:///srv/assets/x", "file:///srv/assets/", pattern, FILES, params)


def test_a_final_name_is_checked_again_with_the_job_id() -> None:
    name = PublishImageOperator._name
    assert name("hero-{job_id}.png", "0b6c", None) == "hero-0b6c.png"
    assert name("hero-{job_id}.png", "0b6c", 2) == "hero-0b6c-2.png", "a job's several images are numbered"
    with pytest.raises(AirflowFailException, match=re.escape("(the job id the API returned); nothing was written")):
        name("hero-{job_id}.png", "../../etc/x", None)


# -- download_image over the emulator ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_a_good_result_downloads_and_is_checked(client: FluxClient, fmt: str) -> None:
    url, flux = finished_job(client, f"good-{fmt}", output_format=fmt)
    image = download_image(url, expected_format=fmt, expected_size=output_size(flux))
    assert (image.width, image.height) == output_size(flux)
    assert image.format == fmt
    assert image.sha256 == hashlib.sha256(image.data).hexdigest()
    assert image.size_bytes == len(image.data) > 0


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_an_html_page_instead_of_the_image_is_rejected(client: FluxClient, emulator: EmulatorServer, fmt: str) -> None:
    emulator.faults.add({"fault": "wrong_content_type", "count": 1})
    url, flux = finished_job(client, f"html-{fmt}", output_format=fmt)
    with pytest.raises(DownloadError, match=rf"is not a {fmt} image .*such as an error page") as caught:
        download_image(url, expected_format=fmt, expected_size=output_size(flux))
    assert "<html>" in str(caught.value), "the message shows what was served instead"


@pytest.mark.parametrize("fault", ["expired_result", "missing_result"])
def test_a_result_that_is_gone_is_a_404_that_says_so(client: FluxClient, emulator: EmulatorServer, fault: str) -> None:
    emulator.faults.add({"fault": fault, "count": 1})
    url, flux = finished_job(client, fault)
    with pytest.raises(DownloadError, match=r"answered 404 \(the result has expired or was purged\)"):
        download_image(url, expected_format="png", expected_size=output_size(flux))


def test_a_result_of_another_pixel_size_is_rejected(client: FluxClient) -> None:
    url, flux = finished_job(client, "size")
    width, height = output_size(flux)
    with pytest.raises(DownloadError, match=rf"is {width}x{height}; expected {width + 1}x{height}"):
        download_image(url, expected_format="png", expected_size=(width + 1, height))


def test_a_result_of_another_format_is_rejected(client: FluxClient) -> None:
    url, _ = finished_job(client, "format", output_format="png")
    with pytest.raises(DownloadError, match="is not a jpg image"):
        download_image(url, expected_format="jpg")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "s3://bucket/a.png", "/tmp/a.png", "HTTP//x"]
)
def test_only_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(DownloadError, match="is not http\\(s\\); refusing to fetch it"):
        download_image(url, expected_format="png")


def test_a_body_over_the_byte_limit_is_refused(client: FluxClient) -> None:
    url, flux = finished_job(client, "big")
    size = download_image(url, expected_format="png").size_bytes
    assert download_image(url, expected_format="png", max_bytes=size).size_bytes == size, "the limit is inclusive"
    with pytest.raises(DownloadError, match=f"larger than the {size - 1:,}-byte limit"):
        download_image(url, expected_format="png", expected_size=output_size(flux), max_bytes=size - 1)
    with pytest.raises(DownloadError, match="larger than the 100-byte limit"):
        download_image(url, expected_format="png", max_bytes=100)


@pytest.mark.parametrize("fault", ["http_500", "http_502", "http_503", "http_504", "drop", "rate_limit"])
def test_transient_faults_are_retried_inside_one_download(
    client: FluxClient, emulator: EmulatorServer, fault: str
) -> None:
    url, flux = finished_job(client, fault)
    emulator.faults.add({"fault": fault, "count": 2, "route": "file", "retry_after": 0.5})
    sleeps: list[float] = []
    image = download_image(
        url, expected_format="png", expected_size=output_size(flux), retry=fast_retry(), sleep=sleeps.append
    )
    assert image.format == "png"
    assert len(sleeps) == 2, "two faults, two waits, one download"
    if fault == "rate_limit":
        assert sleeps == [0.5, 0.5], "a 429 waits exactly its Retry-After"


@pytest.mark.parametrize("fault", ["http_408", "cut_transfer"])
def test_a_timeout_or_a_cut_transfer_from_the_emulator_is_asked_again(
    client: FluxClient, emulator: EmulatorServer, fault: str
) -> None:
    url, flux = finished_job(client, fault)
    whole = download_image(url, expected_format="png").data
    emulator.faults.add({"fault": fault, "count": 2, "route": "file"})
    sleeps: list[float] = []
    image = download_image(
        url, expected_format="png", expected_size=output_size(flux), retry=fast_retry(), sleep=sleeps.append
    )
    assert image.data == whole, "the whole file, never the half that arrived"
    assert len(sleeps) == 2


def test_a_rate_limit_without_retry_after_from_the_emulator_waits_the_default(
    client: FluxClient, emulator: EmulatorServer
) -> None:
    url, _ = finished_job(client, "429-no-retry-after")
    emulator.faults.add({"fault": "rate_limit", "count": 1, "route": "file", "retry_after": None})
    sleeps: list[float] = []
    download_image(url, expected_format="png", retry=fast_retry(rate_limit_wait=0.3), sleep=sleeps.append)
    [wait] = sleeps
    assert 0.3 <= wait <= 0.36


@pytest.mark.parametrize("fault", ["truncated_image", "corrupt_image"])
def test_a_result_broken_at_its_source_is_permanent_and_not_asked_again(
    client: FluxClient, emulator: EmulatorServer, fault: str
) -> None:
    emulator.faults.add({"fault": fault, "count": 1})
    url, flux = finished_job(client, fault)
    with pytest.raises(DownloadError, match="is not a readable png image") as caught:
        download_image(url, expected_format="png", expected_size=output_size(flux), retry=fast_retry(), sleep=_never)
    assert caught.value.permanent, "the whole file arrived (its Content-Length): only a new job can help"


def test_each_of_several_results_downloads_whole_and_distinct(client: FluxClient, emulator: EmulatorServer) -> None:
    emulator.faults.add({"fault": "several_images", "count": 1, "images": 3})
    flux = {"resolution": "0.5MP", "output_format": "png", "seed": 3}
    job = client.get_job(client.submit(flux_request(**flux), "several"))
    assert len(job.result_urls) == 3
    images = [
        download_image(url, expected_format="png", expected_size=output_size(apply_defaults(flux)))
        for url in job.result_urls
    ]
    assert len({image.sha256 for image in images}) == 3


def test_downloads_from_the_emulator_carry_flexflows_user_agent(client: FluxClient, emulator: EmulatorServer) -> None:
    url, _ = finished_job(client, "ua")
    download_image(url, expected_format="png")
    [received] = [r for r in emulator.state.received_requests() if r["path"].startswith("/_files/")]
    headers = {name.lower(): value for name, value in received["headers"]}
    assert headers["user-agent"] == USER_AGENT


def test_a_slow_download_times_out_and_is_retried(client: FluxClient, emulator: EmulatorServer) -> None:
    url, _ = finished_job(client, "slow")
    emulator.faults.add({"fault": "slow", "count": 1, "route": "file", "delay": 2.0})
    sleeps: list[float] = []
    with httpx2.Client(timeout=0.5) as http:
        image = download_image(url, expected_format="png", client=http, retry=fast_retry(), sleep=sleeps.append)
    assert image.format == "png"
    assert len(sleeps) == 1


def test_transient_faults_that_outlast_the_retries_fail_the_try_not_the_job(
    client: FluxClient, emulator: EmulatorServer
) -> None:
    url, _ = finished_job(client, "503-burst")
    emulator.faults.add({"fault": "http_503", "count": 3, "route": "file"})
    with pytest.raises(DownloadError, match=r"answered 503 \(after 3 attempts\)$") as caught:
        download_image(url, expected_format="png", retry=fast_retry(max_attempts=3), sleep=lambda _: None)
    assert not caught.value.permanent, "the result may still be there: the task's next try downloads it again"
    assert download_image(url, expected_format="png").format == "png", "the next try works"


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_result_that_is_gone_is_not_asked_for_again(status: int) -> None:
    with (
        scripted_server([(status, {"Content-Type": "text/plain"}, b"gone")]) as (url, seen),
        pytest.raises(DownloadError, match=rf"answered {status} \(the result has expired or was purged\)$") as caught,
    ):
        download_image(url, expected_format="png", retry=fast_retry(), sleep=_never)
    assert caught.value.permanent
    assert len(seen) == 1


@pytest.mark.parametrize("status", [408, 425, 500])
def test_a_request_timeout_or_server_error_is_asked_again(status: int) -> None:
    with scripted_server([(status, {}, b""), (200, {"Content-Type": "image/png"}, png_bytes())]) as (url, seen):
        image = download_image(url, expected_format="png", retry=fast_retry(), sleep=lambda _: None)
    assert image.width == 8
    assert len(seen) == 2


def test_a_429_without_retry_after_waits_the_policys_default() -> None:
    with scripted_server([(429, {}, b""), (200, {"Content-Type": "image/png"}, png_bytes())]) as (url, _):
        sleeps: list[float] = []
        download_image(url, expected_format="png", retry=fast_retry(rate_limit_wait=0.2), sleep=sleeps.append)
    [wait] = sleeps
    assert 0.2 <= wait <= 0.25, "the default wait, stretched a little, never the backoff's few milliseconds"


def test_downloads_say_who_is_asking_and_never_send_the_key(client: FluxClient) -> None:
    with scripted_server([(200, {"Content-Type": "image/png"}, png_bytes())]) as (url, seen):
        download_image(url, expected_format="png")
    [headers] = seen
    assert headers["user-agent"] == USER_AGENT
    assert not any("key" in name.lower() or name.lower() == "authorization" for name in headers)


# -- nothing partial or corrupt is returned (a loopback server scripted per request) ----------------


def test_a_cut_transfer_is_asked_again_and_never_returned() -> None:
    """The server announces the whole length and closes the connection halfway: transient, never kept."""
    whole = png_bytes((64, 64))
    cut = (200, {"Content-Type": "image/png", "Content-Length": str(len(whole))}, whole[: len(whole) // 2])
    ok = (200, {"Content-Type": "image/png"}, whole)
    with scripted_server([cut, cut, ok]) as (url, seen):
        image = download_image(
            url, expected_format="png", expected_size=(64, 64), retry=fast_retry(), sleep=lambda _: None
        )
    assert image.data == whole
    assert len(seen) == 3


def test_a_transfer_cut_on_every_attempt_fails_the_try_as_transient() -> None:
    whole = png_bytes((64, 64))
    cut = (200, {"Content-Type": "image/png", "Content-Length": str(len(whole))}, whole[:100])
    with scripted_server([cut] * 3) as (url, _), pytest.raises(DownloadError, match="after 3 attempts") as caught:
        download_image(url, expected_format="png", retry=fast_retry(max_attempts=3), sleep=lambda _: None)
    assert not caught.value.permanent


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def corrupted(data: bytes) -> bytes:
    """Same length, headers intact, the compressed pixel data garbled."""
    middle = len(data) // 2
    return data[:middle] + bytes(64) + data[middle + 64 :]


def noisy_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """A png whose pixel data is large and incompressible enough that damage to it is in the pixels."""
    image = Image.frombytes("RGB", size, random.Random(11).randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(12).randbytes(size[0] * size[1] * 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "body", "reason"),
    [
        ("png", truncated(noisy_png()), "truncated"),
        ("png", corrupted(noisy_png()), "corrupt"),
        ("png", noisy_png()[:-12], "no IEND"),
        ("jpg", truncated(jpeg_bytes()), "truncated"),
        ("jpg", jpeg_bytes()[:-2], "no end-of-image marker"),
    ],
    ids=["png-truncated", "png-corrupt", "png-no-end", "jpg-truncated", "jpg-no-end"],
)
def test_an_image_broken_at_its_source_is_refused_at_once_when_it_arrived_whole(
    fmt: str, body: bytes, reason: str
) -> None:
    """The announced length arrived, so the file itself is broken: permanent, not asked for again."""
    served = (200, {"Content-Type": f"image/{'jpeg' if fmt == 'jpg' else fmt}", "Content-Length": str(len(body))}, body)
    with (
        scripted_server([served]) as (url, seen),
        pytest.raises(DownloadError, match=f"is not a readable {fmt} image") as caught,
    ):
        download_image(url, expected_format=fmt, expected_size=(64, 64), retry=fast_retry(), sleep=_never)
    assert caught.value.permanent, reason
    assert len(seen) == 1


def test_an_undecodable_image_without_a_length_is_asked_once_more_then_refused() -> None:
    """Without Content-Length the cut cannot be told from a broken file; the same bytes twice are the file."""
    body = truncated(noisy_png())
    served = (200, {"Content-Type": "image/png"}, body)
    with (
        scripted_server([served, served]) as (url, seen),
        pytest.raises(DownloadError, match="after 2 attempts") as caught,
    ):
        download_image(url, expected_format="png", retry=fast_retry(), sleep=lambda _: None)
    assert caught.value.permanent
    assert len(seen) == 2


def test_an_image_served_as_html_is_not_an_image() -> None:
    served = [(200, {"Content-Type": "text/html"}, png_bytes())]
    with scripted_server(served) as (url, _), pytest.raises(DownloadError, match=r"served as 'text/html'") as caught:
        download_image(url, expected_format="png", sleep=_never)
    assert caught.value.permanent
    assert "is not a png image" in str(caught.value)


def test_without_an_expected_format_any_flux_format_is_accepted_and_checked() -> None:
    with scripted_server([(200, {}, jpeg_bytes()), (200, {}, b"<html>")]) as (url, _):
        assert download_image(url, expected_format=None).format == "jpg"
        with pytest.raises(DownloadError, match="is not a png, jpg or webp image"):
            download_image(url, expected_format=None, sleep=_never)


def _never(seconds: float) -> None:
    raise AssertionError(f"a permanent failure was retried (a wait of {seconds}s was asked)")


Scripted = tuple[int, dict[str, str], bytes]


@contextmanager
def scripted_server(responses: list[Scripted]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server answering each GET with the next scripted response, sent as written: a
    Content-Length longer than the body is sent as is and the connection closed (a cut transfer).
    Yields its URL and the headers of each request it received."""
    script = list(responses)
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({name.lower(): value for name, value in self.headers.items()})
            status, headers, body = script.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Connection", "close")  # the body ends when the connection does
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/result/0.png", seen
    finally:
        server.shutdown()
        server.server_close()


# -- redirects (the emulator never redirects) ----------------------------------------------------


def redirecting_client(hops_before_image: int | None, seen: list[str]) -> httpx2.Client:
    """A client whose server redirects ``hops_before_image`` times then serves a png (None: forever)."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        hop = int(request.url.params.get("hop", "0"))
        if hops_before_image is None or hop < hops_before_image:
            return httpx2.Response(302, headers={"Location": f"https://cdn.example.com/r.png?hop={hop + 1}"})
        return httpx2.Response(200, content=png_bytes(), headers={"Content-Type": "image/png"})

    return httpx2.Client(transport=httpx2.MockTransport(handler), follow_redirects=True, max_redirects=MAX_REDIRECTS)


def test_redirects_are_followed_up_to_the_limit() -> None:
    seen: list[str] = []
    with redirecting_client(MAX_REDIRECTS, seen) as http:
        image = download_image(
            "https://cdn.example.com/r.png", expected_format="png", expected_size=(8, 8), client=http
        )
    assert image.width == 8
    assert len(seen) == MAX_REDIRECTS + 1


def test_too_many_redirects_are_refused() -> None:
    seen: list[str] = []
    with redirecting_client(None, seen) as http, pytest.raises(DownloadError, match="redirected more than 3 times"):
        download_image("https://cdn.example.com/r.png", expected_format="png", client=http)
    assert len(seen) == MAX_REDIRECTS + 1, "it stopped after the limit, it did not loop"


class _RedirectForever(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits += 1  # type: ignore[attr-defined]
        self.send_response(302)
        self.send_header("Location", f"/again/{self.server.hits}")  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_default_client_refuses_a_redirect_loop() -> None:
    """Without a client given, download_image's own client (the production path) caps redirects."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RedirectForever)
    server.hits = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError, match=f"redirected more than {MAX_REDIRECTS} times"):
            download_image(f"http://127.0.0.1:{server.server_port}/start.png", expected_format="png")
    finally:
        server.shutdown()
        server.server_close()
    assert server.hits == MAX_REDIRECTS + 1  # type: ignore[attr-defined]


# -- write_atomic ----------------------------------------------------------------------------------


def storage(path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{path}")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_write_atomic_creates_folders_and_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "image.png"
    write_atomic(storage(target), b"one")
    assert target.read_bytes() == b"one"
    assert leftovers(target.parent) == []


def test_overwriting_keeps_one_file_with_the_new_content(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    for data in (b"first", b"second, longer", b"3"):
        write_atomic(storage(target), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]
    assert target.read_bytes() == b"3"


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "image.png"
    write_atomic(storage(target), b"old and whole")
    real_write_bytes = ObjectStoragePath.write_bytes

    def half_then_crash(self: ObjectStoragePath, data: bytes) -> int:
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ObjectStoragePath, "write_bytes", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(storage(target), b"new content that never lands")
    assert target.read_bytes() == b"old and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"], "the half-written temporary is gone"
    with pytest.raises(OSError, match="disk full"):
        write_atomic(storage(tmp_path / "fresh.png"), b"never")
    assert not (tmp_path / "fresh.png").exists(), "a target never exists half-written"


def test_a_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "big.png"
    payloads = [bytes([n]) * (5 * 1024 * 1024) for n in (1, 2)]
    seen: dict[str, int] = {"absent": 0, "whole": 0}
    bad: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                seen["absent"] += 1
                continue
            if data in payloads:
                seen["whole"] += 1
            else:
                bad.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    writes = 0
    try:
        # At least 12 rewrites, and on until the reader has read the file often enough (bounded).
        while writes < 12 or (seen["whole"] < 20 and writes < 400):
            write_atomic(storage(target), payloads[writes % 2])
            writes += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert bad == [], f"the reader saw partial content of these sizes: {bad[:5]}"
    assert seen["whole"] > 0, "the reader did read the file while it was rewritten"
    assert target.read_bytes() == payloads[(writes - 1) % 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


# -- dag.test() of compiled specs (tests/dags/flexflow_publish_test_dags.py, tests/specs/publish) -


@pytest.fixture
def publish_dags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "spec-cache"))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    return load_module(ROOT / "tests/dags/flexflow_publish_test_dags.py").DAGS


@pytest.fixture
def run_folders() -> Iterator[list[Path]]:
    """Folders the test's runs published into; removed afterwards."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def run_folder(kind: str, run_id: str) -> Path:
    return PUBLISH_ROOT / kind / run_id.replace(":", "_")


@dataclass(frozen=True)
class FaultedRun:
    dag_id: str
    dag_run: Any
    folder: Path
    states: dict[str, tuple[str, int]]
    output: str


@pytest.fixture
def faulted_run(
    publish_dags: dict[str, Any],
    emulator: EmulatorServer,
    apiframe_connection: str,
    airflow_db: Path,
    run_folders: list[Path],
    capfd: pytest.CaptureFixture[str],
) -> Callable[..., FaultedRun]:
    """Run a spec of tests/specs/publish with one fault injected; what the run left behind."""

    def run(name: str, **fault: Any) -> FaultedRun:
        dag_id = f"flexflow_test_publish_{name}"
        emulator.faults.add({"count": 1, **fault})
        dag_run = publish_dags[dag_id].test()
        folder = run_folder(name, dag_run.run_id)
        run_folders.extend([folder, PUBLISH_ROOT / name / LEDGER_DIR])
        states = task_states(airflow_db, dag_id, dag_run.run_id)
        return FaultedRun(dag_id, dag_run, folder, states, "".join(capfd.readouterr()))

    return run


def asset_events(db: Path, dag_id: str, run_id: str) -> list[tuple[Any, ...]]:
    return rows(db, "SELECT id, extra FROM asset_event WHERE source_dag_id = ? AND source_run_id = ?", dag_id, run_id)


def test_a_partly_failed_run_writes_no_manifest_and_no_asset_event(
    faulted_run: Callable[..., FaultedRun], publish_dags: dict[str, Any], airflow_db: Path
) -> None:
    run = faulted_run("partly_failed", fault="fail")
    dag_id, dag_run, folder, states, output = run.dag_id, run.dag_run, run.folder, run.states, run.output
    dag = publish_dags[dag_id]

    assert dag_run.state == "failed", states
    assert states["finalize"] == ("failed", 1), "finalize ran (all_done) and failed"
    publishes = {image: states[f"{image}.publish"][0] for image in ("first", "second")}
    assert sorted(publishes.values()) == ["success", "upstream_failed"], states
    [stored] = [image for image, state in publishes.items() if state == "success"]
    [failed] = [image for image, state in publishes.items() if state != "success"]
    assert states[f"{failed}.wait"] == ("failed", 1), "a FAILED job is not waited for again"

    assert sorted(p.name for p in folder.iterdir()) == [f"{stored}.png"], "only the finished image, no manifest"
    assert not (folder / MANIFEST_NAME).exists()
    assert "1 of 2 jobs did not publish all their images, so no manifest was written and no Asset event sent" in output
    assert f"Files this run did store:\n  file://{folder / f'{stored}.png'}" in output
    assert asset_events(airflow_db, dag_id, dag_run.run_id) == [], "no Asset event for a half-published run"

    # A retry of the publish task that did store its image rewrites the same name, nothing beside it.
    before = (folder / f"{stored}.png").read_bytes()
    [job] = xcom(airflow_db, dag_id, dag_run.run_id, f"{stored}.wait")
    [request] = xcom(airflow_db, dag_id, dag_run.run_id, f"{stored}.submit", key="request")
    [records] = xcom(airflow_db, dag_id, dag_run.run_id, f"{stored}.publish")
    [target] = xcom(airflow_db, dag_id, dag_run.run_id, "prepare")
    assert target["folder"] == f"file://{folder}", "the folder prepare rendered once, for publish and finalize"
    retry = copy.copy(dag.get_task(f"{stored}.publish"))
    retry.job, retry.request, retry.target = job, request, target
    again = retry.execute({"run_id": dag_run.run_id})
    assert [r["name"] for r in again] == [r["name"] for r in records] == [f"{stored}.png"]
    assert again[0]["sha256"] == records[0]["sha256"]
    assert sorted(p.name for p in folder.iterdir()) == [f"{stored}.png"], "no duplicate, no partial file"
    assert (folder / f"{stored}.png").read_bytes() == before


def test_a_failed_variant_does_not_keep_its_siblings_from_being_published(
    faulted_run: Callable[..., FaultedRun], emulator: EmulatorServer, airflow_db: Path
) -> None:
    run = faulted_run("variant_failed", fault="fail")
    dag_id, dag_run, folder, states, output = run.dag_id, run.dag_run, run.folder, run.states, run.output

    assert dag_run.state == "failed", states
    waits = {index: states[f"poster.wait[{index}]"][0] for index in range(3)}
    assert sorted(waits.values()) == ["failed", "success", "success"], states
    [failed] = [index for index, state in waits.items() if state == "failed"]
    for index in range(3):
        assert states[f"poster.publish[{index}]"][0] == ("upstream_failed" if index == failed else "success"), states
    assert states["finalize"] == ("failed", 1)

    published = {f"poster_seed-{seed}.png" for seed in (1, 2, 3)} - {f"poster_seed-{failed + 1}.png"}
    assert {p.name for p in folder.iterdir()} == published, "both finished variants stored, no manifest"
    assert "1 of 3 jobs did not publish all their images, so no manifest was written and no Asset event sent" in output
    assert asset_events(airflow_db, dag_id, dag_run.run_id) == []
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == 3
    assert accounting["jobs_billed"] == 2, "the FAILED job is not billed; both published ones are"


@pytest.mark.parametrize(
    ("faults", "tries"),
    [(1, [1, 1]), (5, [1, 2])],
    ids=["retried-inside-the-try", "outlasting-the-try"],
)
def test_a_publish_retry_after_a_failed_download_stores_each_file_once(
    faulted_run: Callable[..., FaultedRun], emulator: EmulatorServer, airflow_db: Path, faults: int, tries: list[int]
) -> None:
    """One 503 is ridden out inside the try; five (every attempt of one download) fail the try, and the task's
    retry downloads the same result again: no new job, no second file either way."""
    run = faulted_run("retried", fault="http_503", route="file", count=faults)
    dag_id, dag_run, folder, states = run.dag_id, run.dag_run, run.folder, run.states

    assert dag_run.state == "success", states
    assert sorted(states[f"tile.publish[{i}]"] for i in (0, 1)) == [("success", n) for n in tries]
    names = ["tile_seed-1.png", "tile_seed-2.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, *RUN_FILES])
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert sorted(f["name"] for f in manifest["files"]) == names, "each file once in the manifest"
    for entry in manifest["files"]:
        assert hashlib.sha256((folder / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert len(asset_events(airflow_db, dag_id, dag_run.run_id)) == 1
    accounting = emulator.accounting()
    assert accounting["jobs_billed"] == 2, "the publish retry did not submit anything again"
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 0}


def test_a_result_that_is_not_an_image_fails_publish_and_writes_no_manifest(
    faulted_run: Callable[..., FaultedRun], airflow_db: Path
) -> None:
    run = faulted_run("wrong_content", fault="wrong_content_type")
    dag_id, dag_run, folder, states, output = run.dag_id, run.dag_run, run.folder, run.states, run.output

    assert dag_run.state == "failed", states
    assert states["only.wait"][0] == "success"
    assert states["only.publish"] == ("failed", 1)
    assert states["finalize"] == ("failed", 1)
    assert "is not a png image" in output
    assert "1 of 1 jobs did not publish all their images" in output
    assert "Files this run did store:\n  (none)" in output
    assert not (folder / MANIFEST_NAME).exists()
    assert not folder.exists() or list(folder.iterdir()) == [], "nothing was stored"
    assert asset_events(airflow_db, dag_id, dag_run.run_id) == []


def test_a_job_with_several_images_publishes_each_counted_per_job(
    faulted_run: Callable[..., FaultedRun], airflow_db: Path
) -> None:
    run = faulted_run("several_images", fault="several_images", images=3)
    dag_id, dag_run, folder, states = run.dag_id, run.dag_run, run.folder, run.states

    assert dag_run.state == "success", states
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["jobs"] == 2
    by_job: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest["files"]:
        by_job.setdefault(entry["job_id"], []).append(entry)
    [several] = [entries for entries in by_job.values() if len(entries) == 3]
    [single] = [entries for entries in by_job.values() if len(entries) == 1]
    image = several[0]["image"]
    assert [(e["name"], e["index"], e["job_images"]) for e in several] == [
        (f"{image}-{n}.png", n, 3) for n in (1, 2, 3)
    ], "numbered before the extension, counted among the job's own images"
    assert [(e["index"], e["job_images"]) for e in single] == [(1, 1)]
    assert len({e["sha256"] for e in several}) == 3, "three distinct images, none stored twice"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([*(e["name"] for e in manifest["files"]), *RUN_FILES]), "no partial, no extra file"
    [(_, extra)] = asset_events(airflow_db, dag_id, dag_run.run_id)
    assert len(json.loads(extra)["files"]) == 4


def test_a_job_with_no_images_fails_publish_saying_it_was_billed(tmp_path: Path) -> None:
    publish = PublishImageOperator(
        task_id="hero.publish",
        job=JobOutcome("COMPLETED", "j-empty", (), credit_cost=5).to_stored(),
        request={"prompt": "p", "fluxParams": apply_defaults({"output_format": "png"})},
        target={"folder": f"file://{tmp_path}", "names": {"hero": {"": "hero.png"}}},
        image="hero",
    )
    with pytest.raises(
        AirflowFailException,
        match=r"job j-empty \(image hero\) completed and was billed 5 credits, but "
        r"its result is empty: it returned no images\. Clear the submit task",
    ):
        publish.execute({})
    assert list(tmp_path.iterdir()) == []


def test_numbered_images_never_overwrite_another_jobs_file(tmp_path: Path) -> None:
    """Prepare refuses such names; publish checks again (a target prepared by an earlier version)."""
    publish = PublishImageOperator(
        task_id="poster.publish",
        job=JobOutcome("COMPLETED", "j2", ("http://127.0.0.1:9/0.png", "http://127.0.0.1:9/1.png")).to_stored(),
        request={"prompt": "p", "fluxParams": apply_defaults({"output_format": "png"})},
        target={"folder": f"file://{tmp_path}", "names": {"poster": {"": "poster.png"}, "other": {"": "poster-2.png"}}},
        image="poster",
    )
    with pytest.raises(
        AirflowFailException, match=re.escape("'poster-2.png' is another job's file name; nothing was written")
    ):
        publish.execute({})
    assert list(tmp_path.iterdir()) == []


def test_finalize_counts_every_image_of_every_job() -> None:
    def record(job: str, index: int, of: int, image: str = "") -> dict[str, Any]:
        return {"image": image or job, "variant": "", "job_id": job, "index": index, "job_images": of}

    a, b = ("a", ""), ("b", "")
    assert published_jobs([record("a", 1, 1), record("b", 2, 2), record("b", 1, 2)]) == {a: "a", b: "b"}
    assert published_jobs([record("a", 1, 1), record("b", 1, 2)]) == {a: "a"}, "one of b's two images is missing"
    assert published_jobs([record("b", 1, 2), record("b", 1, 2)]) == {}, "one image twice is not two"
    old = {"image": "a", "variant": "_seed-1", "job_id": "old"}
    assert published_jobs([old]) == {("a", "_seed-1"): "old"}, "a record of an earlier version: one image"
    twins = [record("j", 1, 1, image="hero"), record("j", 1, 1, image="card")]
    assert published_jobs(twins) == {("hero", ""): "j", ("card", ""): "j"}, "two jobs reusing one picture"


@pytest.mark.parametrize("fault", ["missing_result", "corrupt_image"])
def test_a_lost_result_fails_publish_once_and_clearing_the_submit_pays_for_exactly_one_new_job(
    faulted_run: Callable[..., FaultedRun],
    publish_dags: dict[str, Any],
    emulator: EmulatorServer,
    airflow_db: Path,
    fault: str,
) -> None:
    """The paid result is unusable: publish fails without retries, names the task to clear and what it costs,
    and writes nothing. Clearing ``only.submit`` with its downstream tasks (Airflow's own clear,
    ``clear_task_instances``) then reruns that same run: dag.test() cannot, since it deletes a run of the
    same logical date (and with it the run's task_state_store), so :func:`rerun_cleared` drives the cleared
    task instances with dag.test()'s own loop. The cleared submit finds its job in task_state_store, the
    hook's reuse checks its results, finds them unusable, and submits ONE new job; the run then publishes."""
    run = faulted_run("lost_result", fault=fault)
    dag_id, dag_run, folder, states, output = run.dag_id, run.dag_run, run.folder, run.states, run.output

    assert dag_run.state == "failed", states
    assert states["only.wait"][0] == "success"
    assert states["only.publish"] == ("failed", 1), "not retried, though the task has retries: nothing to retry"
    [first_job] = xcom(airflow_db, dag_id, dag_run.run_id, "only.submit")
    billed = emulator.accounting()
    assert billed["jobs_billed"] == 1, "the lost result was paid for"
    credits = billed["credits_billed"]
    expected = f"job {first_job} (image only) completed and was billed {credits} credits, but its result is unusable: "
    assert expected in output
    assert (
        "Clear `only.submit` with its downstream tasks to generate it again: that submits ONE new job, "
        f"billed about {credits} credits." in output
    )
    assert not folder.exists() or list(folder.iterdir()) == [], "nothing partial or corrupt was stored"
    assert asset_events(airflow_db, dag_id, dag_run.run_id) == []

    rerun = rerun_cleared(publish_dags[dag_id], dag_run.run_id, "only.submit")
    states = task_states(airflow_db, dag_id, dag_run.run_id)
    assert rerun == "success", states
    [second_job] = xcom(airflow_db, dag_id, dag_run.run_id, "only.submit")
    assert second_job != first_job
    accounting = emulator.accounting()
    assert accounting["jobs_created"] == accounting["jobs_billed"] == 2, "exactly one new job"
    assert sorted(accounting["submissions_per_key"].values()) == [1, 1], "the new job has a new Idempotency-Key"
    # The same body billed twice: the deliberate, announced second payment, and the only one.
    assert accounting["duplicates"] == {"by_key": {}, "by_body": 1}
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert [(f["name"], f["job_id"]) for f in manifest["files"]] == [("only.png", second_job)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["only.png", *RUN_FILES])
    assert len(asset_events(airflow_db, dag_id, dag_run.run_id)) == 1


def rerun_cleared(dag: Any, run_id: str, task_id: str) -> str:
    """Clear ``task_id`` and its downstream tasks in an existing run, as the UI's "Clear" does, then run the
    cleared task instances in-process with the loop dag.test() uses; the run's final state."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    cleared = {task_id, *dag.get_task(task_id).get_flat_relative_ids(upstream=False)}
    session = settings.Session()
    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
    dag_run.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    clear_task_instances(
        [ti for ti in dag_run.get_task_instances(session=session) if ti.task_id in cleared],
        session,
        dag_run_state=DagRunState.RUNNING,
    )
    session.commit()
    while dag_run.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = dag_run.update_state(session=session)
        for ti in schedulable:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        for ti in dag_run.get_task_instances(state=TaskInstanceState.SCHEDULED, session=session):
            with contextlib.suppress(Exception):  # a failed task is the run's business, as in dag.test()
                _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
    return str(dag_run.state)


# -- trigger-form params are values, never path syntax (tests/specs/publish/trigger_params.yaml) ---

TRIGGER_ROOT = PUBLISH_ROOT / "trigger_params"
PATH_SYNTAX = ["../../etc", "/abs", "a/b", "..", "spring\x00", "spring\nsummer"]


def tree(folder: Path) -> list[str]:
    """Every path under the folder, for a before/after comparison."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def trigger_run(
    publish_dags: dict[str, Any], emulator: EmulatorServer, apiframe_connection: str, airflow_db: Path
) -> Iterator[Callable[..., tuple[Any, dict[str, tuple[str, int]]]]]:
    """Trigger the params spec with the given params; the run and its task states. The folder is removed."""
    dag_id = "flexflow_test_publish_trigger_params"

    def run(**params: Any) -> tuple[Any, dict[str, tuple[str, int]]]:
        dag_run = publish_dags[dag_id].test(run_conf=params)
        return dag_run, task_states(airflow_db, dag_id, dag_run.run_id)

    shutil.rmtree(TRIGGER_ROOT, ignore_errors=True)
    TRIGGER_ROOT.mkdir(parents=True)
    yield run
    shutil.rmtree(TRIGGER_ROOT, ignore_errors=True)


@pytest.mark.parametrize("value", PATH_SYNTAX, ids=["dotdot-etc", "absolute", "separator", "dotdot", "nul", "newline"])
@pytest.mark.parametrize("param", ["campaign", "prefix"], ids=["in-folder", "in-name"])
def test_path_syntax_in_a_trigger_param_writes_nothing_and_submits_nothing(
    trigger_run: Callable[..., tuple[Any, dict[str, tuple[str, int]]]],
    emulator: EmulatorServer,
    capfd: pytest.CaptureFixture[str],
    param: str,
    value: str,
) -> None:
    (TRIGGER_ROOT / "root").mkdir()
    around = {folder: tree(folder) for folder in (TRIGGER_ROOT, PUBLISH_ROOT)}
    dag_run, states = trigger_run(**{param: value})
    output = "".join(capfd.readouterr())

    assert dag_run.state == "failed", states
    assert states["prepare"] == ("failed", 1), "refused once, never retried"
    assert f"nothing was submitted: param {param!r} is {value!r}" in output
    for index in range(2):
        assert states[f"card.submit[{index}]"][0] == "upstream_failed", states
    assert states["finalize"] == ("failed", 1)
    assert emulator.accounting()["submissions"] == 0, "a bad name never costs a job"
    assert {folder: tree(folder) for folder in around} == around, "nothing written in or around the target"
    assert not Path("/abs").exists() and not (PUBLISH_ROOT / "etc").exists()


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text())  # type: ignore[no-any-return]


def reuse_entries(manifest: dict[str, Any]) -> list[str]:
    return [f["request_sha256"] for f in manifest["files"]]


def test_a_plain_trigger_param_publishes_inside_the_target(
    trigger_run: Callable[..., tuple[Any, dict[str, tuple[str, int]]]], emulator: EmulatorServer
) -> None:
    dag_run, states = trigger_run(campaign="summer 2027", prefix="card")
    assert dag_run.state == "success", states
    folder = TRIGGER_ROOT / "root" / "summer 2027"
    ledger = f"root/{LEDGER_DIR}/flexflow_test_publish_trigger_params"
    assert tree(TRIGGER_ROOT) == sorted(
        [
            "root",
            "root/summer 2027",
            *(f"root/summer 2027/{name}" for name in ("card-card_seed-1.png", "card-card_seed-2.png", *RUN_FILES)),
            *(ledger.rpartition("/")[0], ledger, f"{ledger}/{ledger_name(dag_run.run_id)}"),
            f"root/{REUSE_DIR}",
            *(f"root/{REUSE_DIR}/{entry}.json" for entry in reuse_entries(manifest_of(folder))),
        ]
    ), "the run's spend and its reuse index are kept under the publish root (the literal part of publish.to)"
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert sorted(f["file"] for f in manifest["files"]) == [
        f"file://{folder}/card-card_seed-{seed}.png" for seed in (1, 2)
    ], "the images and the manifest in the one folder prepare rendered"
    assert emulator.accounting()["submissions"] == 2
