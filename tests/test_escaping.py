"""Hostile values stay inert in what people look at: the contact sheet and the DAG docs (issue 11, item 6).

The contact sheet is parsed with html.parser: no script element, no on* attribute, every href and src a
file name of the run or an http(s) URL, and a Content-Security-Policy that forbids scripts and remote
loads. The DAG docs are parsed with markdown-it (CommonMark with linkify), and each text run is searched
with remark-gfm's address pattern (Airflow's UI renders with react-markdown and remark-gfm; the same
documents were checked once against react-markdown 10 and remark-gfm 4): text from a spec forms no
link but http(s), no image or HTML, and a spec's YAML cannot leave its fence.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from flexflow.compiler.docs import (
    EMPTY_COMMENT,
    broken_description,
    broken_doc,
    code_span,
    fenced,
    markdown_text,
    spec_doc,
)
from flexflow.compiler.layout import task_layout
from flexflow.publishing.contact_sheet import render_contact_sheet
from flexflow.spec import SpecProblem, load_spec, parse_spec
from flexflow.text import visible

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "spring_social_refresh.yaml"

#: Text an author (or an API answer) might use to break out of where it is shown.
HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)",
    '"onerror=alert(1) x="',
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "[x](javascript:alert(1))",
    "![x](data:image/svg+xml,<svg onload=alert(1)>)",
    "<javascript:alert(1)>",
    "[x]: javascript:alert(1)\n\n[x]",
    "mailto:someone@example.com and someone@example.com",
    "xmpp:someone@example.com",
    "www.example.com/<script>",
    "&#106;avascript&#58;alert(1)",
    "</code></pre><script>alert(1)</script>",
    "```\n</code><script>alert(1)</script>\n```",
    "~~~\n<b>x</b>",
    "\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE: reads as exe.png
    "admin\u2066\u2069\u200b\u200d\ufeff",
    "tag\U000e0061\U000e0062",  # invisible TAG characters
    "line\u2028break\u2029para",
    "nul\x00bell\x07esc\x1b[31m",
    "<style>body{display:none}</style>",
    "<base href=https://evil.example/>",
    "<meta http-equiv=refresh content='0;url=javascript:alert(1)'>",
    "write to a.b+c@d-e.example, or @team",
    "intro\n\n    an indented a@b.example [x](javascript:alert(1))",
]


# -- the contact sheet ----------------------------------------------------------------------------


class Elements(HTMLParser):
    """Every start tag of a document, with its attributes, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(document: str) -> Elements:
    parser = Elements()
    parser.feed(document)
    parser.close()
    return parser


def manifest_entry(**values: Any) -> dict[str, Any]:
    entry = {
        "name": "hero.png",
        "image": "hero",
        "variant": "",
        "width": 1024,
        "height": 1024,
        "format": "png",
        "bytes": 12345,
        "seed": 42,
        "job_id": "job_1",
        "prompt": "A hero banner",
        "flux": {"seed": 42, "resolution": "1MP"},
    }
    return {**entry, **values}


def manifest(files: list[dict[str, Any]], **values: Any) -> dict[str, Any]:
    run = {"dag_id": "demo", "run_id": "manual__1", "published_at": "2026-12-07T00:00:00Z", "asset": "flexflow://demo"}
    return {**run, **values, "files": files}


def hostile_manifest(text: str) -> dict[str, Any]:
    """Every value of the manifest (and a flux key and value) set to the hostile text."""
    entry: dict[str, Any] = {key: text for key in manifest_entry()}
    entry["flux"] = {text: text, "seed": text}
    return manifest([entry, manifest_entry(name=text)], dag_id=text, run_id=text, published_at=text, asset=text)


def assert_inert(document: str) -> Elements:
    """No script, no handler, no link anywhere but a file of the run or an http(s) URL, a strict policy."""
    elements = parsed(document)
    names = [tag for tag, _ in elements.tags]
    assert "script" not in names
    assert not {"iframe", "object", "embed", "base", "form", "svg", "link"} & set(names)
    for tag, attrs in elements.tags:
        assert not [name for name in attrs if name.lower().startswith("on")], (tag, attrs)
        for name in ("href", "src"):
            if name in attrs:
                assert_safe_url(attrs[name] or "")
    metas = [attrs for tag, attrs in elements.tags if tag == "meta"]
    policies = [a["content"] for a in metas if (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(policies) == 1
    assert_strict_policy(policies[0] or "")
    assert names.count("style") == 1 and names.count("meta") == 3, "no tag from a value got in"
    return elements


def assert_safe_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme:
        assert parts.scheme in {"http", "https"} and parts.netloc, url
    else:
        assert not parts.netloc and "/" not in parts.path and ":" not in url, f"not a file of the run: {url!r}"


def assert_strict_policy(policy: str) -> None:
    directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"], "scripts, objects, frames, fetches: nothing by default"
    assert "script-src" not in directives and "object-src" not in directives and "frame-src" not in directives
    assert set(directives["img-src"]) - {"'self'", "file:"} <= {"https://cdn.example.com"}
    assert [s.startswith("'sha256-") for s in directives["style-src"]] == [True]
    assert directives["base-uri"] == ["'none'"]
    assert "unsafe" not in policy and "*" not in policy and "data:" not in policy


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_a_manifest_of_hostile_values_renders_inert(text: str) -> None:
    elements = assert_inert(render_contact_sheet(hostile_manifest(text)))
    shown = "".join(elements.text)
    assert visible(text.split("\n")[0]).replace("\r", "") in shown.replace("\n", ""), "the value is shown, as text"


def test_hostile_names_are_links_into_the_run_folder_or_none() -> None:
    names = ["javascript:alert(1)", "../../etc/passwd", "/etc/passwd", "a\\b.png", "..", ".", "", "x\u202e.png"]
    sheet = render_contact_sheet(manifest([manifest_entry(name=name) for name in names]))
    links = [attrs["href"] for tag, attrs in assert_inert(sheet).tags if tag == "a"]
    assert links == ["javascript%3Aalert%281%29"], "only the plain (if odd) file name is linked, percent-encoded"


def test_http_images_are_linked_and_allowed_by_origin_only() -> None:
    names = ["https://cdn.example.com/a.png", "https://user:pw@cdn.example.com/b.png", "https://a;script-src */c.png"]
    sheet = render_contact_sheet(manifest([manifest_entry(name=name) for name in names]))
    elements = assert_inert(sheet)
    assert [attrs["src"] for tag, attrs in elements.tags if tag == "img"] == ["https://cdn.example.com/a.png"]
    policy = next(attrs["content"] for tag, attrs in elements.tags if tag == "meta" and "http-equiv" in attrs)
    assert "img-src 'self' file: https://cdn.example.com;" in (policy or "")


def test_a_plain_manifest_shows_its_images_and_values() -> None:
    entry = manifest_entry(name="story_seed-1.png", image="story", variant="_seed-1", prompt="Spring & <summer>")
    sheet = render_contact_sheet(manifest([entry, manifest_entry()]))
    elements = assert_inert(sheet)
    assert [attrs["src"] for tag, attrs in elements.tags if tag == "img"] == ["story_seed-1.png", "hero.png"]
    assert "Spring & <summer>" in "".join(elements.text)
    assert "12,345 bytes" in sheet and "hero_seed-1" not in sheet and "story_seed-1" in sheet


def test_a_manifest_with_odd_types_still_renders() -> None:
    entry = manifest_entry(bytes="many", flux=["not", "a", "mapping"], seed=None, variant=None, name=7)
    assert_inert(render_contact_sheet(manifest([entry], asset=None)))


# -- the DAG docs ---------------------------------------------------------------------------------

#: remark-gfm's e-mail pattern (mdast-util-gfm-autolink-literal), which Airflow's UI bundle holds.
GFM_EMAIL = re.compile(r"(?:^|(?<=[\s\W]))([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")
MARKDOWN = MarkdownIt("commonmark", {"linkify": True}).enable(["linkify", "table", "strikethrough"])


def tokens(document: str) -> list[Token]:
    """Every token of the document, inline children included."""
    found: list[Token] = []
    for token in MARKDOWN.parse(document):
        found.append(token)
        found.extend(token.children or [])
    return found


def assert_no_link_or_html(document: str) -> None:
    found = tokens(document)
    kinds = {token.type for token in found}
    assert not kinds & {"link_open", "image", "html_block"}, kinds
    assert {t.content for t in found if t.type == "html_inline"} <= {EMPTY_COMMENT}
    # Airflow's UI (remark-gfm) also links addresses in each text node after escapes are resolved.
    addresses = [t.content for t in found if t.type == "text" and GFM_EMAIL.search(t.content)]
    assert not addresses, f"would be mailto: links in Airflow's UI: {addresses}"
    assert not document.endswith(".md"), "Airflow would read it as a file name"


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_markdown_text_renders_as_itself_and_never_a_link(text: str) -> None:
    assert_no_link_or_html(markdown_text(text))
    rendered = "".join(t.content for t in tokens(markdown_text(text)) if t.type == "text")
    # Markdown drops the white space at a line's ends; every other character is shown as written.
    assert "".join(rendered.split()) == "".join(visible(text, keep="\n").split())


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_a_code_span_holds_its_text_on_one_line(text: str) -> None:
    paragraph = f"Publishes to {code_span(text)}; done"
    found = [t for t in tokens(paragraph) if t.type == "code_inline"]
    assert [t.content for t in found] == [visible(text.replace("\r\n", "\n").replace("\r", "\n"))]
    assert_no_link_or_html(paragraph)


@pytest.mark.parametrize("backticks", [0, 3, 4, 10])
def test_a_yaml_with_backtick_fences_stays_inside_its_fence(backticks: int) -> None:
    ticks = "`" * backticks
    yaml = f"description: |\n  {ticks}\n  </code><script>alert(1)</script>\n  {ticks}\n  [x](javascript:alert(1))"
    document = "# title\n\n" + fenced(yaml, "yaml") + "after\n"
    blocks = [t for t in tokens(document) if t.type == "fence"]
    assert [(b.info, b.content) for b in blocks] == [("yaml", yaml + "\n")]
    assert_no_link_or_html(document)


def test_the_spec_doc_escapes_the_description_and_keeps_the_yaml_whole() -> None:
    description = "[x](javascript:alert(1)) <img src=x onerror=alert(1)> ``` a@b.example \u202eevil"
    source = SPEC.read_text() + "# ````\n# ```yaml\n# </code><script>alert(1)</script>\n"
    spec = replace(load_spec(SPEC), description=description, source=source, path="a`b``c.yaml")
    doc = spec_doc(spec)
    assert_no_link_or_html(doc)
    assert [t.content for t in tokens(doc) if t.type == "fence"] == [visible(source.rstrip(), keep="\n\t") + "\n"]
    shown = "".join(t.content for t in tokens(doc) if t.type in {"text", "code_inline"})
    assert visible(description) in shown and "a`b``c.yaml" in shown


def test_the_doc_of_a_broken_spec_shows_its_problems_whole() -> None:
    messages = ["dag_id: got '```\\n<script>'", "tags[0]: [x](javascript:alert(1)) \u202e", "plain"]
    problems = [SpecProblem("spec`s.yaml", line, 1, message) for line, message in enumerate(messages, 1)]
    doc = broken_doc(problems)
    assert_no_link_or_html(doc)
    fence = [t.content for t in tokens(doc) if t.type == "fence"]
    assert fence == ["\n".join(visible(str(p)) for p in problems) + "\n"]
    assert "spec`s.yaml" in [t.content for t in tokens(doc) if t.type == "code_inline"]
    description = broken_description([*problems, *copy.deepcopy(problems) * 100])
    assert len(description) <= 250 and "\u202e" not in description


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_a_spec_whose_description_and_owner_are_hostile_is_valid_and_shown_inert(text: str) -> None:
    """Validation accepts any text as a description (it is only shown), so the doc is what keeps it inert.

    All but a NUL, which is a spec error of its own (tests/specs/hostile/airflow__nul_in_description.yaml).
    """
    data = yaml.safe_load(SPEC.read_text())
    data["description"] = data["owner"] = text = text.replace("\x00", "")
    spec = parse_spec(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "hostile.yaml")
    arguments = task_layout(spec).dag_arguments
    assert_no_link_or_html(arguments["doc_md"])
    assert markdown_text(text) in arguments["doc_md"]
    # Shown as plain text by the UI: nothing hidden.
    shown = [arguments["description"], arguments["default_args"]["owner"]]
    assert shown == [visible(text, keep="\n\t")] * 2
