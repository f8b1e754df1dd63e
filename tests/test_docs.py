"""Generated docs are not stale."""

from __future__ import annotations

import ast
import re

from flexflow import defaults
from flexflow.contract.docs import parameters_markdown
from tests.conftest import ROOT

SPEC_PAGE = ROOT / "docs/spec.md"


def test_parameters_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs/parameters.md").read_text()
    assert page == parameters_markdown(), "stale: run `python -m flexflow.contract.docs > docs/parameters.md`"


def _split_at_defaults_block(page: str) -> tuple[str, str, str]:
    """The page before the generated defaults table, the table (markers included), and after it."""
    start, end = page.find(defaults.TABLE_START), page.find(defaults.TABLE_END)
    assert 0 <= start < end, f"docs/spec.md has no block between {defaults.TABLE_START} and {defaults.TABLE_END}"
    end += len(defaults.TABLE_END)
    return page[:start], page[start:end], page[end:]


def test_spec_page_embeds_the_defaults_table() -> None:
    _, block, _ = _split_at_defaults_block(SPEC_PAGE.read_text())
    assert block == defaults.defaults_markdown(), (
        "stale defaults in docs/spec.md: replace the block from its defaults:start to its defaults:end "
        "comment with the output of `python -m flexflow.defaults`"
    )


def _prose_defaults(text: str) -> dict[str, str]:
    """key -> default cell of the page's hand-written tables (those with a `default` column)."""
    found: dict[str, str] = {}
    column: int | None = None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:1] == ["key"]:
            column = cells.index("default") if "default" in cells else None
        elif not cells:
            column = None
        elif column is not None and cells[0].startswith("`"):
            found[cells[0].strip("`")] = cells[column]
    return found


def test_spec_page_prose_tables_agree_with_the_defaults_table() -> None:
    before, _, after = _split_at_defaults_block(SPEC_PAGE.read_text())
    written = _prose_defaults(before + after)
    expected = {d.key: f"`{defaults.shown(d.value)}`" for d in defaults.TABLE if d.key in written}
    assert {key: written[key] for key in expected} == expected
    assert {"retries", "retry_delay", "timeout", "poll_interval", "owner", "filename"} <= expected.keys()


def _named_tests(page: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for every ``tests/....py[::name]`` a page names; a bare ``::name``
    continues the file named last."""
    named: list[tuple[str, str | None]] = []
    last = ""
    for match in re.finditer(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", page):
        file, name = match.group(1), match.group(2)
        if file:
            last = file
        if file or name:
            named.append((file or last, name))
    return named


def test_every_test_the_guarantees_page_names_exists() -> None:
    """docs/guarantees.md links each guarantee to its tests: a renamed or removed test must not leave it
    pointing at nothing."""
    named = _named_tests((ROOT / "docs/guarantees.md").read_text())
    assert len(named) > 20, named
    for file, name in named:
        path = ROOT / file
        assert path.is_file(), f"docs/guarantees.md names {file}, which does not exist"
        if name:
            defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            assert name in defined, f"docs/guarantees.md names {file}::{name}, which is not a test there"
