"""What Airflow would refuse is a spec error first (issue 11, items 3 and 4), and the work per spec is bounded.

Each rule of ``flexflow.spec.airflow_rules`` is tried at its edge: one step past it is refused with its
message, the edge itself is accepted and Airflow builds, serializes and schedules the DAG.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flexflow.compiler.loader as loader_module
from flexflow import defaults
from flexflow.compiler.dag import INVALID_TAG, compile_spec
from flexflow.compiler.loader import FOLDER_DAG_ID, load_dags
from flexflow.spec import SpecError, load_spec, parse_spec
from flexflow.spec.airflow_rules import DAG_ID_MAX, asset_problems, connection_id_problem, shortest_gap
from flexflow.spec.cache import CACHE_DIR_ENV, SpecCache
from flexflow.spec.folder import claimed_dag_id, find_spec_files, lenient_dag_id
from flexflow.spec.yaml_source import MAX_BYTES

BASE = {
    "dag_id": "rules_demo",
    "schedule": '"0 6 * * *"',
    "start_date": "2026-11-01",
    "tags": "[team]",
    "name": "hero",
    "variants": "",
    "asset": "flexflow://rules_demo",
}


def spec(**values: str) -> str:
    """A valid spec with the given values in place of BASE's (YAML as written, quotes included)."""
    v = {**BASE, **values}
    variants = f"\n    variants: {v['variants']}" if v["variants"] else ""
    return (
        f"version: 1\ndag_id: {v['dag_id']}\nschedule: {v['schedule']}\nstart_date: {v['start_date']}\n"
        f"tags: {v['tags']}\nimages:\n  - name: {v['name']}\n    prompt: a hero{variants}\n"
        f'publish:\n  to: "file:///tmp/flexflow/rules/{{{{ ds }}}}"\n  asset: {v["asset"]}\n'
    )


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "s.yaml")
    return [f"{p.line}:{p.column}: {p.message}" for p in info.value.problems]


@pytest.fixture(autouse=True)
def _deployment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default limits, and a private spec cache."""
    monkeypatch.delenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, raising=False)
    monkeypatch.delenv(defaults.MAX_JOBS_PER_RUN_ENV, raising=False)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))


# -- ids, tags and names -------------------------------------------------------------------------

LONG_ID = "d" * DAG_ID_MAX


#: Values in place of BASE's, and the one problem they make (its start).
NAME_CASES = [
    ({"dag_id": '"rules_demo\\n"'}, "2:1: dag_id: 'rules_demo\\n' must be only letters, digits, '_', '.' and '-'"),
    ({"dag_id": LONG_ID + "d"}, f"2:1: dag_id: is {DAG_ID_MAX + 1} characters; at most {DAG_ID_MAX}"),
    ({"dag_id": "rules..demo"}, "2:1: dag_id: 'rules..demo' contains '..'"),
    ({"dag_id": "rules__invalid"}, "2:1: dag_id: 'rules__invalid' ends in '__invalid'"),
    ({"tags": f"[{'t' * 101}]"}, "5:8: tags[0]: is 101 characters; Airflow allows at most 100"),
    ({"tags": '["team\\n"]'}, "5:8: tags[0]: 'team\\n' has a line break"),
    ({"tags": "[' team']"}, "5:8: tags[0]: ' team' has a line break, control character or surrounding space"),
    ({"tags": "[invalid]"}, "5:8: tags[0]: 'invalid' is the tag flexflow gives a broken spec's DAG"),
    ({"name": '"hero\\n"'}, "7:5: images[0].name: 'hero\\n' must be only lowercase letters"),
    ({"name": "finalize"}, "7:5: images[0].name: 'finalize' is a task name flexflow uses"),
    ({"name": "prepare"}, "7:5: images[0].name: 'prepare' is a task name flexflow uses"),
    ({"name": "invalid_spec"}, "7:5: images[0].name: 'invalid_spec' is a task name flexflow uses"),
    ({"name": "wait"}, "7:5: images[0].name: 'wait' is a task name flexflow uses"),
]


CONNECTION_IDS = [
    "apiframe_default",
    "team-a.apiframe",
    "s3://x",
    "a(b)#!:/\\",
    "c" * 250,
    "c" * 251,
    "x y",
    "x\n",
    "é",
    "x;rm",
    "",
    "a=b",
    "$HOME",
    "x\x00",
]


@pytest.mark.parametrize("conn_id", CONNECTION_IDS)
def test_connection_ids_are_those_airflow_holds(conn_id: str) -> None:
    """Held to Airflow's own sanitizer (ASCII only: ``flexflow run`` passes one in an environment variable)."""
    from airflow.models.connection import sanitize_conn_id

    airflow_holds = sanitize_conn_id(conn_id) == conn_id and conn_id.isascii()
    assert (connection_id_problem(conn_id) is None) == airflow_holds


@pytest.mark.parametrize("where", ["connection_id", "publish.conn_id"])
def test_a_connection_id_airflow_cannot_hold_is_a_spec_error(where: str) -> None:
    text = spec().replace("images:", "connection_id: apiframe_default\nimages:")
    text = text.replace("publish:\n", "publish:\n  conn_id: storage\n")
    bad = (
        text.replace("apiframe_default", '"api frame"')
        if where == "connection_id"
        else text.replace("conn_id: storage", 'conn_id: "st;orage"')
    )
    parse_spec(text, "s.yaml")  # the same spec with ids Airflow holds is valid
    found = problems(bad)
    assert len(found) == 1 and f"{where}: " in found[0] and "is not an Airflow connection id" in found[0], found


# -- dates and schedules -------------------------------------------------------------------------


TIME_CASES = [
    ({"start_date": "1969-12-31"}, "4:1: start_date: '1969-12-31T00:00:00' is outside the dates Airflow stores"),
    ({"start_date": "2038-01-01"}, "4:1: start_date: '2038-01-01T00:00:00' is outside the dates Airflow stores"),
    ({"start_date": "0001-01-01"}, "4:1: start_date: '0001-01-01T00:00:00' is outside the dates Airflow stores"),
    ({"schedule": '"0 0 30 2 *"'}, "3:1: schedule: '0 0 30 2 *' never fires: no date matches it"),
    ({"schedule": '"0 0 31 4,6,9,11 *"'}, "3:1: schedule: '0 0 31 4,6,9,11 *' never fires"),
    ({"schedule": '"*/30 * * * *"'}, "3:1: schedule: '*/30 * * * *' starts runs 30m apart; the shortest"),
    ({"schedule": '"0,45 6 * * *"'}, "3:1: schedule: '0,45 6 * * *' starts runs 45m apart"),
    ({"schedule": '"0 6 * * * 0 2030"'}, "3:1: schedule: '0 6 * * * 0 2030' names years; a schedule repeats"),
    ({"schedule": '"* * * * * */5"'}, "3:1: schedule: '* * * * * */5' starts runs 5s apart"),
]


@pytest.mark.parametrize(("values", "expected"), [*NAME_CASES, *TIME_CASES])
def test_what_airflow_refuses_or_cannot_run_well_is_a_spec_error(values: dict[str, str], expected: str) -> None:
    found = problems(spec(**values))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_minimum_interval_is_the_deployments(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(spec(schedule='"*/30 * * * *"'))[0].endswith(
        "the shortest interval allowed is 1h (FLEXFLOW_MIN_SCHEDULE_INTERVAL)"
    )
    monkeypatch.setenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, "30m")
    assert parse_spec(spec(schedule='"*/30 * * * *"')).schedule == "*/30 * * * *"
    monkeypatch.setenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, "2h")
    assert problems(spec(schedule="'@hourly'")) == [
        "3:1: schedule: '@hourly' starts runs 1h apart; the shortest interval allowed is 2h "
        "(FLEXFLOW_MIN_SCHEDULE_INTERVAL)"
    ]


def test_a_gap_across_midnight_counts_only_when_two_consecutive_days_fire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, "2h")
    assert "starts runs 1h apart" in problems(spec(schedule='"0 0,23 * * *"'))[0]
    parse_spec(spec(schedule='"0 0,23 1,15 * *"'))  # the 1st and the 15th are never consecutive
    parse_spec(spec(schedule='"0 0,22 * * *"'))


def test_reading_a_schedule_is_bounded_work() -> None:
    started = time.perf_counter()
    for minute in range(60):
        shortest_gap(f"{minute} * * * * *", defaults.MIN_SCHEDULE_INTERVAL)  # every second of a minute
        shortest_gap(f"{minute} 0,23 29 2 *", defaults.MIN_SCHEDULE_INTERVAL)
    assert time.perf_counter() - started < 5


# -- the asset URI -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asset", "expected"),
    [
        ("airflow://runs", "the scheme 'airflow' is reserved by Airflow"),
        ("'self'", "'self' and 'context' are reserved"),
        ("' '", "cannot be only whitespace"),
        ("a" * 1501, "is 1,501 characters; Airflow allows at most 1500"),
        ("s3://user:hunter2@bucket/key", "holds a password; a spec holds no secrets"),
        ("flexflow://bänner", "must be ASCII"),
        ("'http://[::1/x'", "is not a URI Airflow reads: Invalid IPv6 URL"),
    ],
)
def test_asset_uris_airflow_refuses_are_spec_errors(asset: str, expected: str) -> None:
    found = problems(spec(asset=asset))
    assert len(found) == 1 and found[0].startswith(f"11:3: publish.asset: {expected}"), found


URI_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


@st.composite
def asset_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["", "file", "s3", "airflow", "AIRFLOW", "x-own", "flexflow", "http"]))
    rest = draw(st.one_of(URI_TEXT, st.just(" "), st.just("self"), st.just("u:p@h/x"), st.just("[::1")))
    repeat = draw(st.sampled_from([1, 1, 1, 60]))  # sometimes past Airflow's 1500 characters
    return (f"{scheme}://{rest}" if scheme else rest) * repeat


def airflow_accepts(uri: str) -> bool:
    from airflow.sdk import Asset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a dropped password is a warning: refused here
            Asset(uri)
    except (ValueError, UserWarning):
        return False
    return True


@settings(max_examples=400, deadline=None)
@given(asset_uris())
def test_asset_check_agrees_with_airflows_asset(uri: str) -> None:
    ours = asset_problems(uri)
    if not ours:
        assert airflow_accepts(uri), f"we accept {uri!r}, Airflow refuses it"
    elif uri.isascii():
        assert not airflow_accepts(uri) or "password" in ours[0], f"we refuse {uri!r} ({ours}), Airflow takes it"


# -- the job cap ---------------------------------------------------------------------------------


def test_a_run_may_make_at_most_the_deployments_job_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    many = (
        "{seed: ["
        + ", ".join(map(str, range(1, 26)))
        + "], guidance: ["
        + ", ".join(f"{2 + i / 10:.1f}" for i in range(21))
        + "]}"
    )
    assert problems(spec(variants=many)) == [
        "9:5: images[0].variants: the spec would make 525 jobs per run; a run may make at most 500 "
        "(FLEXFLOW_MAX_JOBS_PER_RUN)"
    ]
    monkeypatch.setenv(defaults.MAX_JOBS_PER_RUN_ENV, "525")
    assert parse_spec(spec(variants=many)).job_count == 525


def test_a_changed_limit_validates_cached_specs_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    text = spec(schedule='"*/30 * * * *"')
    monkeypatch.setenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, "30m")
    parse_spec(text, cache=cache)
    assert cache.get(text) is not None
    monkeypatch.delenv(defaults.MIN_SCHEDULE_INTERVAL_ENV)
    with pytest.raises(SpecError):
        parse_spec(text, cache=cache)


def test_a_limit_that_does_not_read_keeps_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(defaults.MIN_SCHEDULE_INTERVAL_ENV, "soon")
    monkeypatch.setenv(defaults.MAX_JOBS_PER_RUN_ENV, "0")
    with pytest.warns(UserWarning, match="is not valid; using the default"):
        assert defaults.deployment_limits() == defaults.Limits()


# -- what validation accepts, Airflow builds, serializes and schedules ---------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"dag_id": LONG_ID},
        {"start_date": "1970-01-01", "schedule": "'@yearly'"},
        {"start_date": "2037-12-31", "schedule": "'@daily'"},
        {"schedule": '"0 0 29 2 *"'},
        {"start_date": "'2026-11-01T06:00:00+05:30'", "schedule": '"30 6 * * 1-5"'},
        {"schedule": '"0 * * * *"', "tags": f"[{'t' * 100}, équipe]"},
        {"name": "finalize_v2", "asset": "x-own://anything goes here"},
        {"variants": "{seed: [" + ", ".join(map(str, range(1, 501))) + "]}"},
    ],
    ids=["longest-id", "earliest", "latest", "leap-day", "offset", "hourly", "names", "job-cap"],
)
def test_a_spec_validation_accepts_compiles_serializes_and_gets_a_next_run(values: dict[str, str]) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = compile_spec(parse_spec(spec(**values), "edge.yaml"))
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    info = serialized.next_dagrun_info(last_automated_run_info=None)
    assert info is not None and info.data_interval is not None, "Airflow's timetable gives no next run"


def test_the_longest_id_leaves_room_for_the_loaders_suffix(tmp_path: Path) -> None:
    """A broken copy of a valid spec is named ``<id>__invalid``: that too is an id Airflow takes."""
    (tmp_path / "a.yaml").write_text(spec(dag_id=LONG_ID))
    (tmp_path / "b.yaml").write_text(spec(dag_id=LONG_ID, name="Bad"))
    dags = load_dags(__file__, str(tmp_path))
    assert INVALID_TAG in dags[f"{LONG_ID}__invalid"].tags
    assert INVALID_TAG not in dags[LONG_ID].tags


# -- bounded work: files -------------------------------------------------------------------------


def test_a_fifo_and_a_device_are_flagged_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    os.symlink("/dev/zero", tmp_path / "device.yaml")  # a device, reached through a symlink
    (tmp_path / "good.yaml").write_text(spec())
    started = time.perf_counter()
    dags = load_dags(__file__, str(tmp_path))
    assert time.perf_counter() - started < 30
    assert INVALID_TAG not in dags["rules_demo"].tags
    for stem in ("fifo", "device"):
        assert "not a regular file (a device, FIFO or socket)" in str(dags[stem].doc_md)


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(10**12)  # sparse: reading it would take a terabyte
    with pytest.raises(SpecError) as info:
        load_spec(huge)
    assert [p.message for p in info.value.problems] == [
        f"the file is larger than {MAX_BYTES:,} bytes ({10**12:,}); a spec is a few kilobytes"
    ]
    assert claimed_dag_id(huge) is None


def test_symlinked_and_hidden_folders_and_hidden_files_are_not_walked(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(spec())
    os.symlink(tmp_path, tmp_path / "loop")  # a cycle, if it were followed
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.yaml").write_text(spec())
    os.symlink(tmp_path / "gone", tmp_path / ".#a.yaml")  # an editor's lock file
    assert find_spec_files([tmp_path]) == [tmp_path / "a.yaml"]


def test_the_claimed_dag_id_line_is_read_in_linear_time(tmp_path: Path) -> None:
    file = tmp_path / "slow.yaml"
    file.write_text("dag_id:" + " " * 400_000 + "\n" + "dag_id:\n" * 50_000)
    started = time.perf_counter()
    assert claimed_dag_id(file) is None, "the id is read on its own line only"
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    ("claimed", "lenient"),
    [("ok_id", "ok_id"), ("x" * 300, "broken"), ("a..b", "broken"), ("z__invalid", "broken")],
)
def test_a_broken_files_dag_id_is_always_one_airflow_takes(tmp_path: Path, claimed: str, lenient: str) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text(f"dag_id: {claimed}\nimages: oops\n")
    assert lenient_dag_id(file) == lenient
    assert INVALID_TAG in load_dags(__file__, str(tmp_path))[lenient].tags


# -- the loader never raises ---------------------------------------------------------------------


def test_an_exception_building_a_dag_flags_that_spec_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(spec())
    (tmp_path / "b.yaml").write_text(spec(dag_id="rules_other"))
    real = compile_spec

    def compile_spec_or_fail(built: Any) -> Any:
        if built.dag_id == "rules_other":
            raise RuntimeError("Airflow said no")
        return real(built)

    monkeypatch.setattr(loader_module, "compile_spec", compile_spec_or_fail)
    dags = load_dags(__file__, str(tmp_path))
    assert INVALID_TAG not in dags["rules_demo"].tags
    assert INVALID_TAG in dags["rules_other"].tags
    assert "Airflow refused the DAG: RuntimeError: Airflow said no" in str(dags["rules_other"].doc_md)


def test_a_folder_that_cannot_be_listed_is_a_flagged_dag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unlistable(paths: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loader_module, "find_spec_files", unlistable)
    dags = load_dags(__file__, str(tmp_path))
    assert list(dags) == [FOLDER_DAG_ID]
    assert "cannot list the specs folder: [Errno 13] Permission denied" in str(dags[FOLDER_DAG_ID].doc_md)


def test_plan_shows_the_deployments_job_cap(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flexflow.cli import main

    monkeypatch.setenv(defaults.MAX_JOBS_PER_RUN_ENV, "40")
    spec_file = Path(__file__).parent / "specs" / "valid" / "launch_plan.yaml"
    assert main(["plan", str(spec_file)]) == 0
    assert "job cap: 40 jobs per run (FLEXFLOW_MAX_JOBS_PER_RUN); this spec makes 6" in capsys.readouterr().out
    assert main(["plan", str(spec_file), "--format", "json"]) == 0
    assert '"max_jobs_per_run": 40' in capsys.readouterr().out


FIELD = st.one_of(
    st.just("*"),
    st.integers(0, 59).map(str),
    st.tuples(st.integers(0, 30), st.integers(1, 31)).map(lambda p: f"{p[0]}-{p[0] + p[1]}"),
    st.integers(1, 40).map(lambda n: f"*/{n}"),
    st.sampled_from(["L", "5#3", "MON-FRI", "JAN,JUL", "?", "1,15", "29", "31"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(FIELD, min_size=5, max_size=7).map(" ".join))
def test_a_schedule_validation_accepts_airflow_schedules(expression: str) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    try:
        parsed = parse_spec(spec(schedule=repr(expression)))
    except SpecError:
        return
    dag = DagSerialization.from_dict(DagSerialization.to_dict(compile_spec(parsed)))
    assert dag.next_dagrun_info(last_automated_run_info=None) is not None, expression


@pytest.mark.parametrize(
    "values",
    [
        {"dag_id": "rules_demo\ndescription: '" + "eyj" * 100_000 + "'"},  # a JSON-web-token shape, never closed
        {"asset": "flexflow://x\n  filename: '" + "{{" * 150_000 + "'"},  # Jinja blocks, never closed
        {"dag_id": "rules_demo\ndefaults:\n  retry_delay: '" + "1" * 300_000 + "'"},  # a duration, no unit
    ],
    ids=["token-run", "open-braces", "digit-run"],
)
def test_no_regular_expression_is_super_linear_on_spec_text(values: dict[str, str]) -> None:
    """300 kB of each bait: linear work takes well under a second, the quadratic patterns took hours."""
    started = time.perf_counter()
    with contextlib.suppress(SpecError):
        parse_spec(spec(**values))
    assert time.perf_counter() - started < 5
