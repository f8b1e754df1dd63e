"""What a template in a spec may say: an allow-list checked on Jinja's parsed tree, never by rendering.

Prompts, ``publish.to`` and ``publish.filename`` are rendered by Airflow at run time, with the whole task
context in reach (connections, variables, the task instance, Python objects behind every attribute).
A spec author is not trusted with that, so a template may only:

- write text, and ``{{ expressions }}`` built of the run's plain date and id values
  (:data:`RUN_VALUES`), the spec's declared params (``params.name`` or ``params['name']``), string and
  number literals, ``~`` concatenation, and the filters of :data:`ALLOWED_FILTERS`;
- use ``{% raw %}`` (its content is plain text) and ``{# comments #}``.

Everything else is refused with a message saying what is allowed: other names (``conn``, ``var``,
``ti``, ``macros``, ...), attribute access except on params, calls, every ``{% statement %}``
(``if`` included: a prompt is text; the ``default`` filter gives a fallback), arithmetic and
conditions. The text is capped before Jinja sees it and the tree is walked within a node and depth
budget, so a hostile template costs bounded time and memory. This module imports no Airflow: the
compiled DAG registers :data:`TEMPLATE_FILTERS` as its ``user_defined_filters``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from functools import lru_cache

from jinja2 import Environment, TemplateSyntaxError, nodes

#: Longest template parsed: twice the longest prompt the API takes (2,000); a target URL is far shorter.
MAX_TEMPLATE_CHARS = 4_000
#: Deepest bracket nesting and deepest expression; a real template nests two or three levels.
MAX_DEPTH = 32
#: Most nodes in a parsed template (text parts, names, literals, filters).
MAX_NODES = 500
#: Longest text a filter of :data:`TEMPLATE_FILTERS` returns: ``replace`` cannot blow a value up.
MAX_RENDERED_CHARS = 100_000

#: The run's values a template may name: plain strings and dates of Airflow's task context, and
#: ``dag_id`` (not in Airflow 3's context: the compiled DAG supplies it as a user-defined macro). Left
#: out: objects that lead anywhere by attribute (dag, dag_run, task, ti, conn, var, macros, outlets...).
RUN_VALUES = (
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "run_id",
    "dag_id",
)
#: Names a template author is likely to try, with why each is refused.
REFUSED_NAMES = {
    "conn": "it reads Airflow connections",
    "var": "it reads Airflow variables",
    "ti": "it is the task instance",
    "task_instance": "it is the task instance",
    "macros": "use the filters ds_add and strftime",
}
_STATEMENT_TAGS = {
    "Assign": "set",
    "AssignBlock": "set",
    "FromImport": "from",
    "CallBlock": "call",
    "FilterBlock": "filter",
    "ScopedEvalContextModifier": "autoescape",
    "Scope": "autoescape",  # {% autoescape %} parses to a scope around the modifier
}

_PLAIN_FORMAT = re.compile(r"(?:[^%]|%[A-Za-z%])*")  # each character read once: no backtracking
_JINJA = Environment(autoescape=False)  # noqa: S701 - parses prompts and paths, never renders HTML


def ds_add(ds: str, days: int) -> str:
    """``{{ ds | ds_add(7) }}``: the date ``days`` after (before, if negative) a ``YYYY-MM-DD`` date."""
    return (dt.date.fromisoformat(str(ds)[:10]) + dt.timedelta(days=int(days))).isoformat()


def strftime(value: object, format: str) -> str:
    """``{{ logical_date | strftime('%Y/%m') }}``: a date or an ISO date text, formatted.

    Only plain directives: the C library takes widths (``%999999999Y``) that would fill memory.
    """
    if not _PLAIN_FORMAT.fullmatch(format):
        raise ValueError("strftime takes plain directives such as %Y, %m, %d, %H (no widths or flags)")
    moment = value if isinstance(value, dt.date) else dt.datetime.fromisoformat(str(value))
    return moment.strftime(format)


def replace(value: object, old: str, new: str, count: int = -1) -> str:
    """Jinja's ``replace``, refusing a result over :data:`MAX_RENDERED_CHARS` (chained replaces multiply)."""
    text = str(value)
    found = text.count(old) if count < 0 else min(count, text.count(old))
    if len(text) + found * (len(new) - len(old)) > MAX_RENDERED_CHARS:
        raise ValueError(f"replace would write more than {MAX_RENDERED_CHARS:,} characters")
    return text.replace(old, new, count)


#: flexflow's own filters, registered on every compiled DAG (``replace`` overrides Jinja's).
TEMPLATE_FILTERS: dict[str, Callable[..., str]] = {"ds_add": ds_add, "strftime": strftime, "replace": replace}
#: Every filter a template may use, with the names of its arguments: Jinja's text filters that cannot
#: expand a value, and :data:`TEMPLATE_FILTERS`.
ALLOWED_FILTERS: dict[str, tuple[str, ...]] = {
    "upper": (),
    "lower": (),
    "title": (),
    "capitalize": (),
    "trim": ("chars",),
    "truncate": ("length", "killwords", "end", "leeway"),
    "default": ("default_value", "boolean"),
    "replace": ("old", "new", "count"),
    "ds_add": ("days",),
    "strftime": ("format",),
}
_ALLOWED = (
    f"templates may use params.<name>, {', '.join(RUN_VALUES)}, text and number literals, ~ to join, "
    f"and the filters {', '.join(ALLOWED_FILTERS)}"
)


class TemplateProblem(Exception):
    """A template is refused before its tree could be walked (too long, too deep, or no valid Jinja)."""


def template_problems(text: str, params: frozenset[str]) -> tuple[str, ...]:
    """What is wrong with a template, given the params the spec declares; empty when it is allowed."""
    return _problems(text, params) if "{" in text else ()  # text without braces is no template


@lru_cache(maxsize=4096)
def _problems(text: str, params: frozenset[str]) -> tuple[str, ...]:
    try:
        template = parse_template(text)
    except TemplateProblem as exc:
        return (str(exc),)
    walk = _Walk(params, multiline="\n" in text)
    for node in template.body:
        walk.statement(node)
        if walk.problems:
            break  # the first problem says enough; the rest may follow from it
    return tuple(walk.problems)


def parse_template(text: str) -> nodes.Template:
    """Jinja's tree of a template, or :class:`TemplateProblem`, with the text capped before parsing."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"the template is longer than {MAX_TEMPLATE_CHARS:,} characters")
    if _bracket_depth(text) > MAX_DEPTH:
        raise TemplateProblem(f"brackets are nested more than {MAX_DEPTH} levels deep")
    try:
        return _JINJA.parse(text)
    except TemplateSyntaxError as exc:
        where = f"line {exc.lineno}: " if "\n" in text else ""
        raise TemplateProblem(where + (exc.message or "invalid template")) from None
    except RecursionError:  # a long run of unary operators ('not not not ...'), which brackets do not show
        raise TemplateProblem(f"the template is nested more than {MAX_DEPTH} levels deep") from None


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``(`` and ``[`` in the text, in one pass (Jinja's parser recurses on each).

    Braces are left out: ``{{`` opens every expression; a run of ``{`` (dicts) hits the recursion guard.
    """
    depth = deepest = 0
    for char in text:
        if char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]" and depth:
            depth -= 1
    return deepest


def constant_texts(text: str) -> tuple[str, ...]:
    """The runs of text a template writes whatever its values: literals joined with ``~`` or side by side.

    ``{{ 'af' ~ 'k_' }}live`` writes ``afk_live``; a value (a name, a param) ends a run. The secret
    check reads these, so a key cannot be smuggled in pieces.
    """
    try:
        template = parse_template(text)
    except TemplateProblem:
        return ()
    runs, run = [], ""
    for piece in _pieces(template.body):
        if piece is None:
            runs.append(run)
            run = ""
        else:
            run += piece
    return (*runs, run)


def _pieces(body: list[nodes.Node]) -> Iterator[str | None]:
    for statement in body:
        if isinstance(statement, nodes.Output):
            for node in statement.nodes:
                yield from _constant(node)
        else:
            yield None


def _constant(node: nodes.Node) -> Iterator[str | None]:
    while isinstance(node, nodes.Filter) and node.node is not None:
        node = node.node  # the check is case-blind, so upper or lower change nothing it looks for
    if isinstance(node, nodes.TemplateData):
        yield node.data
    elif isinstance(node, nodes.Const) and isinstance(node.value, str | int | float):
        yield str(node.value)
    elif isinstance(node, nodes.Concat):
        for part in node.nodes:
            yield from _constant(part)
    else:
        yield None


class _Walk:
    """One pass over a template's tree, collecting what the allow-list refuses, within a budget."""

    def __init__(self, params: frozenset[str], *, multiline: bool) -> None:
        self.params = params
        self.multiline = multiline  # a template of several lines says on which one a problem is
        self.line = 1
        self.nodes = 0
        self.problems: list[str] = []

    def refuse(self, message: str) -> None:
        self.problems.append(f"line {self.line}: {message}" if self.multiline else message)

    def statement(self, node: nodes.Node) -> None:
        self.line = node.lineno
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                self.expression(child, 1)
        else:
            name = type(node).__name__
            tag = _STATEMENT_TAGS.get(name, name.lower())
            self.refuse(f"{{% {tag} %}} is not allowed: a template is text with {{{{ expressions }}}}; {_ALLOWED}")

    def expression(self, node: nodes.Node, depth: int) -> None:
        self.nodes += 1
        if self.problems:
            return
        self.line = node.lineno
        if self.nodes > MAX_NODES:
            self.refuse(f"the template has more than {MAX_NODES:,} parts")
        elif depth > MAX_DEPTH:
            self.refuse(f"the template is nested more than {MAX_DEPTH} levels deep")
        elif isinstance(node, nodes.TemplateData | nodes.Const):
            self.literal(node)
        elif isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const):
            self.literal(node.node)  # -7 is a literal to the reader, a negation to Jinja's parser
        elif isinstance(node, nodes.Name):
            self.name(node.name)
        elif isinstance(node, nodes.Getattr | nodes.Getitem):
            self.lookup(node, depth)
        elif isinstance(node, nodes.Concat):
            for part in node.nodes:
                self.expression(part, depth + 1)
        elif isinstance(node, nodes.Filter):
            self.filter(node, depth)
        elif isinstance(node, nodes.Call):
            self.expression(node.node, depth + 1)  # ti.xcom_pull() is refused for ti, where it starts
            if not self.problems:
                self.refuse(_refusal(node))
        else:
            self.refuse(_refusal(node))

    def literal(self, node: nodes.TemplateData | nodes.Const) -> None:
        if isinstance(node, nodes.Const) and not isinstance(node.value, str | int | float):
            self.refuse(f"the literal {node.value!r} is not allowed; {_ALLOWED}")

    def name(self, name: str) -> None:
        if name in RUN_VALUES:
            return
        if name == "params":
            self.refuse(f"write params.<name> for one param; {self.declared()}")
        elif name in REFUSED_NAMES:
            self.refuse(f"'{name}' is not allowed ({REFUSED_NAMES[name]}); {_ALLOWED}")
        else:
            self.refuse(f"'{name}' is not allowed; {_ALLOWED}")

    def lookup(self, node: nodes.Getattr | nodes.Getitem, depth: int) -> None:
        key = node.attr if isinstance(node, nodes.Getattr) else _literal_key(node.arg)
        if not (isinstance(node.node, nodes.Name) and node.node.name == "params"):
            self.expression(node.node, depth + 1)  # conn.x.password is refused for conn, where it starts
            if self.problems:
                return
            written = f".{node.attr}" if isinstance(node, nodes.Getattr) else "[...]"
            self.refuse(f"'{written}' is not allowed: only params.<name> looks anything up; {_ALLOWED}")
        elif key is None:
            self.refuse("params[...] takes a quoted param name, such as params['campaign']")
        elif key not in self.params:
            self.refuse(f"params.{key} is not declared; {self.declared()}")

    def declared(self) -> str:
        if not self.params:
            return "this spec declares no params (add them under params:)"
        return f"the declared params are {', '.join(sorted(self.params))}"

    def filter(self, node: nodes.Filter, depth: int) -> None:
        arguments = ALLOWED_FILTERS.get(node.name)
        if arguments is None:
            self.refuse(f"the filter '{node.name}' is not allowed; filters are {', '.join(ALLOWED_FILTERS)}")
            return
        unknown = [k.key for k in node.kwargs if k.key not in arguments]
        if len(node.args) > len(arguments) or unknown or node.dyn_args or node.dyn_kwargs:
            self.refuse(f"the filter '{node.name}' takes ({', '.join(arguments)})")
            return
        if node.name == "replace" and not _replaces_text(node):
            self.refuse("replace takes text literals, the first not empty, such as replace(':', '_')")
            return
        for argument in (node.node, *node.args, *(k.value for k in node.kwargs)):
            if argument is not None:
                self.expression(argument, depth + 1)


def _literal_key(node: nodes.Expr) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _replaces_text(node: nodes.Filter) -> bool:
    """``replace('', x)`` inserts x between every character: with a few in a chain, that is exponential."""
    texts = [argument for argument in node.args[:2] if isinstance(argument, nodes.Const)]
    return len(texts) == 2 and all(isinstance(t.value, str) for t in texts) and texts[0].value != ""


def _refusal(node: nodes.Node) -> str:
    if isinstance(node, nodes.Call):
        return f"calls are not allowed; format values with filters (value | upper); {_ALLOWED}"
    if isinstance(node, nodes.BinExpr | nodes.UnaryExpr) and node.operator not in ("and", "or", "not"):
        return f"'{node.operator}' is not allowed: templates do no arithmetic; {_ALLOWED}"
    if isinstance(node, nodes.And | nodes.Or | nodes.Not | nodes.Compare | nodes.CondExpr | nodes.Test):
        return f"conditions are not allowed (give a fallback with | default('...')); {_ALLOWED}"
    if isinstance(node, nodes.List | nodes.Tuple | nodes.Dict):
        return f"lists, tuples and dicts are not allowed; {_ALLOWED}"
    return f"{type(node).__name__.lower()} expressions are not allowed; {_ALLOWED}"
