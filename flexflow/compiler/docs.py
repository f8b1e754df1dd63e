"""The DAG docs (``doc_md``) of a compiled spec and of a broken one, as Markdown a spec cannot break out of.

Airflow 3's UI renders ``doc_md`` with react-markdown and remark-gfm: raw HTML is skipped
(``skipHtml``), but Markdown links are kept for http(s), irc(s), mailto and xmpp, and GFM turns URLs
and e-mail addresses in the text into links. So the docs do not lean on the UI (issue 11): text from a
spec is written with every ASCII punctuation character backslash-escaped, so it forms no link, image,
HTML or heading, and no address in it becomes a mailto: or xmpp: link (only http(s) URLs are linked);
values shown as code sit in code spans and fences longer than any backtick run inside them; characters
a reader cannot see are shown as ``[U+XXXX]``. Airflow reads a ``doc_md`` that ends in ``.md`` as a
file name, so every doc here ends with a newline. Nothing here imports Airflow.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import overload

from flexflow.spec.model import Spec
from flexflow.spec.problems import SpecProblem
from flexflow.text import visible

#: The longest description of a broken spec's DAG: the first problem, cut to fit one line of the DAG list.
DESCRIPTION_LIMIT = 250
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_BACKTICKS = re.compile("`+")
#: Splits the text GFM searches for e-mail addresses (remark's autolink transform works text node by
#: text node); it renders as nothing, and never starts a line, where it would open an HTML block.
EMPTY_COMMENT = "<!-- -->"
# An escaped "@" right after a character of an address's local part (itself maybe escaped).
_EMAIL_AT = re.compile(r"(?<=[\w.+-])\\@")


def spec_doc(spec: Spec) -> str:
    """The doc of a compiled spec: its description, what it compiles to, and its YAML."""
    return (
        f"# {markdown_text(spec.dag_id)}\n\n{markdown_text(spec.description or '')}\n\n"
        f"Compiled by flexflow from {code_span(spec.path)}: {len(spec.images)} image(s), "
        f"{spec.job_count} job(s) per run, {spec.megapixels:g} MP. Publishes to {code_span(spec.publish.to)}; "
        f"Asset {code_span(spec.publish.asset)}.\n\n"
        f"{fenced(spec.source.rstrip(), 'yaml')}"
    )


@overload
def plain_text(text: str) -> str: ...
@overload
def plain_text(text: None) -> None: ...
def plain_text(text: str | None) -> str | None:
    """A value Airflow shows as plain text (the description, the owner), hidden characters as code points.

    The UI escapes HTML in it, but bidi overrides would still make it read differently, and a NUL is a
    character PostgreSQL (Airflow's usual database) cannot store, in a write shared by the file's DAGs.
    """
    return None if text is None else visible(text, keep="\n\t")


def broken_doc(problems: Sequence[SpecProblem]) -> str:
    """The doc of a broken spec's DAG: its problems as ``flexflow validate`` shows them, and its files."""
    files = sorted({p.file for p in problems})
    return (
        "# Invalid flexflow spec\n\nFix these problems (`flexflow validate` shows the same):\n\n"
        + fenced("\n".join(visible(str(p)) for p in problems))
        + "\nFiles: "
        + ", ".join(code_span(f) for f in files)
        + "\n"
    )


def broken_description(problems: Sequence[SpecProblem]) -> str:
    """The one-line description of a broken spec's DAG (Airflow shows it as plain text)."""
    return visible(f"INVALID flexflow spec ({len(problems)} problem(s)): {problems[0]}")[:DESCRIPTION_LIMIT]


def markdown_text(text: str) -> str:
    """``text`` as Markdown that renders as exactly that text: no link but http(s), no HTML, emphasis or heading.

    CommonMark lets any ASCII punctuation be backslash-escaped, so escaping all of it (not a chosen few)
    leaves no construct to form: ``[x](javascript:alert(1))`` and ``<script>`` stay literal. GFM then
    links URLs and e-mail addresses it finds in the text, escapes resolved: http(s) and ``www.`` links
    are allowed; an empty HTML comment (dropped by the UI) before each ``@`` that ends a word keeps
    ``a@b.example`` from becoming a mailto: or xmpp: link. Line breaks stay; other hidden characters are
    shown as code points; the indent of a line goes.
    """
    # A line indented four spaces would be a code block, showing the escapes: paragraphs need no indent.
    lines = "\n".join(line.lstrip(" \t") for line in visible(_one_line_ending(text), keep="\n\t").split("\n"))
    escaped = _PUNCTUATION.sub(lambda match: "\\" + match.group(0), lines)
    return _EMAIL_AT.sub(EMPTY_COMMENT + r"\\@", escaped)


def code_span(text: str) -> str:
    """``text`` as an inline code span: delimited by more backticks than any run inside it, on one line."""
    shown = visible(_one_line_ending(text))  # a line break (a blank line ends a paragraph) becomes [U+000A]
    ticks = "`" * (_longest_backtick_run(shown) + 1)
    padding = " " if shown.startswith("`") or shown.endswith("`") else ""
    return f"{ticks}{padding}{shown}{padding}{ticks}"


def fenced(text: str, info: str = "") -> str:
    """``text`` as a fenced code block whose fence is longer than any backtick run in it, so no line closes it."""
    shown = visible(_one_line_ending(text), keep="\n\t")
    fence = "`" * max(3, _longest_backtick_run(shown) + 1)
    return f"{fence}{info}\n{shown}\n{fence}\n"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in _BACKTICKS.findall(text)), default=0)


def _one_line_ending(text: str) -> str:
    # CommonMark ends a line at \r\n, \r or \n: one form, so a lone \r cannot start a line unseen.
    return text.replace("\r\n", "\n").replace("\r", "\n")
