"""``flexflow diff`` shown: text for a terminal or CI log, Markdown for a pull-request comment, JSON.

Everything a spec says is hostile input here (a prompt is anyone's text). Text output spells out what a
terminal cannot show (:func:`flexflow.text.visible`: no escape sequences reach the log). Markdown output
escapes every character Markdown or HTML would read (``|`` cannot break a table, a backtick cannot open
code, ``<`` cannot open a tag, ``@`` cannot mention anyone, ``#1`` cannot link an issue), and puts line
breaks as ``<br>``, so a prompt shows as the text it is.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from flexflow.spec.diff import REFERENCE_YEAR, Change, Diff, ImageDiff, SpecDiff, Spend, money
from flexflow.text import visible

#: The first line of the Markdown: a CI step can find (and update) its own earlier comment by it.
MARKDOWN_MARKER = "<!-- flexflow-diff -->"
_SIGNS = {"added": "+", "removed": "-", "changed": "~", "fixed": "~", "invalid": "!"}
#: Every ASCII punctuation character CommonMark lets a backslash escape, but & < > (written as entities).
_MARKDOWN_SPECIAL = re.compile(r"""([\\`*_{}\[\]()#+\-.!|~"'$:@^])""")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# -- text -------------------------------------------------------------------------------------------


def render_text(found: Diff) -> str:
    lines = [
        f"flexflow diff {_t(_side_name(found, 'base'))} -> {_t(_side_name(found, 'head'))} ({_t(_folders(found))})"
    ]
    if not found.shown:
        lines.append(f"no changes ({found.count('unchanged')} spec(s) unchanged)")
    for spec in found.shown:
        lines.append("")
        lines.extend(_text_spec(spec))
    lines.append("")
    lines.append(_summary_line(found))
    return "\n".join(lines)


def _text_spec(spec: SpecDiff) -> list[str]:
    lines = [f"{_SIGNS[spec.status]} {_t(spec.dag_id)} ({spec.status}; {_t(_files(spec))})"]
    for side, bad in spec.invalid:
        lines.append(f"    invalid in {side} ({_t(bad.file)}):")
        lines.extend(f"      {_t(str(problem))}" for problem in bad.problems)
    lines.extend(f"    {_text_change(change)}" for change in spec.changes)
    for image in spec.images:
        lines.append(f"    {_SIGNS[image.status]} image {image.name}{_jobs_note(image)}")
        lines.extend(f"        {_text_change(change)}" for change in image.changes)
        for variant in image.variants:
            head = f"        {_SIGNS[variant.status]} variant {_t(variant.label)}"
            lines.append(head + (":" if variant.changes else ""))
            lines.extend(f"            {_text_change(change)}" for change in variant.changes)
    if spec.status != "invalid":
        lines.extend(f"    {line}" for line in _spend_lines(spec.spend[0], spec.spend[1]))
    return lines


def _text_change(change: Change) -> str:
    return f"{_t(change.field)}: {_t(_value(change.old))} -> {_t(_value(change.new))}"


def _spend_lines(base: Spend, head: Spend) -> list[str]:
    return [
        f"per run: {base.per_run.jobs} -> {head.per_run.jobs} job(s), {base.per_run.credits} -> "
        f"{head.per_run.credits} credits, ${base.per_run.usd:.2f} -> ${head.per_run.usd:.2f}{_price_note(base, head)}",
        f"per month: {money(base.runs_per_month)} -> {money(head.runs_per_month)} run(s), "
        f"${money(base.monthly_usd)} -> ${money(head.monthly_usd)} ({_signed(head.monthly_usd - base.monthly_usd)})",
    ]


def _summary_line(found: Diff) -> str:
    before, after = found.monthly_usd()
    return (
        f"{_counts(found)} | expected spend per month: ${money(before)} -> ${money(after)} ({_signed(after - before)})"
    )


def _counts(found: Diff) -> str:
    fixed = found.count("fixed")
    return (
        f"{found.count('added')} added, {found.count('removed')} removed, {found.count('changed')} changed, "
        + (f"{fixed} fixed, " if fixed else "")
        + f"{found.count('unchanged')} unchanged, {found.count('invalid')} invalid"
    )


def _t(text: str) -> str:
    return visible(text)


# -- Markdown ---------------------------------------------------------------------------------------


def render_markdown(found: Diff) -> str:
    before, after = found.monthly_usd()
    lines = [
        MARKDOWN_MARKER,
        f"### flexflow diff: {_md(_side_name(found, 'base'))} → {_md(_side_name(found, 'head'))}",
        "",
        _md(_folders(found)),
        "",
    ]
    if found.has_invalid:
        lines += ["**Invalid specs: this change cannot be merged as it is (details below).**", ""]
    if not found.shown:
        lines += [f"No changes to the specs ({found.count('unchanged')} unchanged).", ""]
    else:
        lines += [
            "| | spec | jobs per run | credits per run | USD per run | runs per month | USD per month |",
            "|---|---|---|---|---|---|---|",
        ]
        for spec in found.shown:
            base, head = spec.spend
            lines.append(
                "| "
                + " | ".join(
                    [
                        spec.status,
                        _md(spec.dag_id),
                        _arrow(base.per_run.jobs, head.per_run.jobs),
                        _arrow(base.per_run.credits, head.per_run.credits),
                        _arrow(f"${base.per_run.usd:.2f}", f"${head.per_run.usd:.2f}"),
                        _arrow(money(base.runs_per_month), money(head.runs_per_month)),
                        _arrow(f"${money(base.monthly_usd)}", f"${money(head.monthly_usd)}"),
                    ]
                )
                + " |"
            )
        lines.append("")
    lines += [
        f"**Expected spend per month: {_md(f'${money(before)}')} → {_md(f'${money(after)}')}"
        f" ({_md(_signed(after - before))})** · {_counts(found)}",
        "",
        f"<sub>Runs per month: the schedule's fire times in {REFERENCE_YEAR} (UTC) / 12; manual and \\@once: 0. "
        "USD at each spec's budget price, else the default, as flexflow plan shows it.</sub>",
    ]
    for spec in found.shown:
        lines += ["", "<details>", f"<summary><b>{_md(spec.dag_id)}</b>: {spec.status}</summary>", ""]
        lines += _markdown_spec(spec)
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _markdown_spec(spec: SpecDiff) -> list[str]:
    lines = [f"Files: {_md(_files(spec))}", ""]
    for side, bad in spec.invalid:
        lines.append(f"- **invalid in {side}** ({_md(bad.file)}):")
        lines.extend(f"  - {_md(str(problem))}" for problem in bad.problems)
    lines.extend(f"- {_md_change(change)}" for change in spec.changes)
    for image in spec.images:
        lines.append(f"- image **{_md(image.name)}**: {image.status}{_md(_jobs_note(image))}")
        lines.extend(f"  - {_md_change(change)}" for change in image.changes)
        for variant in image.variants:
            lines.append(f"  - variant **{_md(variant.label)}**: {variant.status}")
            lines.extend(f"    - {_md_change(change)}" for change in variant.changes)
    if spec.status != "invalid":
        lines.extend(f"- {_md(line)}" for line in _spend_lines(spec.spend[0], spec.spend[1]))
    return lines


def _md_change(change: Change) -> str:
    return f"{_md(change.field)}: {_md(_value(change.old))} → {_md(_value(change.new))}"


def _md(text: str) -> str:
    """``text`` as Markdown that shows exactly it: entities for & < >, a backslash before all other
    punctuation, ``<br>`` for line breaks, invisible characters spelled out."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", visible(text, keep="\n\r"))  # first: the entities' ; stays bare
    escaped = escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _LINE_BREAK.sub("<br>", escaped)


def _arrow(before: object, after: object) -> str:
    return _md(str(after)) if before == after else f"{_md(str(before))} → {_md(str(after))}"


# -- shared ---------------------------------------------------------------------------------------


def render_json(found: Diff) -> str:
    return json.dumps(found.to_json(), indent=2, ensure_ascii=False)


def _value(value: Any) -> str:
    """A value as JSON writes it (strings quoted, so ``"1"`` and ``1`` differ); absent as ``(none)``."""
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False)


def _side_name(found: Diff, which: str) -> str:
    side = found.base if which == "base" else found.head
    return side.label + (f" ({side.commit[:12]})" if side.commit else "")


def _folders(found: Diff) -> str:
    """The specs folder of each side (one, when they are the same), and a side that has none."""
    base, head = found.base, found.head
    shown = base.folder if base.folder == head.folder else f"{base.folder}, {head.folder}"
    missing = [f"none in {side.label}" for side in (base, head) if not side.exists]
    return f"specs: {shown}" + (f" ({'; '.join(missing)})" if missing else "")


def _files(spec: SpecDiff) -> str:
    old, new = spec.files
    if old and new and old != new:
        return f"{old} -> {new} (renamed)"
    return old or new or "?"


def _jobs_note(image: ImageDiff) -> str:
    before, after = image.jobs
    if image.status == "added":
        return f" ({after} job(s) per run)"
    if image.status == "removed":
        return f" ({before} job(s) per run)"
    return f" ({before} -> {after} job(s) per run)" if before != after else ""


def _price_note(base: Spend, head: Spend) -> str:
    prices = list(dict.fromkeys(str(p.price) for p in (base, head) if p.per_run.jobs))
    return f" (at ${' -> $'.join(prices)} per megapixel)" if prices else ""


def _signed(amount: Decimal) -> str:
    return f"+${money(amount)}" if amount >= 0 else f"-${money(-amount)}"
