"""The spec commands of the CLI: ``flexflow validate``, ``flexflow schema`` and ``flexflow plan``.

Most tests call :func:`flexflow.cli.main` in process (capsys); one runs the real command in a
subprocess (``python -m flexflow.cli``) to see exit codes and output as a shell or pre-commit
sees them. The committed schemas must equal what ``flexflow schema`` prints (else they are stale)
and must work with a third-party validator, ``check-jsonschema``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from flexflow.cli import main
from flexflow.spec import SpecError, load_spec
from flexflow.spec.yaml_source import load

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
EXAMPLES = sorted(SPECS.glob("*.yaml"))
INVALID = ROOT / "tests" / "specs" / "invalid"
SPEC_SCHEMA = ROOT / "schemas" / "flexflow-spec.schema.json"
REQUEST_SCHEMA = ROOT / "schemas" / "flux-2-flex-request.schema.json"
ESCAPE = "\033"


class FakeTerminal(io.StringIO):
    """A stdout that says it is a terminal, to see when color is (not) used."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def broken_folder(tmp_path: Path) -> Path:
    """A folder with one valid spec and one whose problem is at line 15, column 44."""
    shutil.copy(SPECS / "spring_social_refresh.yaml", tmp_path / "good.yaml")
    shutil.copy(INVALID / "flux_guidance_off_step.yaml", tmp_path / "broken.yaml")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err


# -- validate ------------------------------------------------------------------------------------


def test_validate_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", str(SPECS))
    assert code == 0, out + err
    assert out.strip() == f"{len(EXAMPLES)} spec file(s) valid"


def test_validate_defaults_to_specs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code, out, _ = run(capsys, "validate")
    assert code == 0
    assert out.strip() == f"{len(EXAMPLES)} spec file(s) valid"


def test_validate_files_named_one_by_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", *map(str, EXAMPLES))
    assert code == 0
    assert out.strip() == f"{len(EXAMPLES)} spec file(s) valid"


def test_validate_a_folder_with_a_broken_spec(capsys: pytest.CaptureFixture[str], broken_folder: Path) -> None:
    code, out, _ = run(capsys, "validate", str(broken_folder))
    assert code == 1
    broken = broken_folder / "broken.yaml"
    lines = out.splitlines()
    message = "images[0].flux.guidance: must be a number from 1.5 to 10 in steps of 0.1; got 3.33"
    assert lines[0] == f"{broken}:15:44: {message}"
    source = broken.read_text().splitlines()[14]
    assert lines[1] == f"   15 | {source}"
    # The caret stands under column 44 of the source line.
    assert lines[2].rstrip() == " " * (len("   15 | ") + 43) + "^"
    assert source[43:].startswith("guidance: 3.33")
    assert lines[-1] == "1 problem(s) in 1 of 2 file(s)"
    assert ESCAPE not in out  # capsys is not a terminal


def test_validate_reports_every_file_and_every_problem(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for name in ("bad_cron", "many_problems", "duplicate_key"):
        shutil.copy(INVALID / f"{name}.yaml", tmp_path / f"{name}.yaml")
    code, out, _ = run(capsys, "validate", str(tmp_path), "--format", "json")
    assert code == 1
    report = json.loads(out)
    per_file: dict[str, int] = {}
    for problem in report["problems"]:
        per_file[Path(problem["file"]).stem] = per_file.get(Path(problem["file"]).stem, 0) + 1
    assert per_file == {"bad_cron": 1, "many_problems": 10, "duplicate_key": 1}


def test_validate_json(capsys: pytest.CaptureFixture[str], broken_folder: Path) -> None:
    code, out, _ = run(capsys, "validate", str(broken_folder), "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False
    assert report["files"] == [str(broken_folder / "broken.yaml"), str(broken_folder / "good.yaml")]
    assert report["problems"] == [
        {
            "file": str(broken_folder / "broken.yaml"),
            "line": 15,
            "column": 44,
            "path": "images[0].flux.guidance",
            "message": "images[0].flux.guidance: must be a number from 1.5 to 10 in steps of 0.1; got 3.33",
        }
    ]


def test_validate_json_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(SPECS), "--format", "json")
    assert code == 0
    assert json.loads(out) == {"valid": True, "files": [str(f) for f in EXAMPLES], "problems": []}


def test_validate_duplicate_dag_ids(capsys: pytest.CaptureFixture[str]) -> None:
    folder = ROOT / "tests" / "specs" / "duplicate_dag_id"
    code, out, _ = run(capsys, "validate", str(folder), "--format", "json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert sorted((Path(p["file"]).name, p["line"]) for p in problems) == [
        ("daily_banners.yaml", 4),
        ("weekly_banners.yaml", 3),
    ]


def test_validate_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    code, out, err = run(capsys, "validate", str(SPECS), str(missing))
    assert code == 2
    assert out == ""
    assert f"no such file or folder: {missing}" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "--format", "xml"],
        ["validate", "--colour"],
        ["plan"],
        ["plan", "specs/product_launch.yaml", "--price-per-megapixel", "-1"],
        ["plan", "specs/product_launch.yaml", "--price-per-megapixel", "cheap"],
        ["schema", "--response"],
        ["frobnicate"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "no command",
)
def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert "usage: flexflow" in usage_error(capsys, *argv)


def test_text_is_plain_without_a_terminal(capsys: pytest.CaptureFixture[str], broken_folder: Path) -> None:
    _, out, _ = run(capsys, "validate", str(broken_folder))
    assert ESCAPE not in out


@pytest.mark.parametrize(
    ("environment", "colored"),
    [({}, True), ({"NO_COLOR": "1"}, False), ({"TERM": "dumb"}, False)],
    ids=["terminal", "NO_COLOR", "TERM=dumb"],
)
def test_color_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, broken_folder: Path, environment: dict[str, str], colored: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["validate", str(broken_folder)]) == 1
    out = terminal.getvalue()
    assert (ESCAPE in out) is colored
    plain = re.sub(r"\033\[[0-9;]*m", "", out)
    assert f"{broken_folder / 'broken.yaml'}:15:44: " in plain
    assert "^" in plain.splitlines()[2]


# -- schema --------------------------------------------------------------------------------------


def test_committed_spec_schema_is_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    assert out == SPEC_SCHEMA.read_text(), (
        "schemas/flexflow-spec.schema.json is stale: run `flexflow schema > schemas/flexflow-spec.schema.json`"
    )


def test_committed_request_schema_is_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema", "--request")
    assert code == 0
    assert out == REQUEST_SCHEMA.read_text(), (
        "schemas/flux-2-flex-request.schema.json is stale: "
        "run `flexflow schema --request > schemas/flux-2-flex-request.schema.json`"
    )


@pytest.mark.parametrize("file", [SPEC_SCHEMA, REQUEST_SCHEMA], ids=lambda f: f.name)
def test_committed_schemas_are_draft_2020_12(file: Path) -> None:
    schema = json.loads(file.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_spec_schema_accepts_the_examples_in_process() -> None:
    validator = Draft202012Validator(json.loads(SPEC_SCHEMA.read_text()))
    for file in EXAMPLES:
        data, _ = load(file.read_text())
        assert list(validator.iter_errors(data)) == [], file.name


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(SPEC_SCHEMA), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )


def test_check_jsonschema_with_the_committed_schema(tmp_path: Path) -> None:
    """A third-party validator (what editors and pre-commit users run) agrees, steps included."""
    on_step = ROOT / "tests" / "specs" / "valid" / "launch_plan.yaml"
    assert "image_prompt_strength: 0.15" in on_step.read_text()
    load_spec(on_step)
    off_step = tmp_path / "off_step.yaml"
    off_step.write_text(on_step.read_text().replace("image_prompt_strength: 0.15", "image_prompt_strength: 0.17"))
    # 0.17 is indeed rejected by flexflow itself.
    with pytest.raises(
        SpecError, match=re.escape("image_prompt_strength: must be a number from 0 to 1 in steps of 0.05")
    ):
        load_spec(off_step)

    accepted = check_jsonschema(*EXAMPLES, on_step)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr

    rejected = check_jsonschema(off_step)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "images[0].flux.image_prompt_strength" in rejected.stdout
    assert "0.17" in rejected.stdout


# -- pre-commit ----------------------------------------------------------------------------------


def test_pre_commit_hook(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(hooks, list)
    hook = next(h for h in hooks if h["id"] == "flexflow-validate")
    assert hook["entry"] == "flexflow validate"
    assert hook["language"] == "python"
    assert hook["pass_filenames"] is False
    files = re.compile(hook["files"])
    assert all(files.search(str(f.relative_to(ROOT))) for f in EXAMPLES)
    assert not files.search("tests/specs/invalid/bad_cron.yaml")  # the corpus is broken on purpose
    # What pre-commit runs: the entry and the hook's args.
    command, *argv = hook["entry"].split()
    assert command == "flexflow"
    monkeypatch.chdir(ROOT)
    code, out, _ = run(capsys, *argv, *hook.get("args", []))
    assert code == 0, out


# -- plan ----------------------------------------------------------------------------------------

PLAN_SPEC = ROOT / "tests" / "specs" / "valid" / "launch_plan.yaml"
PLAN_TASKS = [
    "prepare",
    "hero.submit",
    "hero.wait",
    "hero.publish",
    "square.submit",
    "square.wait",
    "square.publish",
    "detail.submit",
    "detail.wait",
    "detail.publish",
    "finalize",
]
#: (image, variant, resolution, aspect ratio, pixels) of every job, variants expanded.
PLAN_JOBS = [
    ("hero", "_guidance-2p5", "2MP", "4:3", "1680x1248"),
    ("hero", "_guidance-3p5", "2MP", "4:3", "1680x1248"),
    ("hero", "_guidance-4p5", "2MP", "4:3", "1680x1248"),
    ("square", "_seed-1", "0.5MP", "1:1", "720x720"),
    ("square", "_seed-2", "0.5MP", "1:1", "720x720"),
    ("detail", "", "4MP", "3:4", "1776x2368"),
]


def test_plan_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", str(PLAN_SPEC), "--price-per-megapixel", "0.10")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"launch_plan  ({PLAN_SPEC})"
    assert lines[1].startswith("schedule manual only | connection apiframe_default | publish file:///tmp/")
    for task_id in PLAN_TASKS:
        assert re.search(rf"^{re.escape(task_id)}\s", out, re.MULTILINE), task_id
    assert re.search(r"^hero\.submit\s+FluxFlexOperator\s+prepare\s+3$", out, re.MULTILINE)
    assert re.search(
        r"^finalize\s+FinalizeRunOperator\s+prepare, hero\.publish, square\.publish, detail\.publish\s+1$", out, re.M
    )
    for image, variant, resolution, aspect, pixels in PLAN_JOBS:
        row = rf"^{image}\s+{re.escape(variant or '-')}\s+{re.escape(resolution)}\s+{aspect}\s+{pixels}\s+webp$"
        assert re.search(row, out, re.MULTILINE), row
    # 3 + 2 + 1 jobs; 3x2 + 2x0.5 + 4 = 11 output megapixels; billed: each output rounded up to whole
    # megapixels (at least 1) plus 1 per reference image: 3x(2+1) + 2x1 + 4 = 15; 15 x $0.10 = $1.50.
    assert lines[-2:] == [
        "jobs per run: 6 | output megapixels: 11 | billed megapixels: 15"
        " | estimated cost per run: $1.50 (at $0.10 per megapixel)",
        "reuse: off (an image has no fixed seed; set reuse: true to reuse): every run pays for every image",
    ]


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", str(PLAN_SPEC), "--format", "json")
    assert code == 0
    plan = json.loads(out)
    assert plan["dag_id"] == "launch_plan"
    assert plan["file"] == str(PLAN_SPEC)
    assert plan["schedule"] is None
    assert plan["reuse"] is False, "not every image has a fixed seed"
    assert [t["task_id"] for t in plan["tasks"]] == PLAN_TASKS
    assert [t["mapped"] for t in plan["tasks"]] == [None, 3, 3, 3, 2, 2, 2, None, None, None, None]
    assert plan["tasks"][-1]["upstream"] == ["prepare", "hero.publish", "square.publish", "detail.publish"]
    assert [(j["image"], j["variant"], j["resolution"], j["aspect_ratio"], j["pixels"]) for j in plan["jobs"]] == (
        PLAN_JOBS
    )
    assert plan["jobs_per_run"] == 6
    assert plan["megapixels_per_run"] == 11
    assert plan["billed_megapixels_per_run"] == 15
    assert plan["credits_per_run"] == 75, "5 credits per billed megapixel (a reference image bills one)"
    assert plan["price_per_megapixel"] == "0.05"  # the default
    assert Decimal(plan["estimated_cost_per_run"]) == Decimal("0.75")


def test_plan_price_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", str(PLAN_SPEC), "--format", "json", "--price-per-megapixel", "0.1")
    assert code == 0
    assert json.loads(out)["estimated_cost_per_run"] == "1.5"  # Decimal: no 1.5000000000000002


@pytest.mark.parametrize("file", EXAMPLES, ids=lambda f: f.name)
def test_plan_of_every_example(capsys: pytest.CaptureFixture[str], file: Path) -> None:
    code, out, _ = run(capsys, "plan", str(file), "--format", "json", "--price-per-megapixel", "2")
    assert code == 0
    plan = json.loads(out)
    spec = load_spec(file)
    assert plan["dag_id"] == spec.dag_id
    assert plan["jobs_per_run"] == len(plan["jobs"]) == spec.job_count
    assert plan["jobs_per_run"] == sum(len(image.variants) for image in spec.images)
    assert plan["megapixels_per_run"] == spec.megapixels
    assert len(plan["tasks"]) == 3 * len(spec.images) + 2  # prepare, per image three, finalize
    assert Decimal(plan["estimated_cost_per_run"]) == 2 * plan["billed_megapixels_per_run"]
    code, text, _ = run(capsys, "plan", str(file))
    assert code == 0
    assert f"jobs per run: {spec.job_count} |" in text


def test_plan_of_an_invalid_spec(capsys: pytest.CaptureFixture[str]) -> None:
    file = INVALID / "bad_cron.yaml"
    code, out, err = run(capsys, "plan", str(file))
    assert code == 1
    assert out == ""
    first = err.splitlines()[0]
    assert first.startswith(f"{file}:5:1: schedule: ")
    assert "61 6 * * MON" in first
    assert "is not a valid cron expression" in first


@pytest.mark.parametrize("target", ["missing.yaml", "."], ids=["missing file", "a folder"])
def test_plan_of_a_missing_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str
) -> None:
    """No traceback: a clear message and the usage exit code, as ``validate`` does (see report)."""
    path = tmp_path / target
    code, out, err = run(capsys, "plan", str(path))
    assert code == 2
    assert out == ""
    assert str(path) in err


# -- the real command ----------------------------------------------------------------------------


def test_as_a_subprocess(broken_folder: Path) -> None:
    def flexflow(*argv: str) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        return subprocess.run(
            [sys.executable, "-m", "flexflow.cli", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
        )

    valid = flexflow("validate", "specs", "--format", "json")
    assert valid.returncode == 0, valid.stderr
    assert json.loads(valid.stdout)["valid"] is True

    broken = flexflow("validate", str(broken_folder))
    assert broken.returncode == 1, broken.stderr
    assert f"{broken_folder / 'broken.yaml'}:15:44: images[0].flux.guidance" in broken.stdout
    assert ESCAPE not in broken.stdout  # a pipe is not a terminal

    missing = flexflow("validate", "no/such/folder")
    assert missing.returncode == 2
    assert "no such file or folder: no/such/folder" in missing.stderr

    bad_flag = flexflow("validate", "--format", "yaml")
    assert bad_flag.returncode == 2
    assert "invalid choice" in bad_flag.stderr
