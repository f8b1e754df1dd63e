"""Checks beyond the schema: what JSON Schema cannot say about a spec.

Secrets (a spec holds none: :mod:`flexflow.spec.secrets`), templates (only where rendered, and within
the allow-list of :mod:`flexflow.spec.templates`), the schedule (cron,
presets, a start date), durations, unique image names, and publishing (a target inside its root,
file names that cannot collide). Each check reads the raw data and skips values of the wrong type:
the schema reports those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from croniter import croniter
from jinja2 import nodes

from flexflow.contract.schema import Problem
from flexflow.defaults import MAX_REVIEW_TIMEOUT, MIN_REVIEW_TIMEOUT, deployment_limits, shown
from flexflow.spec.airflow_rules import schedule_problem, start_date_problem
from flexflow.spec.durations import parse_duration
from flexflow.spec.schema import DURATION_KEYS, PLACEHOLDERS, SCHEDULE_PRESETS
from flexflow.spec.secrets import secret_problems as secret_problems  # the pipeline's first check
from flexflow.spec.templates import TemplateProblem, parse_template, template_problems
from flexflow.spec.yaml_source import KeyPath

#: The only values rendered at run time; a template anywhere else would be sent as written.
TEMPLATED = frozenset({("images", "prompt"), ("publish", "to"), ("publish", "filename")})

#: An unclosed block runs to the end (a template error anyway): else each later "{{" rescans the rest, quadratic.
_JINJA_BLOCK = re.compile(r"{{.*?(?:}}|\Z)|{%.*?(?:%}|\Z)|{#.*?(?:#}|\Z)", re.DOTALL)

Finding = tuple[KeyPath, str]


def problems_beyond_schema(data: Mapping[str, Any]) -> Iterator[Problem]:
    """Every other check: templates, schedule, durations, image names, publishing."""
    return (Problem(path, message) for path, message in _checks(data))


def _checks(data: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _templates(data)
    yield from _templates_elsewhere(data, ())
    yield from _schedule(data)
    listed = data.get("images")
    images: list[Any] = listed if isinstance(listed, list) else []
    seen: dict[str, int] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            continue
        name = image.get("name")
        if isinstance(name, str):
            if name in seen:
                yield ("images", index, "name"), f"image name '{name}' is already used by images[{seen[name]}]"
            seen.setdefault(name, index)
        yield from _settings(image, ("images", index))
    if isinstance(data.get("defaults"), dict):
        yield from _settings(data["defaults"], ("defaults",))
    yield from _webhook_events(data.get("defaults"), images)
    yield from _publish(data, len(images), any(isinstance(i, dict) and i.get("variants") for i in images))


def _templates_elsewhere(value: object, path: KeyPath) -> Iterator[Finding]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _templates_elsewhere(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _templates_elsewhere(item, (*path, index))
    elif isinstance(value, str) and ("{{" in value or "{%" in value):
        named = tuple(part for part in path if isinstance(part, str))
        if (named[0], named[-1]) not in TEMPLATED:
            yield (
                path,
                (
                    "templates are rendered only in prompt, publish.to and publish.filename; "
                    "this value would be sent as written"
                ),
            )


def _schedule(data: Mapping[str, Any]) -> Iterator[Finding]:
    schedule = data.get("schedule")
    if isinstance(schedule, str):
        if schedule.startswith("@") and schedule not in SCHEDULE_PRESETS:
            hint = " (it would generate images without pause)" if schedule == "@continuous" else ""
            yield ("schedule",), f"unknown preset '{schedule}'{hint}; use one of {', '.join(SCHEDULE_PRESETS)}"
        elif not schedule.startswith("@") and not croniter.is_valid(schedule):
            yield ("schedule",), f"'{schedule}' is not a valid cron expression (minute hour day month weekday)"
        elif problem := schedule_problem(schedule, deployment_limits().min_schedule_interval):
            yield ("schedule",), problem  # never fires, or too often for this deployment
    start = data.get("start_date")
    if schedule is not None and start is None and "schedule" in data:
        yield ("start_date",), "is required when schedule is set (write a date such as 2026-11-01)"
    if isinstance(start, str):
        try:
            when = datetime.fromisoformat(start)  # as the model reads it (flexflow.spec.build.start_date)
        except ValueError:
            yield ("start_date",), f"'{start}' is not a date; write a date such as 2026-11-01"
        else:
            if problem := start_date_problem(when):
                yield ("start_date",), problem


def _settings(settings: Mapping[str, Any], path: KeyPath) -> Iterator[Finding]:
    for key in DURATION_KEYS:
        value = settings.get(key)
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError as exc:
                yield (*path, key), str(exc)


#: Why webhook_events needs a URL: the API would take the events and notify no one.
_EVENTS_WITHOUT_URL = "webhook_events has no effect without webhook_url"


def _webhook_events(defaults: object, images: list[Any]) -> Iterator[Finding]:
    """webhook_events only beside a webhook_url that applies to it: its image's, or one in defaults.

    Events in ``defaults`` need a URL in ``defaults`` or in at least one image (the images without
    one get no webhook, as without events).
    """
    shared = defaults if isinstance(defaults, dict) else {}
    own = [image for image in images if isinstance(image, dict)]
    for index, image in enumerate(images):
        if isinstance(image, dict) and "webhook_events" in image and "webhook_url" not in {**shared, **image}:
            yield (
                ("images", index, "webhook_events"),
                f"{_EVENTS_WITHOUT_URL}: set webhook_url in this image or in defaults, or remove webhook_events",
            )
    if "webhook_events" in shared and "webhook_url" not in shared and not any("webhook_url" in i for i in own):
        yield (
            ("defaults", "webhook_events"),
            f"{_EVENTS_WITHOUT_URL}: set webhook_url in defaults or in an image, or remove webhook_events",
        )


def _templates(data: Mapping[str, Any]) -> Iterator[Finding]:
    """The values rendered at run time against the allow-list of :mod:`flexflow.spec.templates`."""
    params = data.get("params")
    declared = frozenset(params) if isinstance(params, dict) else frozenset()
    images = data.get("images")
    for index, image in enumerate(images if isinstance(images, list) else []):
        if isinstance(image, dict):
            yield from _template(image.get("prompt"), ("images", index, "prompt"), declared)
    publish = data.get("publish")
    for key in ("to", "filename"):
        if isinstance(publish, dict):
            yield from _template(publish.get(key), ("publish", key), declared)


def _template(value: object, path: KeyPath, params: frozenset[str]) -> Iterator[Finding]:
    if isinstance(value, str):
        for problem in template_problems(value, params):
            yield path, f"template error: {problem}"


def _publish(data: Mapping[str, Any], images: int, has_variants: bool) -> Iterator[Finding]:
    """What can be known of the target before a run; the rendered target is checked again at run time."""
    publish = data.get("publish")
    if not isinstance(publish, dict):
        return
    to = publish.get("to")
    if isinstance(to, str):
        problem = _target_problem(to)
        if problem:
            yield ("publish", "to"), problem
    filename = publish.get("filename")
    if isinstance(filename, str):
        yield from _filename(filename, images, has_variants, publish.get("manifest") is not False)
    yield from _path_params(data, [t for t in (to, filename) if isinstance(t, str)])
    yield from _review_timeout(publish)


def _review_timeout(publish: Mapping[str, Any]) -> Iterator[Finding]:
    """Bounded so that the approval's deadline is a real date, and only beside the review it times."""
    text = publish.get("review_timeout")
    if not isinstance(text, str):
        return
    path: KeyPath = ("publish", "review_timeout")
    if publish.get("review") != "required":
        yield path, "has no effect without review: required"
        return
    try:
        timeout = parse_duration(text)
    except ValueError as exc:
        yield path, str(exc)
        return
    if not MIN_REVIEW_TIMEOUT <= timeout <= MAX_REVIEW_TIMEOUT:
        yield (
            path,
            (
                f"the review waits from {shown(MIN_REVIEW_TIMEOUT)} to {shown(MAX_REVIEW_TIMEOUT)}; "
                f"{text} is {'too short' if timeout < MIN_REVIEW_TIMEOUT else 'too long'}"
            ),
        )


#: Why a param's value may not be part of a path.
PATH_SYNTAX_RULE = "a value used in a path cannot hold '/', '\\', '..' or control characters"
_PATH_SYNTAX = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u2028\u2029]|\.\.")


def has_path_syntax(value: object) -> bool:
    """Whether a param's value, rendered into a path, would be path syntax rather than a name."""
    return bool(_PATH_SYNTAX.search(str(value)))


def _path_params(data: Mapping[str, Any], templates: list[str]) -> Iterator[Finding]:
    """A param's own value that the target or the file name reads is checked as the trigger form's would be."""
    params = data.get("params")
    if not isinstance(params, dict):
        return
    try:
        used = template_params(*templates)
    except TemplateProblem:
        return  # the template check reports it
    for name, value in params.items():
        if (used is None or name in used) and has_path_syntax(value):
            yield ("params", name), f"is used in publish.to or publish.filename; {PATH_SYNTAX_RULE}"


@lru_cache(maxsize=4096)  # the compiler asks again each time Airflow parses the DAG file
def template_params(*templates: str) -> frozenset[str] | None:
    """The params the templates read (``params.x``, ``params['x']``); None when they read ``params`` whole."""
    used: set[str] = set()
    for template in templates:
        tree = parse_template(template)
        uses = sum(1 for name in tree.find_all(nodes.Name) if name.name == "params")
        keys = [_param_key(node) for node in tree.find_all((nodes.Getattr, nodes.Getitem))]
        read = [key for key in keys if key is not None]
        if uses != len(read) or "" in read:
            return None  # params passed on whole (a filter, a loop, a computed key): every param counts
        used.update(read)
    return frozenset(used)


def _param_key(node: nodes.Node) -> str | None:
    """``x`` of ``params.x`` or ``params['x']``; "" for ``params[<expression>]``; None for other lookups."""
    if not (isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name)):
        return None
    if node.node.name != "params":
        return None
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else ""


def _target_problem(to: str) -> str | None:
    """The literal text of ``publish.to`` (templates count as one plain name): one local or bucket folder."""
    literal = _JINJA_BLOCK.sub("x", to)
    scheme, _, rest = literal.partition("://")
    if _UNSAFE_CHARACTER.search(literal):
        return f"{to!r} contains a control character or a backslash; the target is a plain folder URL"
    if "?" in literal or "#" in literal:
        return f"{to!r} contains '?' or '#'; the target is a plain folder URL, without query or fragment"
    if scheme == "file" and not (rest.startswith("/") and not rest.startswith("//")):
        return f"{to!r} names a host; a file:// target is a local folder: write file:///folder"
    segments = rest.rstrip("/").split("/")
    names = segments[1:] if scheme == "file" else segments  # a local path starts at "/", a bucket's at its name
    if ".." in names:
        return f"{to!r} contains '..'; the target path must stay inside its root"
    if "" in names or "." in names:
        return f"{to!r} contains an empty or '.' path segment; write each folder once"
    return None


#: A brace pair in a file name pattern: a placeholder, or something str.format would have read.
_BRACES = re.compile(r"{([^{}]*)}")
_UNSAFE_CHARACTER = re.compile(r"[\x00-\x1f\x7f\\\u2028\u2029]")
MAX_NAME_BYTES = 255
MANIFEST_NAME = "manifest.json"
#: The run's HTML contact sheet, written beside the manifest (the gallery and the review link to it).
CONTACT_SHEET_NAME = "index.html"
#: The files a run writes beside its images, by what they are; no image may take their names.
RUN_FILES = {MANIFEST_NAME: "manifest", CONTACT_SHEET_NAME: "contact sheet"}


def _filename(filename: str, images: int, has_variants: bool, manifest: bool) -> Iterator[Finding]:
    """Placeholders are replaced literally at run time: ``{image}`` is one, ``{image!r}`` is refused."""
    path: KeyPath = ("publish", "filename")
    plain = _JINJA_BLOCK.sub("", filename)
    fields = set()
    for inside in _BRACES.findall(plain):
        problem = _placeholder_problem(inside)
        if problem:
            yield path, problem
            return
        fields.add(inside)
    literal = _BRACES.sub("", plain)
    if "/" in plain or "\\" in plain:
        yield path, "a file name cannot contain '/' or '\\'; put folders in publish.to"
    elif _UNSAFE_CHARACTER.search(plain):
        yield path, "a file name cannot contain control characters (a newline, a tab, NUL)"
    elif (size := len(literal.encode())) > MAX_NAME_BYTES:
        yield path, f"a file name is at most {MAX_NAME_BYTES} bytes; this pattern's own text is {size} bytes"
    elif manifest and plain in RUN_FILES:
        yield path, f"'{plain}' is the run's {RUN_FILES[plain]}; name the images otherwise (or set manifest: false)"
    elif "job_id" not in fields and (
        (images > 1 and "image" not in fields) or (has_variants and "variant" not in fields)
    ):
        yield path, "file names would collide: include {image} (several images) and {variant} (variants), or {job_id}"


def _placeholder_problem(inside: str) -> str | None:
    """Why ``{inside}`` is no placeholder: the names are replaced as written, with nothing to format."""
    name = re.split(r"[!:.\[]", inside, maxsplit=1)[0]
    if name in PLACEHOLDERS and inside != name:
        what = {"!": "a conversion", ":": "a format spec", ".": "attribute access", "[": "index access"}
        return f"{{{inside}}} uses {what[inside[len(name)]]}; placeholders are replaced as written: write {{{name}}}"
    if inside not in PLACEHOLDERS:
        allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        return f"unknown placeholder {{{inside}}}; placeholders are {allowed}"
    return None
