"""The corpus of invalid specs: one file per rule, each giving exactly its problem at exactly its spot.

Every file under ``tests/specs/invalid/`` is broken in one way (``many_problems.yaml`` in ten) and
states what it must produce in its header, one line per problem::

    # expect: <line>:<column>: <a fragment of the message>

The test loads each file and asserts that the problems are exactly those, in that order (sorted
by line, then column), each message containing its fragment (single and double quotes alike).
Rules that cannot be a small committed file (a file over the size limit, a non-UTF-8 file, a
dag_id shared by two files) are generated or assembled in the tests below.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import pytest

from flexflow.spec import SpecError, load_folder, load_spec, parse_spec
from flexflow.spec.yaml_source import MAX_BYTES, MAX_NODES

SPECS = Path(__file__).parent / "specs"
INVALID = SPECS / "invalid"
DUPLICATE_DAG_ID = SPECS / "duplicate_dag_id"
CORPUS = sorted(INVALID.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.MULTILINE)

#: Every rule of the issue has (at least) its file; deleting one fails test_corpus_covers_every_rule.
RULES = {
    "template_outside_templated_keys",
    # YAML itself
    "malformed_yaml",
    "malformed_yaml_unquoted_cron",
    "python_object_tag",
    "custom_tag",
    "billion_laughs",
    "duplicate_key",
    "not_a_mapping",
    # top-level keys
    "unknown_top_level_key",
    "missing_dag_id",
    "missing_images",
    "missing_publish",
    "missing_publish_to",
    "version_not_1",
    "bad_dag_id",
    # images and their flux parameters
    "image_name_pattern",
    "duplicate_image_names",
    "images_empty",
    "unknown_flux_key",
    "flux_strength_off_step",
    "flux_strength_out_of_range",
    "flux_guidance_off_step",
    "flux_guidance_out_of_range",
    "flux_steps_not_integer",
    "flux_steps_out_of_range",
    "flux_output_quality_out_of_range",
    "flux_output_format_jpeg",
    "flux_resolution_3mp",
    "flux_aspect_ratio_2_1",
    "flux_image_prompt_ftp",
    "flux_go_fast_not_boolean",
    # schedule
    "bad_cron",
    "unknown_preset",
    "start_date_missing",
    "bad_start_date",
    "bad_start_date_month_13",
    # durations
    "bad_duration_words",
    "bad_duration_zero",
    "bad_duration_negative",
    # variants
    "variants_non_flux_key",
    "variants_empty_list",
    "variants_invalid_value",
    # secrets and URLs
    "webhook_not_https",
    "webhook_events_without_url",
    "webhook_events_defaults_without_url",
    "webhook_events_unknown",
    "webhook_events_duplicate",
    "webhook_events_empty",
    "webhook_events_not_a_list",
    "secret_api_key",
    "secret_password_in_params",
    "secret_token_in_image",
    "apiframe_key_value",
    # publishing
    "publish_to_ftp",
    "publish_to_dotdot",
    "filename_unknown_placeholder",
    "filename_collision",
    # templates
    "jinja_syntax_error",
    # budget
    "budget_credits_per_run_exceeded",
    "budget_usd_per_run_exceeded",
    "budget_per_day_below_one_run",
    "budget_no_cap",
    "budget_unknown_key",
    "budget_param_in_flux",
    # all at once
    "many_problems",
}


def same_quotes(text: str) -> str:
    """Messages quote values as JSON ("2:1") or as Python ('2:1'); the corpus accepts either."""
    return text.replace("'", '"')


def expectations(file: Path) -> list[tuple[int, int, str]]:
    return [(int(line), int(column), fragment) for line, column, fragment in EXPECT.findall(file.read_text())]


def problems_of(file: Path) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(file)
    return info.value.problems


def test_corpus_covers_every_rule() -> None:
    present = {file.stem for file in CORPUS}
    assert present >= RULES, f"missing corpus files: {sorted(RULES - present)}"
    assert present <= RULES, f"corpus files not listed in RULES: {sorted(present - RULES)}"


@pytest.mark.parametrize("file", CORPUS, ids=lambda file: file.stem)
def test_invalid_spec_reports_exactly_its_problems(file: Path) -> None:
    expected = expectations(file)
    assert expected, f"{file.name} states no '# expect: line:column: message' header"
    problems = problems_of(file)
    shown = "\n".join(str(p) for p in problems)
    assert [(p.line, p.column) for p in problems] == [(line, column) for line, column, _ in expected], shown
    for problem, (_, _, fragment) in zip(problems, expected, strict=True):
        assert same_quotes(fragment) in same_quotes(problem.message), f"{fragment!r} not in {problem.message!r}"
        assert problem.file == str(file)
        assert str(problem) == f"{file}:{problem.line}:{problem.column}: {problem.message}"


@pytest.mark.parametrize("file", CORPUS, ids=lambda file: file.stem)
def test_every_problem_points_into_the_file(file: Path) -> None:
    lines = file.read_text().splitlines()
    for problem in problems_of(file):
        assert 1 <= problem.line <= len(lines)
        assert 1 <= problem.column <= len(lines[problem.line - 1]) + 1


def test_many_problems_are_all_reported_sorted_by_line() -> None:
    problems = problems_of(INVALID / "many_problems.yaml")
    assert len(problems) >= 5
    spots = [(p.line, p.column) for p in problems]
    assert spots == sorted(spots)
    assert len(set(spots)) == len(spots)
    # One problem per broken key: the paths name what to fix.
    assert [p.path for p in problems] == [
        "version",
        "dag_id",
        "schedule",
        "images[0].name",
        "images[0].flux.guidance",
        "images[0].flux.output_format",
        "images[1].prompt",
        "images[1].timeout",
        "publish.to",
        "publish.filename",
    ]


def test_billion_laughs_is_rejected_without_expanding() -> None:
    """10**9 values if expanded; the loader stops at MAX_NODES, well before memory runs out."""
    tracemalloc.start()
    try:
        problems = problems_of(INVALID / "billion_laughs.yaml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(problems) == 1
    assert f"expands to more than {MAX_NODES:,} values" in problems[0].message
    assert peak < 200_000_000  # the expanded document would need hundreds of gigabytes


def _spec_text(extra: str = "") -> str:
    return (
        "version: 1\n"
        "dag_id: generated\n"
        "images:\n"
        "  - name: hero\n"
        '    prompt: "a red bicycle"\n'
        "publish:\n"
        '  to: "file:///tmp/flexflow/generated"\n' + extra
    )


def _padded(size: int) -> str:
    """A valid spec padded with a trailing comment to exactly ``size`` bytes."""
    text = _spec_text() + "# "
    return text + "x" * (size - len(text.encode()) - 1) + "\n"


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    file = tmp_path / "huge.yaml"
    file.write_text(_padded(MAX_BYTES + 1))
    problems = problems_of(file)
    assert [(p.line, p.column) for p in problems] == [(1, 1)]
    assert f"larger than {MAX_BYTES:,} bytes" in problems[0].message


def test_file_at_the_size_limit_loads(tmp_path: Path) -> None:
    file = tmp_path / "big.yaml"
    file.write_text(_padded(MAX_BYTES))
    assert file.stat().st_size == MAX_BYTES
    assert load_spec(file).dag_id == "generated"


def test_file_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes(_spec_text().replace("a red bicycle", "caf\u00e9 terrace").encode("latin-1"))
    problems = problems_of(file)
    assert [(p.line, p.column, p.message) for p in problems] == [(1, 1, "the file is not UTF-8 text")]


def test_duplicate_dag_id_across_files_names_both() -> None:
    weekly, daily = DUPLICATE_DAG_ID / "weekly_banners.yaml", DUPLICATE_DAG_ID / "daily_banners.yaml"
    # Each file is valid on its own: the problem is only the pair.
    assert load_spec(weekly).dag_id == load_spec(daily).dag_id == "shared_banners"

    result = load_folder([DUPLICATE_DAG_ID])
    assert result.specs == ()
    by_file = {p.file: p for p in result.problems}
    assert set(by_file) == {str(weekly), str(daily)}
    assert len(result.problems) == 2
    assert (by_file[str(weekly)].line, by_file[str(weekly)].column) == (3, 1)
    assert (by_file[str(daily)].line, by_file[str(daily)].column) == (4, 1)
    assert by_file[str(weekly)].message == f"dag_id: 'shared_banners' is also the dag_id of {daily}"
    assert by_file[str(daily)].message == f"dag_id: 'shared_banners' is also the dag_id of {weekly}"
    assert set(result.broken) == {"shared_banners"}


def test_a_broken_file_does_not_hide_the_others(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(_spec_text())
    (tmp_path / "bad.yaml").write_text((INVALID / "bad_cron.yaml").read_text())
    result = load_folder([tmp_path])
    assert [spec.dag_id for spec in result.specs] == ["generated"]
    assert [(p.file, p.line) for p in result.problems] == [(str(tmp_path / "bad.yaml"), 5)]
    assert set(result.broken) == {"corpus_demo"}  # the dag_id the broken file meant, read leniently


# -- secrets anywhere --------------------------------------------------------------------------

SECRET_KEYS = ["api_key", "password", "token", "apiKey", "X-Api-Key", "client_secret", "aws_secret_access_key"]


@pytest.mark.parametrize("key", SECRET_KEYS)
@pytest.mark.parametrize(
    ("where", "line", "column", "path"),
    [
        ("top-level", 8, 1, "{key}"),
        ("params", 9, 3, "params.{key}"),
        ("params nested", 10, 5, "params.smtp.{key}"),
        ("publish", 8, 3, "publish.{key}"),
    ],
)
def test_secret_looking_key_anywhere(key: str, where: str, line: int, column: int, path: str) -> None:
    extra = {
        "top-level": f"{key}: s3cr3t\n",
        "params": f"params:\n  {key}: s3cr3t\n",
        "params nested": f"params:\n  smtp:\n    {key}: s3cr3t\n",
        "publish": f"  {key}: s3cr3t\n",
    }[where]
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_text(extra), "secret.yaml")
    secrets = [p for p in info.value.problems if "looks like a secret" in p.message]
    assert [(p.line, p.column, p.path) for p in secrets] == [(line, column, path.format(key=key))]
    assert same_quotes(f"'{key}' looks like a secret") in same_quotes(secrets[0].message)
    assert all("s3cr3t" not in p.message for p in info.value.problems)  # the secret itself is never echoed
    if key.isidentifier():
        assert info.value.problems == secrets  # nothing else is wrong with these specs


@pytest.mark.parametrize(
    ("extra", "line", "column", "path"),
    [
        ("connection_id: afk_live_5f3c2a9e\n", 8, 1, "connection_id"),
        ("params:\n  note: afk_live_5f3c2a9e\n", 9, 3, "params.note"),
        ("tags: [spring, afk_live_5f3c2a9e]\n", 8, 16, "tags[1]"),
    ],
    ids=["connection_id", "params", "list item"],
)
def test_value_that_looks_like_an_apiframe_key(extra: str, line: int, column: int, path: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_text(extra), "key.yaml")
    problems = info.value.problems
    assert [(p.line, p.column, p.path) for p in problems] == [(line, column, path)]
    assert "looks like an Apiframe API key" in problems[0].message
    assert "afk_live_5f3c2a9e" not in problems[0].message


def test_bad_param_name_points_at_the_key() -> None:
    """A DAG param named against the pattern is shown at that key, not at ``params:`` (see report)."""
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_text("params:\n  campaign: spring\n  X-Campaign: spring\n"), "params.yaml")
    problems = info.value.problems
    assert [(p.line, p.column) for p in problems] == [(10, 3)]
    assert "X-Campaign" in problems[0].message


def test_the_valid_base_of_the_generated_cases_is_valid() -> None:
    assert parse_spec(_spec_text()).dag_id == "generated"


def test_control_characters_from_the_spec_are_spelled_out_in_messages_and_excerpts(tmp_path: Path) -> None:
    """An escape sequence in a key must not clear a terminal or forge a CI log line when the problem is shown."""
    from flexflow.spec.report import render_text

    spec = tmp_path / "escape.yaml"
    spec.write_text(
        'version: 1\ndag_id: escape_demo\n"bad\\e[2Jkey": 1\nimages: [{name: a, prompt: p}]\npublish: {to: "file:///tmp/x"}\n'
    )
    problems = problems_of(spec)
    shown = render_text(problems, color=False)
    assert "\x1b" not in shown
    assert "[U+001B]" in shown
    assert all("\x1b" not in str(p) for p in problems)
