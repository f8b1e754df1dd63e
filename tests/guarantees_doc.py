"""The generated tables of docs/guarantees.md: a test run writes them, and fails when they were stale.

Each table sits between ``<!-- BEGIN GENERATED {section} -->`` and ``<!-- END GENERATED {section} -->``.
:func:`publish_table` rewrites it from the rows a test measured, so the document always shows what the
last run of the tests proved. It then fails the test when the committed text differed: the rows are
deterministic (seeded faults, counted bills, no timings), so a difference means either a changed
behaviour or a stale document, and both must be looked at. Commit the rewritten file to accept it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.conftest import ROOT

GUARANTEES = ROOT / "docs" / "guarantees.md"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(row) for row in rows)])


def publish_table(section: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write the section's table into docs/guarantees.md; fail when the committed table was different."""
    begin, end = f"<!-- BEGIN GENERATED {section} -->", f"<!-- END GENERATED {section} -->"
    text = GUARANTEES.read_text()
    if begin not in text or end not in text:
        raise AssertionError(f"{GUARANTEES} has no {begin} ... {end} markers for the {section} table")
    head, rest = text.split(begin, 1)
    old, tail = rest.split(end, 1)
    new = f"\n{markdown_table(header, rows)}\n"
    GUARANTEES.write_text(f"{head}{begin}{new}{end}{tail}")
    assert old == new, (
        f"docs/guarantees.md's {section} table was stale; the test run rewrote it. Review the change "
        "(`git diff docs/guarantees.md`) and commit it if the new behaviour is right."
    )
