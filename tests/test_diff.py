"""``flexflow diff``: specs compared between git revisions, the working tree and folders (issue 14).

Every test builds its own small git history in tmp_path (no global git configuration is read), and
nothing depends on today's date: runs per month are counted in the fixed year 2026.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flexflow.cli import main
from flexflow.spec import load_spec
from flexflow.spec.diff import image_values, runs_per_month, runs_per_year, spec_values
from flexflow.spec.diff_report import MARKDOWN_MARKER
from flexflow.spec.model import ImageSpec, Spec
from flexflow.spec.sources import SourceError, resolve_commit, specs_path

ALPHA = """\
version: 1
dag_id: alpha
schedule: "0 6 * * MON"
start_date: 2026-11-01
defaults:
  flux: {resolution: 1MP, output_format: png}
images:
  - name: hero
    prompt: "Hero banner, spring palette"
    flux: {aspect_ratio: "16:9", seed: 42}
  - name: story
    prompt: "Story background"
    variants: {seed: [1, 2, 3]}
  - name: retired
    prompt: "An image that goes away"
    flux: {seed: 5}
publish:
  to: "file:///tmp/flexflow-diff-test/alpha"
"""

#: alpha with one change of every kind: schedule, a flux param, a prompt, variants added, removed and
#: changed, an image added and one removed, publish settings.
ALPHA_CHANGED = """\
version: 1
dag_id: alpha
schedule: "@daily"
start_date: 2026-11-01
defaults:
  flux: {resolution: 1MP, output_format: png}
images:
  - name: hero
    prompt: "Hero banner, summer palette"
    flux: {aspect_ratio: "16:9", seed: 42, resolution: 2MP}
  - name: story
    prompt: "Story background"
    flux: {aspect_ratio: "9:16"}
    variants: {seed: [2, 3, 4]}
  - name: poster
    prompt: "A new poster"
    flux: {seed: 9}
publish:
  to: "file:///tmp/flexflow-diff-test/alpha"
  filename: "{image}{variant}-v2.{ext}"
  manifest: false
"""

BETA = """\
version: 1
dag_id: beta
schedule: null
images:
  - name: one
    prompt: "Beta"
    flux: {seed: 1}
publish:
  to: "file:///tmp/flexflow-diff-test/beta"
"""

GAMMA = """\
version: 1
dag_id: gamma
schedule: "@weekly"
start_date: 2026-11-01
images:
  - name: big
    prompt: "Gamma"
    flux: {resolution: 4MP, seed: 3}
publish:
  to: "file:///tmp/flexflow-diff-test/gamma"
budget:
  credits_per_run: 100
  price_per_megapixel: 0.10
"""

HOSTILE_PROMPT = "Cell | breaker `code` <script>alert(1)</script> @octocat #1 [x](javascript:alert(1))\nsecond line"


# -- helpers --------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=flexflow test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false",
         *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture(autouse=True)
def _no_global_git_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    """Write (or, for None, delete) files under the repository, commit them all, return the commit id."""
    for name, text in files.items():
        path = repo / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose first commit (tag ``v1``) holds alpha and beta; the cwd of the test."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, {"specs/alpha.yaml": ALPHA, "specs/beta.yaml": BETA, "README": "x\n"}, "first")
    git(root, "tag", "v1")
    monkeypatch.chdir(root)
    return root


def diff(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["diff", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def diff_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = diff(capsys, *argv, "--format", "json")
    assert out, err
    return code, json.loads(out)


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {spec["dag_id"]: spec for spec in report["specs"]}


def changes(item: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {c["field"]: (c["old"], c["new"]) for c in item["changes"]}


# -- every kind of change -------------------------------------------------------------------------


def test_every_kind_of_change_between_two_revisions(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/alpha.yaml": ALPHA_CHANGED, "specs/beta.yaml": None, "specs/gamma.yaml": GAMMA}, "change")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 2
    assert report["changes"] is True and report["invalid"] is False
    assert report["summary"] | {"usd_per_month": None} == {
        "added": 1,
        "removed": 1,
        "changed": 1,
        "fixed": 0,
        "unchanged": 0,
        "invalid": 0,
        "usd_per_month": None,
        "runs_per_month": report["summary"]["runs_per_month"],
    }
    specs = by_id(report)
    assert {dag_id: s["status"] for dag_id, s in specs.items()} == {
        "alpha": "changed",
        "beta": "removed",
        "gamma": "added",
    }
    alpha = specs["alpha"]
    assert changes(alpha) == {
        "schedule": ("0 6 * * MON", "@daily"),
        "publish.filename": ("{image}{variant}.{ext}", "{image}{variant}-v2.{ext}"),
        "publish.manifest": (True, False),
    }
    images = {i["name"]: i for i in alpha["images"]}
    assert {name: i["status"] for name, i in images.items()} == {
        "hero": "changed",
        "story": "changed",
        "retired": "removed",
        "poster": "added",
    }
    assert changes(images["hero"]) == {
        "prompt": ("Hero banner, spring palette", "Hero banner, summer palette"),
        "flux.resolution": ("1MP", "2MP"),
    }
    assert images["hero"]["variants"] == [], "an image without variants is its one job"
    # The image's resolved flux: aspect_ratio was the documented default 1:1.
    assert changes(images["story"]) == {"flux.aspect_ratio": ("1:1", "9:16")}
    variants = {v["label"]: v for v in images["story"]["variants"]}
    assert {label: v["status"] for label, v in variants.items()} == {
        "_seed-1": "removed",
        "_seed-2": "changed",
        "_seed-3": "changed",
        "_seed-4": "added",
    }
    assert changes(variants["_seed-2"]) == {"flux.aspect_ratio": ("1:1", "9:16")}
    assert images["poster"]["jobs"] == {"base": 0, "head": 1}
    assert images["retired"]["jobs"] == {"base": 1, "head": 0}

    # The spend: per run before and after, runs per month from the schedules.
    spend = alpha["spend"]
    assert spend["base"]["per_run"]["jobs"] == 5 and spend["head"]["per_run"]["jobs"] == 5
    assert spend["base"]["runs_per_month"] == "4.33"  # 52 Mondays in 2026
    assert spend["head"]["runs_per_month"] == "30.42"  # 365 days
    assert specs["beta"]["spend"]["head"]["per_run"]["jobs"] == 0
    assert specs["beta"]["spend"]["base"]["runs_per_month"] == "0.00", "manual only"
    assert specs["gamma"]["spend"]["head"]["price_per_megapixel"] == "0.1", "the spec's budget price"


def test_text_output_names_each_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/alpha.yaml": ALPHA_CHANGED, "specs/beta.yaml": None, "specs/gamma.yaml": GAMMA}, "change")
    code, out, _ = diff(capsys, "v1", "main")
    assert code == 2
    assert "~ alpha (changed; specs/alpha.yaml)" in out
    assert "- beta (removed; specs/beta.yaml)" in out
    assert "+ gamma (added; specs/gamma.yaml)" in out
    assert '    schedule: "0 6 * * MON" -> "@daily"' in out
    assert '        flux.resolution: "1MP" -> "2MP"' in out
    assert "    + image poster (1 job(s) per run)" in out
    assert "        - variant _seed-1" in out
    assert "        + variant _seed-4" in out
    assert re.search(r"^1 added, 1 removed, 1 changed, 0 unchanged, 0 invalid \| expected spend per month", out, re.M)


def test_no_changes_exit_0_and_a_renamed_file_is_no_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = diff(capsys, "v1", "main")
    assert (code, "no changes (2 spec(s) unchanged)" in out) == (0, True)
    # Renamed, comments added, a default written out: the same spec.
    reworded = "# a comment\n" + ALPHA.replace("publish:\n", "publish:\n  manifest: true\n")
    commit(repo, {"specs/alpha.yaml": None, "specs/renamed/alpha_v2.yml": reworded}, "rename")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 0, report
    assert report["specs"] == [] and report["summary"]["unchanged"] == 2


def test_a_renamed_file_with_a_change_shows_both_files(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/alpha.yaml": None, "specs/alpha2.yaml": ALPHA.replace("spring", "autumn")}, "rename")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 2
    alpha = by_id(report)["alpha"]
    assert alpha["file"] == {"base": "specs/alpha.yaml", "head": "specs/alpha2.yaml"}
    assert [i["name"] for i in alpha["images"]] == ["hero"]


def test_working_tree_is_the_default_head(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "specs/beta.yaml").write_text(BETA.replace('"Beta"', '"Beta, uncommitted"'))
    code, report = diff_json(capsys, "main")
    assert code == 2
    assert report["head"]["label"] == "working tree" and report["head"]["commit"] is None
    assert report["base"]["commit"] == git(repo, "rev-parse", "main").strip()
    beta = by_id(report)["beta"]
    assert changes(beta["images"][0]) == {"prompt": ("Beta", "Beta, uncommitted")}
    assert (repo / "specs/beta.yaml").read_text().count("uncommitted") == 1, "the working tree is left alone"
    assert git(repo, "status", "--porcelain") == " M specs/beta.yaml\n"


def test_two_folders_need_no_git(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "specs").mkdir(parents=True)
    (new / "specs").mkdir(parents=True)
    (old / "specs/alpha.yaml").write_text(ALPHA)
    (new / "specs/alpha.yaml").write_text(ALPHA_CHANGED)
    monkeypatch.chdir(tmp_path)  # not a git repository
    code, report = diff_json(capsys, "old", "new")
    assert code == 2
    assert report["base"]["folder"] == "old/specs" and report["head"]["folder"] == "new/specs"
    assert by_id(report)["alpha"]["file"] == {"base": "old/specs/alpha.yaml", "head": "new/specs/alpha.yaml"}
    # --specs . compares two folders of specs directly.
    code, report = diff_json(capsys, "old/specs", "new/specs", "--specs", ".")
    assert code == 2 and by_id(report)["alpha"]["status"] == "changed"
    code, report = diff_json(capsys, "old", "old")
    assert code == 0


def test_specs_folder_option(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"deploy/dags/specs/gamma.yaml": GAMMA}, "another folder")
    code, report = diff_json(capsys, "v1", "main", "--specs", "deploy/dags/specs")
    assert code == 2
    assert report["base"]["exists"] is False, "v1 had no such folder: every spec is added"
    assert by_id(report)["gamma"]["status"] == "added"
    code, _, err = diff(capsys, "v1", "main", "--specs", "no/such/folder")
    assert code == 1 and "neither side has a specs folder" in err
    code, _, err = diff(capsys, "v1", "main", "--specs", "../outside")
    assert code == 1 and "without '..'" in err


# -- spend agrees with plan -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "text"), [("alpha", ALPHA_CHANGED), ("gamma", GAMMA)])
def test_spend_equals_plan(repo: Path, capsys: pytest.CaptureFixture[str], name: str, text: str) -> None:
    commit(repo, {f"specs/{name}.yaml": text}, "spec")
    _, report = diff_json(capsys, "v1", "main")
    per_run = by_id(report)[name]["spend"]["head"]["per_run"]
    assert main(["plan", f"specs/{name}.yaml", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert per_run["jobs"] == plan["jobs_per_run"]
    assert per_run["billed_megapixels"] == plan["billed_megapixels_per_run"]
    assert per_run["credits"] == plan["credits_per_run"]
    assert per_run["usd"] == plan["estimated_cost_per_run"]
    assert by_id(report)[name]["spend"]["head"]["price_per_megapixel"] == plan["price_per_megapixel"]
    assert Decimal(per_run["usd"]) > 0 and per_run["credits"] > 0


def test_monthly_spend_is_runs_per_month_times_one_run(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/gamma.yaml": GAMMA}, "gamma")
    _, report = diff_json(capsys, "v1", "main")
    head = by_id(report)["gamma"]["spend"]["head"]
    # @weekly: the 52 Sundays of 2026; one run: a 4MP job, 4 billed megapixels at the budget's $0.10.
    assert head["per_run"] == {"jobs": 1, "billed_megapixels": 4, "credits": 20, "usd": "0.4"}
    assert head["usd_per_month"] == str((Decimal("0.40") * 52 / 12).quantize(Decimal("0.01"))) == "1.73"
    assert report["summary"]["usd_per_month"]["delta"] == "1.73"


@pytest.mark.parametrize(
    ("schedule", "runs"),
    [
        (None, 0),
        ("@once", 0),
        ("@hourly", 8760),
        ("@daily", 365),
        ("@weekly", 52),
        ("@monthly", 12),
        ("@quarterly", 4),
        ("@yearly", 1),
        ("0 6 * * MON", 52),
        ("30 9,17 * * 1-5", 522),  # 261 weekdays in 2026, twice a day
        ("0 */6 1,15 * *", 96),  # 24 days, 4 times each
        ("0 0 29 2 *", 0),  # 2026 has no 29 February
    ],
)
def test_runs_per_year_is_the_fixed_year_2026(schedule: str | None, runs: int) -> None:
    assert runs_per_year(schedule) == runs
    assert runs_per_month(schedule) == Decimal(runs) / 12


# -- output formats -------------------------------------------------------------------------------


def test_markdown_is_a_comment_with_a_table_and_details(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/alpha.yaml": ALPHA_CHANGED, "specs/beta.yaml": None, "specs/gamma.yaml": GAMMA}, "change")
    code, out, _ = diff(capsys, "v1", "main", "--format", "markdown")
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == MARKDOWN_MARKER
    header = lines.index("| | spec | jobs per run | credits per run | USD per run | runs per month | USD per month |")
    rows = lines[header + 2 : header + 5]
    assert [row.split(" | ")[0:2] for row in rows] == [
        ["| changed", "alpha"],
        ["| removed", "beta"],
        ["| added", "gamma"],
    ]
    assert all(len(_cells(row)) == 7 for row in rows)
    assert out.count("<details>") == out.count("</details>") == 3
    assert "<summary><b>alpha</b>: changed</summary>" in out
    assert '- schedule: \\"0 6 \\* \\* MON\\" → \\"\\@daily\\"' in out


def _cells(row: str) -> list[str]:
    """A table row's cells, split only at pipes Markdown reads as cell borders (not escaped ones)."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_markdown_escapes_hostile_prompts(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = ALPHA.replace('"Hero banner, spring palette"', json.dumps(HOSTILE_PROMPT)).replace(
        "dag_id: alpha", "dag_id: alpha\ndescription: '</details><img src=x onerror=alert(1)>'"
    )
    commit(repo, {"specs/alpha.yaml": hostile}, "hostile")
    code, out, _ = diff(capsys, "v1", "main", "--format", "markdown")
    assert code == 2
    assert "<script" not in out and "<img" not in out and "</details><" not in out
    assert out.count("<details>") == out.count("</details>") == 1, "a prompt cannot close the details"
    assert not re.search(r"(?<!\\)`", out), "no backtick opens code"
    assert not re.search(r"(?<!\\)@octocat", out), "nobody is mentioned"
    assert not re.search(r"(?<!\\)#1", out), "no issue is linked"
    assert "](javascript" not in out
    prompt_line = next(line for line in out.splitlines() if "prompt" in line)
    # The value is shown as JSON writes it: its line break as \n (a backslash, escaped, and n), in one item.
    assert prompt_line.endswith('alert\\(1\\)\\)\\\\nsecond line\\"'), prompt_line
    assert "Cell \\| breaker" in prompt_line
    table_rows = [line for line in out.splitlines() if line.startswith("| changed")]
    assert len(table_rows) == 1 and len(_cells(table_rows[0])) == 7


def test_text_output_spells_out_escape_sequences(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/alpha.yaml": ALPHA.replace("spring palette", "spring\\u202e palette")}, "bidi")
    code, out, _ = diff(capsys, "v1", "main")
    assert code == 2
    assert "\u202e" not in out and "[U+202E]" in out


def test_json_structure(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/gamma.yaml": GAMMA}, "gamma")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 2
    assert set(report) == {"diff_version", "base", "head", "changes", "invalid", "summary", "specs"}
    assert report["base"] == {
        "label": "v1",
        "commit": git(repo, "rev-parse", "v1").strip(),
        "folder": "specs",
        "exists": True,
    }
    gamma = by_id(report)["gamma"]
    assert set(gamma) == {"dag_id", "status", "file", "changes", "images", "spend", "invalid"}
    assert gamma["images"] == [
        {"name": "big", "status": "added", "jobs": {"base": 0, "head": 1}, "changes": [], "variants": []}
    ]
    assert gamma["spend"]["delta"] == {
        "jobs_per_run": 1,
        "credits_per_run": 20,
        "usd_per_run": "0.4",
        "usd_per_month": "1.73",
    }


# -- errors: exit 1 -------------------------------------------------------------------------------


def test_an_invalid_spec_is_shown_and_exits_1(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = BETA.replace('prompt: "Beta"', "prompt: 42").replace("flux: {seed: 1}", "flux: {seed: 1, stpes: 4}")
    commit(repo, {"specs/beta.yaml": broken, "specs/alpha.yaml": ALPHA_CHANGED}, "break beta")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 1, "an invalid spec outweighs the changes"
    assert report["invalid"] is True and report["summary"]["invalid"] == 1
    beta = by_id(report)["beta"]
    assert beta["status"] == "invalid"
    [problem] = beta["invalid"]
    assert problem["side"] == "head" and problem["file"] == "specs/beta.yaml"
    messages = " ".join(p["text"] for p in problem["problems"])
    assert "specs/beta.yaml:" in messages and "stpes" in messages
    assert by_id(report)["alpha"]["status"] == "changed", "the other specs are still compared"
    code, out, _ = diff(capsys, "v1", "main")
    assert code == 1
    assert "! beta (invalid; specs/beta.yaml)" in out and "invalid in head (specs/beta.yaml):" in out


def test_a_spec_invalid_in_base_only_is_fixed_or_removed_not_an_error(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pull request that repairs (or deletes) a spec broken on main must not fail its check."""
    commit(repo, {"specs/beta.yaml": BETA.replace('prompt: "Beta"', "prompt: 42")}, "break beta on main")
    git(repo, "tag", "broken")
    commit(repo, {"specs/beta.yaml": BETA}, "repair beta")
    code, report = diff_json(capsys, "broken", "main")
    assert code == 2 and report["invalid"] is False
    beta = by_id(report)["beta"]
    assert beta["status"] == "fixed" and [p["side"] for p in beta["invalid"]] == ["base"]
    assert report["summary"]["fixed"] == 1 and report["summary"]["invalid"] == 0
    commit(repo, {"specs/beta.yaml": None}, "delete beta")
    code, report = diff_json(capsys, "broken", "main")
    assert code == 2 and by_id(report)["beta"]["status"] == "removed"
    # The other way round, the change breaks it: exit 1.
    code, report = diff_json(capsys, "v1", "broken")
    assert code == 1 and by_id(report)["beta"]["status"] == "invalid"


def test_markdown_shows_an_invalid_spec(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/beta.yaml": BETA.replace("version: 1", "version: 7")}, "break beta")
    code, out, _ = diff(capsys, "v1", "main", "--format", "markdown")
    assert code == 1
    assert "**Invalid specs: this change cannot be merged as it is (details below).**" in out
    assert "| invalid | beta |" in out
    assert "- **invalid in head** (specs/beta\\.yaml):" in out


def test_a_duplicate_dag_id_is_invalid(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit(repo, {"specs/copy.yaml": BETA}, "copy")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 1
    assert {p["file"] for p in by_id(report)["beta"]["invalid"]} == {"specs/beta.yaml", "specs/copy.yaml"}
    texts = {p["problems"][0]["text"] for p in by_id(report)["beta"]["invalid"]}
    assert texts == {
        "specs/beta.yaml:2:1: dag_id: 'beta' is also the dag_id of specs/copy.yaml",
        "specs/copy.yaml:2:1: dag_id: 'beta' is also the dag_id of specs/beta.yaml",
    }


def test_bad_revisions_exit_1(repo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = diff(capsys, "no-such-branch", "main")
    assert code == 1 and "'no-such-branch' is neither a folder nor a commit" in err
    blob = git(repo, "rev-parse", "main:README").strip()
    code, _, err = diff(capsys, blob, "main")
    assert code == 1, "a blob is not a commit"
    target = tmp_path / "written"
    code, _, err = diff(capsys, "--", f"--output={target}", "main")
    assert code == 1 and "not an option" in err
    assert not target.exists()
    with pytest.raises(SourceError, match="not an option"):
        resolve_commit(f"--output={target}", repo)
    with pytest.raises(SourceError):
        specs_path("/etc")


def test_usage_errors_exit_1_not_2(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff"]) == 1, "no BASE"
    assert main(["diff", "v1", "--format", "yaml"]) == 1
    assert main(["diff", "v1", "--output=/tmp/x"]) == 1, "an unknown option"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["plan"])
    assert exited.value.code == 2, "other commands keep their usage exit code"


def test_outside_a_repository_a_revision_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = diff(capsys, "main")
    assert code == 1 and "not in a git repository" in err


# -- nothing a spec says escapes the comparison -----------------------------------------------------


def test_every_field_of_the_model_is_compared() -> None:
    """A new spec or image key must be added to what diff compares, or it would change unseen."""
    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "spring_social_refresh.yaml")
    compared = {key.split(".")[0] for key in spec_values(spec)}
    not_compared = {"path", "source", "digest", "dag_id", "images", "extras"}  # identity, text, images apart
    assert {f.name for f in dataclasses.fields(Spec)} - not_compared <= compared
    assert "budget" in compared and "params" in compared and "publish" in compared
    compared = {key.split(".")[0] for key in image_values(spec.images[0])}
    assert {f.name for f in dataclasses.fields(ImageSpec)} - {"name", "variants"} <= compared


def test_a_revision_s_symlinks_are_followed_inside_it_big_files_not_read(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "specs/link.yaml").symlink_to("/etc/passwd")
    (repo / "shared").mkdir()
    (repo / "shared/gamma.yaml").write_text(GAMMA)
    (repo / "specs/gamma.yaml").symlink_to("../shared/gamma.yaml")  # as a checkout reads it: the target
    (repo / "specs/huge.yaml").write_text("# " + "x" * 1_100_000 + "\n")
    (repo / "specs/.hidden.yaml").write_text("not: a spec")
    commit(repo, {}, "a link, a huge file and a hidden one")
    code, report = diff_json(capsys, "v1", "main")
    assert code == 1
    problems = {p["file"]: p["problems"][0]["message"] for s in report["specs"] for p in s["invalid"]}
    assert problems.keys() == {"specs/link.yaml", "specs/huge.yaml"}, "hidden files are skipped"
    assert "a symlink to '/etc/passwd', outside the repository" in problems["specs/link.yaml"]
    assert by_id(report)["gamma"]["status"] == "added"
    assert by_id(report)["gamma"]["spend"]["head"]["per_run"]["credits"] == 20
    assert problems["specs/huge.yaml"].startswith("the file is larger than 1,000,000 bytes (1,100,003)")
