"""The validated model: defaults applied once, variants expanded, durations and dates parsed, immutable, offline."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flexflow import defaults
from flexflow.contract import DEFAULTS, apply_defaults
from flexflow.spec import Spec, load_spec, parse_spec, spec_schema
from flexflow.spec import model as spec_model
from flexflow.spec.durations import parse_duration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))

LAYERED = """\
version: 1
dag_id: layered
params:
  campaign: Spring
  smtp: {host: mail.example.com, port: 25}
defaults:
  flux: {resolution: 1MP, output_format: png, steps: 40, seed: 7}
  retries: 5
  timeout: 1h30m
images:
  - name: own_flux
    prompt: "own"
    flux: {steps: 10, output_format: webp, guidance: 4.5}
    retries: 0
    retry_delay: 30s
    poll_interval: 500ms
  - name: defaults_only
    prompt: "defaults"
  - name: with_variants
    prompt: "variants"
    flux: {aspect_ratio: "9:16", seed: 1}
    variants: {aspect_ratio: ["16:9", "1:1"], seed: [1, 2, 3]}
publish:
  to: "file:///tmp/flexflow/layered"
"""


@pytest.fixture(scope="module")
def layered() -> Spec:
    return parse_spec(LAYERED, "layered.yaml")


def image(spec: Spec, name: str) -> spec_model.ImageSpec:
    return next(i for i in spec.images if i.name == name)


# -- defaults --------------------------------------------------------------------------------------


def test_flux_defaults_layer_contract_then_spec_then_image(layered: Spec) -> None:
    own = image(layered, "own_flux")
    assert dict(own.flux) == {
        **DEFAULTS,  # the contract's documented defaults
        "resolution": "1MP",  # from defaults.flux
        "seed": 7,  # from defaults.flux (no contract default)
        "steps": 10,  # the image's own value beats defaults.flux (40) and the contract (28)
        "output_format": "webp",  # the image's own beats defaults.flux (png) and the contract (jpg)
        "guidance": 4.5,  # the image's own beats the contract (3)
    }
    # Written out, so that the test does not only mirror the implementation:
    assert own.flux["aspect_ratio"] == "1:1"
    assert own.flux["output_quality"] == 90
    assert own.flux["image_prompt_strength"] == 0.5
    assert own.flux["prompt_upsampling"] is False
    assert "image_prompt" not in own.flux  # no default: not sent

    plain = image(layered, "defaults_only")
    assert dict(plain.flux) == {**DEFAULTS, "resolution": "1MP", "output_format": "png", "steps": 40, "seed": 7}


def test_flux_defaults_are_applied_once(layered: Spec) -> None:
    for each in layered.images:
        assert apply_defaults(dict(each.flux)) == dict(each.flux)  # nothing left to fill in
        for variant in each.variants:
            # A job's params are the image's, with the variant's values on top; nothing re-defaulted.
            assert each.job_flux(variant) == {**each.flux, **variant.flux}


def test_variant_values_beat_the_image_flux(layered: Spec) -> None:
    varied = image(layered, "with_variants")
    assert varied.flux["aspect_ratio"] == "9:16"
    jobs = [varied.job_flux(v) for v in varied.variants]
    assert [(j["aspect_ratio"], j["seed"]) for j in jobs] == [
        ("16:9", 1),
        ("16:9", 2),
        ("16:9", 3),
        ("1:1", 1),
        ("1:1", 2),
        ("1:1", 3),
    ]
    assert all(j["resolution"] == "1MP" and j["steps"] == 40 for j in jobs)


def test_task_settings_layer_model_then_spec_then_image(layered: Spec) -> None:
    own, plain = image(layered, "own_flux"), image(layered, "defaults_only")
    assert (own.retries, plain.retries) == (0, 5)
    assert own.timeout == plain.timeout == timedelta(hours=1, minutes=30)
    assert own.retry_delay == timedelta(seconds=30)
    assert plain.retry_delay == defaults.RETRY_DELAY == timedelta(minutes=1)
    assert own.poll_interval == timedelta(milliseconds=500)
    assert plain.poll_interval == defaults.POLL_INTERVAL
    assert plain.webhook_url is None


def test_spec_level_defaults(layered: Spec) -> None:
    assert layered.path == "layered.yaml"
    assert layered.schedule is None
    assert layered.start_date is None
    assert layered.catchup is False
    assert layered.tags == ()
    assert layered.owner == "flexflow"
    assert layered.connection_id == "apiframe_default"
    assert layered.description is None
    publish = layered.publish
    assert publish.to == "file:///tmp/flexflow/layered"
    assert publish.filename == "{image}{variant}.{ext}"
    assert publish.manifest is True
    assert publish.asset == "flexflow://layered"
    assert publish.conn_id is None


SCHEMA_SPOTS = {"spec": (), "image": ("defaults",), "publish": ("publish",)}


@pytest.mark.parametrize("row", [d for d in defaults.TABLE if d.where in SCHEMA_SPOTS], ids=lambda d: d.key)
def test_the_schema_shows_the_defaults_the_model_applies(row: defaults.Default) -> None:
    schema = spec_schema()
    for part in SCHEMA_SPOTS[row.where]:
        schema = schema["properties"][part]
    shown = row.value if isinstance(row.value, bool | int | str) else defaults.shown(row.value)
    assert schema["properties"][row.key]["default"] == shown
    if row.where == "image":
        assert spec_schema()["properties"]["images"]["items"]["properties"][row.key]["default"] == shown


def test_source_and_digest_are_kept(layered: Spec) -> None:
    assert layered.source == LAYERED
    assert len(layered.digest) == 64
    assert parse_spec(LAYERED).digest == layered.digest
    assert parse_spec(LAYERED + "# changed\n").digest != layered.digest


# -- variants --------------------------------------------------------------------------------------


def test_variants_are_the_cartesian_product_with_labels(layered: Spec) -> None:
    varied = image(layered, "with_variants")
    assert varied.variant_keys == ("aspect_ratio", "seed")
    assert [v.label for v in varied.variants] == [
        "_aspect_ratio-16x9_seed-1",
        "_aspect_ratio-16x9_seed-2",
        "_aspect_ratio-16x9_seed-3",
        "_aspect_ratio-1x1_seed-1",
        "_aspect_ratio-1x1_seed-2",
        "_aspect_ratio-1x1_seed-3",
    ]
    assert dict(varied.variants[0].flux) == {"aspect_ratio": "16:9", "seed": 1}
    assert varied.job_count == 6


def test_an_image_without_variants_has_one_unlabelled_job(layered: Spec) -> None:
    plain = image(layered, "defaults_only")
    assert plain.variant_keys == ()
    assert [(v.label, dict(v.flux)) for v in plain.variants] == [("", {})]
    assert plain.job_count == 1


def test_jobs_of_the_spec(layered: Spec) -> None:
    assert layered.job_count == 1 + 1 + 6
    jobs = layered.jobs()
    assert [(i.name, v.label) for i, v, _ in jobs][:3] == [
        ("own_flux", ""),
        ("defaults_only", ""),
        ("with_variants", "_aspect_ratio-16x9_seed-1"),
    ]
    assert layered.megapixels == 8.0  # eight 1MP jobs


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        ({"guidance": [2.5, 3]}, ["_guidance-2p5", "_guidance-3"]),
        ({"go_fast": [True, False]}, ["_go_fast-true", "_go_fast-false"]),
        ({"resolution": ["0.5MP"]}, ["_resolution-0p5MP"]),
        ({"aspect_ratio": ["9:16"]}, ["_aspect_ratio-9x16"]),
    ],
)
def test_variant_labels_are_file_name_safe(values: dict, labels: list[str]) -> None:
    assert [v.label for v in spec_model.build_variants(values)] == labels


LABEL = re.compile(r"^(_[a-z_]+-[A-Za-z0-9-]+)+$")


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        (
            {"image_prompt": ["https://cdn.example.com/campaign/spring/hero-ref.jpg"]},
            ["_image_prompt-spring-hero-ref-jpg-003c14ce"],
        ),
        ({"seed": [1, 10**40]}, ["_seed-1", "_seed-000000000000000000000000-1c76479a"]),
        ({"image_prompt": ["https://例え.jp/画像"]}, ["_image_prompt-jp-1adfb0cc"]),
    ],
)
def test_long_or_unusual_values_get_a_readable_prefix_and_a_stable_hash(values: dict, labels: list[str]) -> None:
    assert [v.label for v in spec_model.build_variants(values)] == labels


def test_values_that_sanitize_alike_get_labels_of_their_own() -> None:
    urls = ["https://a.com/x-y", "https://a.com/x/y", "https://a.com/x_y", "https://a.com/x?y", "https://a.com/x--y"]
    labels = [v.label for v in spec_model.build_variants({"image_prompt": urls})]
    assert len(set(labels)) == len(urls)
    assert all(label.startswith("_image_prompt-a-com-x-y-") for label in labels), labels
    # Plain labels that would meet ("1:1" and "1x1") are hashed instead, all of them.
    alike = [v.label for v in spec_model.build_variants({"image_prompt": ["1:1", "1x1"]})]
    assert alike == ["_image_prompt-1-1-738a397c", "_image_prompt-1x1-c5b9f449"]


def test_labels_are_one_bounded_file_name_segment_for_any_value() -> None:
    hostile = ["../../etc/passwd", "a\x00b\nc", "/abs", "x" * 5000, "{image!r}", "ü" * 300, "", " ", "%2e%2e"]
    values: dict = {"image_prompt": hostile, "seed": [-1, 0, 2**70]}
    variants = spec_model.build_variants(values)
    labels = [v.label for v in variants]
    assert len(set(labels)) == len(labels) == len(hostile) * 3
    for label in labels:
        assert LABEL.fullmatch(label), label
        assert len(label.encode()) <= 2 * (len("_image_prompt-") + 24 + 1 + 8), label
    assert dict(variants[0].flux) == {"image_prompt": "../../etc/passwd", "seed": -1}, "values are kept as written"


def test_variant_labels_are_unique_in_the_examples() -> None:
    for file in EXAMPLES:
        for each in load_spec(file).images:
            labels = [v.label for v in each.variants]
            assert len(set(labels)) == len(labels), (file.name, each.name)


# -- durations and dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("2m", timedelta(minutes=2)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("500ms", timedelta(milliseconds=500)),
        ("1.5s", timedelta(seconds=1.5)),
        ("1m30s", timedelta(seconds=90)),
        ("PT2M", timedelta(minutes=2)),
        ("PT1H30M", timedelta(hours=1, minutes=30)),
        ("P1D", timedelta(days=1)),
        ("PT0.5S", timedelta(milliseconds=500)),
        (" 10s ", timedelta(seconds=10)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5 minutes", "0s", "-1m", "P", "PT", "P1DT", "10", "m", "1y", "1h 30m"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("written", "expected", "offset"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC), 0),
        ('"2026-11-01"', datetime(2026, 11, 1, tzinfo=UTC), 0),
        ("2026-11-01 06:30:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), 0),
        ("2026-11-01T06:30:00Z", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), 0),
        # An explicit offset is kept; the instant is the same.
        ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), 2),
    ],
)
def test_start_date_is_utc(written: str, expected: datetime, offset: int) -> None:
    text = LAYERED.replace("params:\n", f'schedule: "@daily"\nstart_date: {written}\nparams:\n', 1)
    start = parse_spec(text).start_date
    assert start is not None
    assert start.tzinfo is not None  # never naive: a date without a zone is UTC
    assert start == expected
    assert start.utcoffset() == timedelta(hours=offset)


def test_example_start_dates() -> None:
    for file in EXAMPLES:
        written = re.search(r"^start_date: *['\"]?(\d{4}-\d{2}-\d{2})['\"]?$", file.read_text(), re.MULTILINE)
        expected = datetime.fromisoformat(written.group(1)).replace(tzinfo=UTC) if written else None
        assert load_spec(file).start_date == expected, file.name


# -- immutability ----------------------------------------------------------------------------------


def test_spec_is_immutable(layered: Spec) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        layered.dag_id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layered.images[0].retries = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layered.publish.to = "s3://elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layered.images[2].variants[0].label = "x"  # type: ignore[misc]
    assert isinstance(layered.images, tuple)
    assert isinstance(layered.tags, tuple)
    assert isinstance(layered.images[0].variants, tuple)


@pytest.mark.parametrize(
    "mapping",
    [
        lambda spec: spec.params,
        lambda spec: spec.extras,
        lambda spec: spec.images[0].flux,
        lambda spec: spec.images[2].variants[0].flux,
    ],
    ids=["params", "extras", "image flux", "variant flux"],
)
def test_mappings_are_read_only(layered: Spec, mapping) -> None:
    target = mapping(layered)
    with pytest.raises(TypeError):
        target["seed"] = 1
    with pytest.raises(TypeError):
        del target[next(iter(target), "seed")]
    with pytest.raises(AttributeError):
        target.update({"seed": 1})


def test_nested_params_are_read_only(layered: Spec) -> None:
    """``params`` may hold mappings (Airflow params of type object); they must be frozen too (see report)."""
    smtp = layered.params["smtp"]
    with pytest.raises(TypeError):
        smtp["host"] = "evil.example.com"
    assert layered.params["smtp"]["host"] == "mail.example.com"


def test_job_flux_is_a_fresh_copy(layered: Spec) -> None:
    """The one mutable thing handed out is a new dict per call: changing it changes nothing else."""
    varied = image(layered, "with_variants")
    job = varied.job_flux(varied.variants[0])
    job["seed"] = 999
    assert varied.job_flux(varied.variants[0])["seed"] == 1
    assert varied.flux["seed"] == 1


# -- offline ---------------------------------------------------------------------------------------

OFFLINE_PROBE = textwrap.dedent(
    """
    import json, socket, sys
    before = set(sys.modules)

    def no_network(*args, **kwargs):
        raise AssertionError("loading a spec touched the network")

    socket.socket.connect = socket.socket.connect_ex = no_network
    socket.create_connection = socket.getaddrinfo = no_network
    import flexflow.spec as s
    for path in sys.argv[1:]:
        s.load_spec(path)
    s.load_folder(["specs"])
    print(json.dumps({
        "airflow": sorted(m for m in sys.modules if m.startswith("airflow") and m not in before),
        "any_airflow": any(m.startswith("airflow") for m in sys.modules),
        "client": sorted(m for m in sys.modules if m.startswith("flexflow.client")),
    }))
    """
)


def test_loading_touches_no_airflow_no_api_client_and_no_network() -> None:
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE, *(str(f.relative_to(ROOT)) for f in EXAMPLES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # The spec layer stands below the API client: defaults come from flexflow.defaults, not the client.
    assert json.loads(result.stdout) == {"airflow": [], "any_airflow": False, "client": []}


def test_the_issue_probe() -> None:
    """The exact one-liner of the issue."""
    code = (
        "import sys, flexflow.spec as s; s.load_spec('specs/product_launch.yaml'); "
        "print(any(m.startswith('airflow') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
