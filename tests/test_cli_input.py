"""The CLI never shows a traceback for bad input: every command, random flags, exit 0, 1 or 2 with a message."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexflow.cli import main
from flexflow.compiler.dag_file import dag_file_source
from flexflow.run import RunError, RunHome, check_connection_id, prepare
from tests.conftest import ROOT

SPEC = ROOT / "specs" / "spring_social_refresh.yaml"
#: What a command line can hold: any character but a lone surrogate (argv is bytes decoded by the OS).
TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
#: Numbers as people (and fuzzers) write them, including those a price must refuse.
NUMBERS = st.sampled_from(["NaN", "nan", "Infinity", "-inf", "1e999999", "-0.01", "0", "-0", "0.05", "1000", "1e3"])


@contextlib.contextmanager
def workspace(root: Path) -> Iterator[dict[str, str]]:
    """A folder to run in, with a file, a folder and a broken spec; the commands see only this."""
    (root / "folder").mkdir()
    (root / "file.txt").write_text("not a folder\n")
    (root / "broken.yaml").write_text("version: 1\ndag_id: [not, a, name]\n")
    previous = Path.cwd()
    os.chdir(root)
    try:
        yield {
            "file": str(root / "file.txt"),
            "folder": str(root / "folder"),
            "broken": str(root / "broken.yaml"),
            "missing": str(root / "missing.yaml"),
            "spec": str(SPEC),
        }
    finally:
        os.chdir(previous)


def argv_strategy(paths: dict[str, str]) -> st.SearchStrategy[list[str]]:
    path = st.sampled_from(sorted(paths.values())) | TEXT
    # `flexflow run` is only given specs it cannot run: this checks inputs, it does not run Airflow.
    unrunnable = st.sampled_from([paths["broken"], paths["missing"], paths["folder"], paths["file"]]) | TEXT
    value = TEXT | NUMBERS | path
    flags = {
        "validate": [st.tuples(st.just("--format"), value).map(list)],
        "schema": [st.just(["--request"])],
        "plan": [
            st.tuples(st.just("--format"), value).map(list),
            st.tuples(st.just("--price-per-megapixel"), NUMBERS | TEXT).map(list),
        ],
        "run": [
            st.tuples(st.just("--connection"), TEXT | st.sampled_from(["apiframe_default", "a;b", "x" * 251])).map(
                list
            ),
            st.tuples(st.just("--home"), path).map(list),
        ],
        # The emulator would serve forever on valid flags: it always gets one argparse refuses.
        "emulator": [
            st.tuples(st.sampled_from(["--port", "--queue-seconds", "--credits", "--fault"]), value).map(list),
        ],
    }
    positional = {"validate": path, "schema": TEXT, "plan": path, "run": unrunnable, "emulator": TEXT}

    @st.composite
    def one(draw: st.DrawFn) -> list[str]:
        command = draw(st.sampled_from(sorted(flags)))
        argv = [command]
        argv += draw(st.lists(positional[command], max_size=2))
        for _ in range(draw(st.integers(0, 3))):
            argv += draw(st.one_of(*flags[command]))
        if command == "emulator":
            argv += ["--result-shape", "not-a-shape"]
        argv += draw(st.lists(TEXT | st.sampled_from(["--help", "--version", "-x", "--"]), max_size=1))
        return argv

    return one()


def run_cli(argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help, --version
            code = exc.code if isinstance(exc.code, int) else 2
    return code, stderr.getvalue()


def test_random_command_lines_exit_0_1_or_2_without_a_traceback(tmp_path: Path) -> None:
    with workspace(tmp_path) as paths:

        @settings(
            derandomize=True,
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(argv_strategy(paths))
        def check(argv: list[str]) -> None:
            code, err = run_cli(argv)
            assert code in (0, 1, 2), (argv, code, err)
            assert "Traceback" not in err, (argv, err)

        check()
    assert not (tmp_path / ".flexflow").exists(), "no command line set up a run"


@pytest.mark.parametrize("price", ["NaN", "Infinity", "-Infinity", "1e999999", "-0.01", "1000.01", "0x10", ""])
def test_a_price_must_be_a_finite_number_from_0_to_1000(price: str) -> None:
    code, err = run_cli(["plan", str(SPEC), f"--price-per-megapixel={price}"])
    assert code == 2
    assert f"{price!r} is not a price: give a number from 0 to 1000 (USD)" in err


@pytest.mark.parametrize("price", ["0", "-0", "0.05", "1000", "1e3"])
def test_prices_from_0_to_1000_are_taken(price: str) -> None:
    assert run_cli(["plan", str(SPEC), f"--price-per-megapixel={price}", "--format", "json"])[0] == 0


def test_a_home_must_be_a_folder_that_can_be_created(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    for home, message in [
        (str(file), "is a file, not a folder"),
        (str(file / "below"), "is not a folder you can write to"),
        ("bad\0name", "holds a NUL character"),
    ]:
        code, err = run_cli(["run", str(SPEC), "--home", home])
        assert code == 2 and message in err, (home, err)


@pytest.mark.parametrize("connection", ["", "a;b", "x" * 251, "name with spaces", "émoji_🎨", '"quoted"'])
def test_a_connection_must_be_an_airflow_connection_id(connection: str) -> None:
    code, err = run_cli(["run", str(SPEC), f"--connection={connection}"])
    assert code == 2
    assert "is not an Airflow connection id" in err


def test_the_connection_id_is_checked_where_it_is_written_into_the_dag_file(tmp_path: Path) -> None:
    home = RunHome(tmp_path / "home")
    with pytest.raises(RunError, match="is not an Airflow connection id"):
        prepare(home, SPEC, 'x", connection_id=__import__("os").getcwd(), y="')
    assert not (home.dags / "flexflow_dags.py").exists(), "nothing was written"
    assert check_connection_id("apiframe_prod.eu-1") == "apiframe_prod.eu-1"
    prepare(home, SPEC, "apiframe_prod.eu-1")
    assert (home.dags / "flexflow_dags.py").read_text() == dag_file_source(str(SPEC), "apiframe_prod.eu-1")
