"""Generated docs are not stale."""

from __future__ import annotations

from flexflow.contract.docs import parameters_markdown
from tests.conftest import ROOT


def test_parameters_page_is_generated_from_the_table() -> None:
    page = (ROOT / "docs/parameters.md").read_text()
    assert page == parameters_markdown(), "stale: run `python -m flexflow.contract.docs > docs/parameters.md`"
