"""The template allow-list (flexflow.spec.templates) and the secret search (flexflow.spec.secrets), unit by unit.

Bounded work is shown by the caps themselves, never by a clock: text over the length cap never reaches
Jinja's parser, nesting over the depth cap is refused, and the nodes of a template at the length cap
are counted.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Environment, nodes

from flexflow.spec import parse_spec, templates
from flexflow.spec.secrets import KEY_SHAPES, key_kind, looks_like_credential_name, secret_problems
from flexflow.spec.templates import (
    ALLOWED_FILTERS,
    MAX_DEPTH,
    MAX_NODES,
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_CHARS,
    RUN_VALUES,
    TEMPLATE_FILTERS,
    constant_texts,
    ds_add,
    parse_template,
    replace,
    strftime,
    template_problems,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = frozenset({"campaign", "discount"})
#: Templates the allow-list accepts: every run value, both forms of params, every filter.
ACCEPTED = [
    *(f"{{{{ {name} }}}}" for name in RUN_VALUES),
    "Hero banner for {{ params.campaign }}, bold type",
    "{{ params['discount'] }} off",
    "{{ 'Spring' ~ ' ' ~ params.campaign ~ 2027 }}",
    "{{ params.campaign | upper }} {{ params.campaign | lower }} {{ params.campaign | title }}",
    "{{ params.campaign | capitalize }} {{ params.campaign | trim }} {{ params.campaign | trim('-') }}",
    "{{ params.campaign | truncate(20) }} {{ params.campaign | truncate(20, end='') }}",
    "{{ params.discount | default('10%') }} {{ params.discount | default('10%', true) }}",
    "{{ run_id | replace(':', '_') }} {{ ds | ds_add(-7) }} {{ logical_date | strftime('%Y/%m') }}",
    "{% raw %}{{ conn.apiframe_default.password }}{% endraw %} is written as text",
    "Banner {# a note for reviewers #} for {{ params.campaign }}",
    "no template at all, {single braces} included",
]


def problems(text: str, params: frozenset[str] = PARAMS) -> tuple[str, ...]:
    return template_problems(text, params)


@pytest.mark.parametrize("text", ACCEPTED)
def test_the_allow_list_accepts(text: str) -> None:
    assert problems(text) == ()


def test_every_filter_is_accepted_and_registered_or_jinjas() -> None:
    for name in ALLOWED_FILTERS:
        assert name in TEMPLATE_FILTERS or name in Environment().filters, name
        assert problems(f"{{{{ ds | {name} }}}}") == () or name == "replace"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{{ conn.apiframe_default.password }}", "'conn' is not allowed (it reads Airflow connections)"),
        ("{{ var.value.x }}", "'var' is not allowed (it reads Airflow variables)"),
        ("{{ ti.xcom_pull() }}", "'ti' is not allowed (it is the task instance)"),
        ("{{ task_instance.hostname }}", "'task_instance' is not allowed"),
        ("{{ macros.ds_add(ds, 1) }}", "'macros' is not allowed (use the filters ds_add and strftime)"),
        ("{{ params.__class__ }}", "params.__class__ is not declared; the declared params are campaign, discount"),
        ("{{ params['budget'] }}", "params.budget is not declared"),
        ("{{ params[ds] }}", "params[...] takes a quoted param name"),
        ("{{ params }}", "write params.<name> for one param"),
        ("{{ ''.__class__.__mro__ }}", "'.__class__' is not allowed: only params.<name> looks anything up"),
        ("{{ ds[0] }}", "'[...]' is not allowed"),
        ("{{ ds.upper() }}", "'.upper' is not allowed"),
        ("{{ range(10) }}", "'range' is not allowed"),
        ("{{ (ds)() }}", "calls are not allowed"),
        ("{% for x in range(10**9) %}x{% endfor %}", "{% for %} is not allowed"),
        ("{% set x = 1 %}", "{% set %} is not allowed"),
        ("{% if ds %}x{% endif %}", "{% if %} is not allowed"),
        ("{% include 'x' %}", "{% include %} is not allowed"),
        ("{% from 'x' import y %}", "{% from %} is not allowed"),
        ("{% autoescape false %}x{% endautoescape %}", "{% autoescape %} is not allowed"),
        ("{{ 'a' * 999999999 }}", "'*' is not allowed: templates do no arithmetic"),
        ("{{ 9 ** 9 }}", "'**' is not allowed"),
        ("{{ -ds }}", "'-' is not allowed"),
        ("{{ ds | ds_add(--1) }}", "'-' is not allowed"),
        ("{{ not ds }}", "conditions are not allowed"),
        ("{{ ds == ts }}", "conditions are not allowed"),
        ("{{ ds is defined }}", "conditions are not allowed"),
        ("{{ [ds] }}", "lists, tuples and dicts are not allowed"),
        ("{{ none }}", "the literal None is not allowed"),
        ("{{ ds | center(99) }}", "the filter 'center' is not allowed"),
        ("{{ ds | upper(1) }}", "the filter 'upper' takes ()"),
        ("{{ ds | truncate(length=5, sneaky=1) }}", "the filter 'truncate' takes (length, killwords, end, leeway)"),
        ("{{ ds | default(*x) }}", "the filter 'default' takes"),
        ("{{ ds | replace('', 'x') }}", "replace takes text literals, the first not empty"),
        ("{{ ds | replace(params.campaign, 'x') }}", "replace takes text literals"),
        ("{{ ds | ds_add(ti) }}", "'ti' is not allowed"),
        ("{{ ds", "unexpected end of template"),
    ],
)
def test_the_allow_list_refuses_with_what_is_allowed(text: str, fragment: str) -> None:
    found = problems(text)
    assert len(found) == 1 and fragment in found[0], found


def test_a_spec_without_params_says_so() -> None:
    assert problems("{{ params.x }}", frozenset()) == (
        "params.x is not declared; this spec declares no params (add them under params:)",
    )


def test_a_template_over_the_length_cap_never_reaches_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoParser:
        def parse(self, text: str) -> None:
            raise AssertionError("a template over the cap was parsed")

    monkeypatch.setattr(templates, "_JINJA", NoParser())
    megabyte = "{{ ds }}" + "x" * 1_000_000
    assert problems(megabyte) == (f"the template is longer than {MAX_TEMPLATE_CHARS:,} characters",)
    assert constant_texts(megabyte) == ()


def test_brackets_deeper_than_the_cap_are_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def nest(depth: int) -> str:
        return "{{ " + "(" * depth + "ds" + ")" * depth + " }}"

    assert problems(nest(MAX_DEPTH)) == ()
    monkeypatch.setattr(templates, "_JINJA", None)  # the parser is not even looked up
    assert problems(nest(MAX_DEPTH + 1)) == (f"brackets are nested more than {MAX_DEPTH} levels deep",)


@pytest.mark.parametrize(
    "text",
    ["{{ " + "-" * 3000 + "1 }}", "{{ " + "{" * 3000 + " }}"],
    ids=["unary minus", "dicts"],
)
def test_recursion_the_brackets_do_not_show_is_a_spec_error(text: str) -> None:
    assert problems(text) == (f"the template is nested more than {MAX_DEPTH} levels deep",)


def test_a_filter_chain_deeper_than_the_cap_is_refused() -> None:
    chain = "{{ ds" + " | upper" * (MAX_DEPTH - 1) + " }}"
    assert problems(chain) == ()
    assert problems(chain.replace("ds", "ds | upper")) == (f"the template is nested more than {MAX_DEPTH} levels deep",)


def test_the_node_budget() -> None:
    assert problems("{{ds}}" * MAX_NODES) == ()
    assert problems("{{ds}}" * (MAX_NODES + 1)) == (f"the template has more than {MAX_NODES:,} parts",)


def test_a_template_at_the_length_cap_is_a_bounded_tree() -> None:
    """The densest template that fits the cap: its tree has fewer nodes than characters, and the walk stops."""
    densest = "{{ds~ds}}" * (MAX_TEMPLATE_CHARS // len("{{ds~ds}}"))
    assert sum(1 for _ in parse_template(densest).find_all(nodes.Node)) < MAX_TEMPLATE_CHARS
    assert problems(densest) == (f"the template has more than {MAX_NODES:,} parts",)


def test_a_template_of_several_lines_names_the_line() -> None:
    assert problems("Banner\nfor {{ params.campaign }}\nby {{ var.value.x }}")[0].startswith("line 3: 'var' is not")
    assert problems("Banner\n{% for x in y %}{% endfor %}")[0].startswith("line 2: {% for %} is not allowed")
    assert problems("Banner\nfor {{ params.campaign\n") == (
        "line 2: unexpected end of template, expected 'end of print statement'.",
    )


def test_only_the_first_problem_is_reported() -> None:
    assert len(problems("{{ conn }} {{ var }} {% for x in y %}{% endfor %}")) == 1


def test_constant_texts_fold_literals_joined_or_side_by_side() -> None:
    assert constant_texts("{{ 'af' ~ 'k_' }}live{{ ds }}x") == ("afk_live", "x")
    assert constant_texts("a{# comment #}b{{ ('C' ~ 1) | lower }}") == ("abC1",)
    assert constant_texts("{% for x in y %}{% endfor %}z") == ("", "z")
    assert constant_texts("{{ unclosed") == ()


def test_filters_render_as_airflow_registers_them() -> None:
    env = Environment(autoescape=False)
    env.filters.update(TEMPLATE_FILTERS)  # what DAG(user_defined_filters=...) does
    moment = dt.datetime(2027, 3, 4, 5, 6, tzinfo=dt.UTC)
    text = "{{ ds | ds_add(7) }} {{ logical_date | strftime('%Y/%m') }} {{ run_id | replace(':', '_') }}"
    rendered = env.from_string(text).render(ds="2027-03-04", logical_date=moment, run_id="manual__2027-03-04T05:06")
    assert rendered == "2027-03-11 2027/03 manual__2027-03-04T05_06"


def test_the_filters_themselves() -> None:
    assert ds_add("2027-03-01", -1) == "2027-02-28"
    assert strftime("2027-03-04T05:06:00+00:00", "%d.%m.%Y %%") == "04.03.2027 %"
    assert strftime(dt.date(2027, 3, 4), "%Y") == "2027"
    with pytest.raises(ValueError, match="plain directives"):
        strftime(dt.date(2027, 3, 4), "%999999999Y")
    assert replace("a:b:c", ":", "_", 1) == "a_b:c"
    with pytest.raises(ValueError, match="more than"):
        replace("x" * 1000, "x", "y" * (MAX_RENDERED_CHARS // 1000 + 1))


# -- secrets ------------------------------------------------------------------------------------

KEY = "afk_live_9Fq3ZxUnit0042"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (KEY, "an Apiframe API key"),
        (KEY.upper(), "an Apiframe API key"),
        ("afk\u200b_li\u00adve_9Fq3\u2060Zx\ufeff", "an Apiframe API key"),
        ("Poster a f k _ l i v e _ 9 F q", "an Apiframe API key"),
        ("\uff41\uff46\uff4b\uff3f\uff4c\uff49\uff56\uff45\uff3f\uff19", "an Apiframe API key"),
        ("Poster {{ 'afk_' ~ 'live_9Fq3' }}", "an Apiframe API key"),
        ("Poster {{ 'afk' }}{# split #}{{ '_live_9Fq3' }}", "an Apiframe API key"),
        ("Poster AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
        ("see sk-proj-4f9a8b7c6d5e4f3a2b1c0d9e", "a secret API key (sk-...)"),
        ("sk_live_4f9a8b7c6d5e4f3a", "a Stripe secret key"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "a GitHub token"),
        ("xoxb-1234567890-abcdef", "a Slack token"),
        ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "a Google API key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "a private key"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig", "a JSON web token"),
        ("Authorization: Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0", "a bearer token"),
    ],
)
def test_key_shapes_are_found_however_written(text: str, kind: str) -> None:
    assert key_kind(text) == kind


def _example_prompts() -> list[str]:
    found = []
    for file in sorted((ROOT / "specs").glob("*.yaml")):
        spec = parse_spec(file.read_text(), str(file))
        found += [image.prompt for image in spec.images]
    return found


PROSE = [
    "Risk-free trial banner, 2027 prices, bold type",
    "Slovakia 2027 summer festival poster, folk patterns",
    "Asia Pacific 2027 summer sale banner",
    "A standard bearer holding 3 flags in the wind",
    "Desk-side lamp sk-etch with 24 pencils and 12 pens",
    "AKIA exhibition banner 2027 in Tokyo",
    "Token of appreciation card, 25 years of service",
]


@pytest.mark.parametrize("text", [*PROSE, *_example_prompts()])
def test_prose_is_no_key(text: str) -> None:
    assert key_kind(text) is None


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("smtp_password", True),
        ("apiToken", True),
        ("X-Api-Key", True),
        ("client_secret", True),
        ("api\u200b_key", True),
        ("private-key", True),
        ("campaign", False),
        ("author", False),
        ("discount", False),
    ],
)
def test_credential_names(name: str, secret: bool) -> None:
    assert looks_like_credential_name(name) is secret


def test_a_param_named_as_a_credential_is_told_to_use_a_connection() -> None:
    (problem,) = secret_problems({"params": {"smtp_password": "hunter2"}})
    assert problem.path == ("params", "smtp_password")
    assert "trigger form" in problem.message and "Airflow connection" in problem.message


def test_messages_never_echo_the_key() -> None:
    data = {"description": KEY, "params": {f"{KEY}_secret": 1, "note": f"x {KEY}"}, "tags": [KEY]}
    found = list(secret_problems(data))
    assert [p.path for p in found] == [("description",), ("params",), ("params", "note"), ("tags", 0)]
    assert all(KEY.lower() not in repr(p).lower() for p in found)


# -- any text: the checks answer, they never raise -----------------------------------------------

TEMPLATE_ALPHABET = "{}%#()[]|~'\"., -*+/=!_01 abcdeikl" + "\u200b\u00ad"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=TEMPLATE_ALPHABET, max_size=120) | st.sampled_from(ACCEPTED).map(lambda t: t + "}}{%"))
def test_any_text_gets_an_answer_never_an_exception(text: str) -> None:
    found = problems(text)
    assert all(isinstance(message, str) and message for message in found)
    assert all(isinstance(run, str) for run in constant_texts(text))
    assert key_kind(text) in {None, *(shape.kind for shape in KEY_SHAPES)}
