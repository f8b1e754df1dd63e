"""Loading spec files: YAML -> schema -> checks beyond the schema -> an immutable :class:`Spec`.

Every problem of a file is reported at once, each as ``path:line:column: message``. Loading reads
files only: no Airflow connection, variable or network is touched, so it is safe on the DAG
processor's hot path.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from croniter import croniter
from jinja2 import Environment, TemplateSyntaxError
from jsonschema.exceptions import ValidationError

from flexflow import defaults as fallback
from flexflow.errors import FlexflowError
from flexflow.spec import model
from flexflow.spec.cache import SpecCache
from flexflow.spec.durations import parse_duration
from flexflow.spec.schema import PLACEHOLDERS, SCHEDULE_PRESETS, spec_checker
from flexflow.spec.yaml_source import Positions, YamlProblem, load

SPEC_SUFFIXES = (".yaml", ".yml")
DURATION_KEYS = ("retry_delay", "timeout", "poll_interval")
SECRET_WORDS = frozenset({"password", "passwd", "secret", "token", "apikey", "credential", "credentials"})
SECRET_PHRASES = ("api_key", "private_key", "access_key", "auth_key")
_JINJA = Environment(autoescape=False)  # noqa: S701 - renders prompts and paths, never HTML
_JINJA_BLOCK = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecProblem:
    file: str
    line: int
    column: int
    message: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path, "message": self.message}


class SpecError(FlexflowError):
    """A spec file (or a folder of them) is not valid; ``problems`` says where and what."""

    def __init__(self, problems: Sequence[SpecProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


def parse_spec(text: str, file: str = "<spec>", cache: SpecCache | None = None) -> model.Spec:
    """A validated :class:`Spec` from YAML text, or :class:`SpecError` with every problem of the text.

    With a cache, a text validated before is not validated again (see :mod:`flexflow.spec.cache`).
    """
    cached = cache.get(text) if cache else None
    if cached is not None:
        try:
            return _build(cached, text, file)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a damaged entry: validate again, which also rewrites it
    try:
        data, positions = load(text)
    except YamlProblem as exc:
        raise SpecError([SpecProblem(file, exc.line, exc.column, exc.message)]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(file, 1, 1, "a spec is a YAML mapping (version: 1, dag_id: ..., images: ...)")])
    # A secret is the first thing to say about a key; then the schema; then the checks beyond it.
    found: dict[Path_, _Problem | Any] = {}
    for path, message in _secret_keys(data, ()):
        found.setdefault(path, _Problem(path, message))
    for problem in spec_checker().problems(data, _hint):
        found.setdefault(problem.path, problem)
    for path, message in _checks(data):
        found.setdefault(path, _Problem(path, message))
    if found:
        raise SpecError([_locate(file, positions, p.path, p.message) for p in found.values()])
    spec = _build(data, text, file)
    if cache:
        cache.put(text, data)
    return spec


@dataclass(frozen=True)
class _Problem:
    path: Path_
    message: str


def _locate(file: str, positions: Positions, path: Path_, message: str) -> SpecProblem:
    # A missing start_date is best shown where the schedule that needs it is.
    line, column = positions.of(("schedule",) if path == ("start_date",) and path not in positions.spots else path)
    dotted = dotted_path(path)
    key = next((part for part in reversed(path) if isinstance(part, str)), None)
    if key and message.startswith(f"{key} "):
        message = message[len(key) + 1 :]  # "guidance must be ..." under the key guidance
    return SpecProblem(file, line, column, message if not dotted else f"{dotted}: {message}", dotted)


def dotted_path(path: Path_) -> str:
    """``("images", 0, "flux", "seed")`` -> ``images[0].flux.seed``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def load_spec(path: str | Path, cache: SpecCache | None = None) -> model.Spec:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError([SpecProblem(str(file), 1, 1, "the file is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError([SpecProblem(str(file), 1, 1, f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse_spec(text, str(file), cache)


# -- messages for schema errors ----------------------------------------------------------------

_HINTS = {
    "name": "must be lowercase letters, digits and _, starting with a letter",
    "dag_id": "must be letters, digits, '_', '.' and '-'",
    "webhook_url": "must be an https URL",
    "to": "must be a file://, s3:// or gs:// URL",
    "start_date": "must be a date such as 2026-11-01",
    "version": "must be 1 (the only spec format so far)",
    **{key: "must be a duration such as 30s, 2m, 1h, 1h30m or PT2M" for key in DURATION_KEYS},
}


def _hint(path: Path_, error: ValidationError) -> str | None:
    key = next((part for part in reversed(path) if isinstance(part, str)), "")
    if error.validator == "minItems" and path and path[-1] == "images":
        return "a spec needs at least one image"
    if error.validator == "minItems" and len(path) >= 2 and path[-2] == "variants":
        return f"list at least one value for {key}"
    if key in _HINTS and error.validator in ("pattern", "const", "type"):
        return f"{_HINTS[key]}; got {error.instance!r}"
    return None


# -- checks beyond the schema ------------------------------------------------------------------


#: The only values rendered at run time; a template anywhere else would be sent as written.
TEMPLATED = frozenset({("images", "prompt"), ("publish", "to"), ("publish", "filename")})


def _checks(data: Mapping[str, Any]) -> Iterable[tuple[Path_, str]]:
    yield from _templates_elsewhere(data, ())
    yield from _schedule(data)
    images = data.get("images") if isinstance(data.get("images"), list) else []
    seen: dict[str, int] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            continue
        name = image.get("name")
        if isinstance(name, str):
            if name in seen:
                yield ("images", index, "name"), f"image name '{name}' is already used by images[{seen[name]}]"
            seen.setdefault(name, index)
        yield from _template(image.get("prompt"), ("images", index, "prompt"))
        yield from _settings(image, ("images", index))
    if isinstance(data.get("defaults"), dict):
        yield from _settings(data["defaults"], ("defaults",))
    yield from _publish(data, len(images), any(isinstance(i, dict) and i.get("variants") for i in images))


def _secret_keys(value: object, path: Path_) -> Iterable[tuple[Path_, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if _looks_secret(key):
                yield (
                    (*path, key),
                    (
                        f"'{key}' looks like a secret; a spec holds no secrets: put the API key in the Airflow "
                        "connection (connection_id) and storage credentials in publish.conn_id's connection"
                    ),
                )
            yield from _secret_keys(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_keys(item, (*path, index))
    elif isinstance(value, str) and value.startswith("afk_"):
        yield path, "this looks like an Apiframe API key; keys belong in the Airflow connection, never in a spec"


def _templates_elsewhere(value: object, path: Path_) -> Iterable[tuple[Path_, str]]:
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


@lru_cache(maxsize=4096)
def _looks_secret(key: str) -> bool:
    normalized = key.lower().replace("-", "_")
    return bool(SECRET_WORDS & set(normalized.split("_"))) or any(p in normalized for p in SECRET_PHRASES)


def _schedule(data: Mapping[str, Any]) -> Iterable[tuple[Path_, str]]:
    schedule = data.get("schedule")
    if isinstance(schedule, str):
        if schedule.startswith("@"):
            if schedule not in SCHEDULE_PRESETS:
                hint = " (it would generate images without pause)" if schedule == "@continuous" else ""
                yield ("schedule",), f"unknown preset '{schedule}'{hint}; use one of {', '.join(SCHEDULE_PRESETS)}"
        elif not croniter.is_valid(schedule):
            yield ("schedule",), f"'{schedule}' is not a valid cron expression (minute hour day month weekday)"
    start = data.get("start_date")
    if schedule is not None and start is None and "schedule" in data:
        yield ("start_date",), "is required when schedule is set (write a date such as 2026-11-01)"
    if isinstance(start, str):
        try:
            _parse_start(start)
        except ValueError:
            yield ("start_date",), f"'{start}' is not a date; write a date such as 2026-11-01"


def _settings(settings: Mapping[str, Any], path: Path_) -> Iterable[tuple[Path_, str]]:
    for key in DURATION_KEYS:
        value = settings.get(key)
        if isinstance(value, str):
            try:
                parse_duration(value)
            except ValueError as exc:
                yield (*path, key), str(exc)


def _template(value: object, path: Path_) -> Iterable[tuple[Path_, str]]:
    if isinstance(value, str):
        error = _template_error(value)
        if error:
            yield path, f"template error: {error}"


@lru_cache(maxsize=4096)
def _template_error(text: str) -> str | None:
    """Jinja's complaint about a template, if any (text without braces needs no parse)."""
    if "{" not in text:
        return None
    try:
        _JINJA.parse(text)
    except TemplateSyntaxError as exc:
        return exc.message or "invalid template"
    return None


def _publish(data: Mapping[str, Any], images: int, has_variants: bool) -> Iterable[tuple[Path_, str]]:
    publish = data.get("publish")
    if not isinstance(publish, dict):
        return
    to = publish.get("to")
    if isinstance(to, str):
        yield from _template(to, ("publish", "to"))
        if ".." in _JINJA_BLOCK.sub("x", to).split("://", 1)[-1].split("/"):
            yield ("publish", "to"), f"'{to}' contains '..'; the target path must stay inside its root"
    filename = publish.get("filename")
    if isinstance(filename, str):
        yield from _filename(filename, images, has_variants)


def _filename(filename: str, images: int, has_variants: bool) -> Iterable[tuple[Path_, str]]:
    path: Path_ = ("publish", "filename")
    yield from _template(filename, path)
    plain = _JINJA_BLOCK.sub("", filename)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(plain) if name is not None}
    except ValueError as exc:
        yield path, f"'{filename}' is not a valid file name pattern: {exc}"
        return
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown:
        allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        yield path, f"unknown placeholder {{{unknown[0]}}}; placeholders are {allowed}"
    elif "/" in plain or "\\" in plain:
        yield path, "a file name cannot contain '/'; put folders in publish.to"
    elif "job_id" not in fields and (
        (images > 1 and "image" not in fields) or (has_variants and "variant" not in fields)
    ):
        yield path, "file names would collide: include {image} (several images) and {variant} (variants), or {job_id}"


def _parse_start(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- building the model ------------------------------------------------------------------------


def _build(data: Mapping[str, Any], text: str, file: str) -> model.Spec:
    defaults = data.get("defaults", {})
    dag_id = data["dag_id"]
    publish = data["publish"]
    return model.Spec(
        path=file,
        source=text,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        dag_id=dag_id,
        description=data.get("description"),
        schedule=data.get("schedule"),
        start_date=_parse_start(data["start_date"]) if data.get("start_date") else None,
        catchup=data.get("catchup", False),
        tags=tuple(data.get("tags", ())),
        owner=data.get("owner", fallback.OWNER),
        connection_id=data.get("connection_id", fallback.CONNECTION_ID),
        params=model.frozen(data.get("params", {})),
        images=tuple(_image(image, defaults) for image in data["images"]),
        publish=model.PublishSpec(
            to=publish["to"],
            conn_id=publish.get("conn_id"),
            filename=publish.get("filename", fallback.FILENAME),
            manifest=publish.get("manifest", True),
            asset=publish.get("asset", f"flexflow://{dag_id}"),
        ),
    )


def _image(image: Mapping[str, Any], defaults: Mapping[str, Any]) -> model.ImageSpec:
    def setting(key: str, fallback: Any) -> Any:
        return image.get(key, defaults.get(key, fallback))

    variants = image.get("variants", {})
    return model.ImageSpec(
        name=image["name"],
        prompt=image["prompt"],
        flux=model.image_flux(defaults.get("flux", {}), image.get("flux", {})),
        variant_keys=tuple(variants),
        variants=model.build_variants(variants),
        retries=setting("retries", fallback.RETRIES),
        retry_delay=_duration(setting("retry_delay", None), fallback.RETRY_DELAY),
        timeout=_duration(setting("timeout", None), fallback.JOB_TIMEOUT),
        poll_interval=_duration(setting("poll_interval", None), fallback.POLL_INTERVAL),
        webhook_url=setting("webhook_url", None),
    )


def _duration(value: str | None, fallback: Any) -> Any:
    return parse_duration(value) if value is not None else fallback


# -- folders -----------------------------------------------------------------------------------


def find_spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """The spec files named, and those under the folders named (recursively), sorted."""
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found.update(p for p in path.rglob("*") if p.suffix in SPEC_SUFFIXES and p.is_file())
        else:
            found.add(path)
    return sorted(found)


@dataclass(frozen=True)
class FolderResult:
    specs: tuple[model.Spec, ...]
    problems: tuple[SpecProblem, ...]
    #: dag_id -> problems, for files that failed (their dag_id read leniently, else the file's stem)
    broken: Mapping[str, tuple[SpecProblem, ...]]


def load_folder(paths: Iterable[str | Path], cache: SpecCache | None = None) -> FolderResult:
    """Load every spec; a broken file never hides the others. Duplicate dag_ids fail in every file."""
    specs: list[model.Spec] = []
    broken: dict[str, list[SpecProblem]] = {}
    for file in find_spec_files(paths):
        if not file.exists():
            broken.setdefault(file.stem, []).append(SpecProblem(str(file), 1, 1, "no such file"))
            continue
        try:
            specs.append(load_spec(file, cache))
        except SpecError as exc:
            broken.setdefault(lenient_dag_id(file), []).extend(exc.problems)
    by_id: dict[str, list[model.Spec]] = {}
    for spec in specs:
        by_id.setdefault(spec.dag_id, []).append(spec)
    valid = []
    for dag_id, same in by_id.items():
        if len(same) == 1:
            valid.append(same[0])
            continue
        for spec in same:
            others = ", ".join(s.path for s in same if s is not spec)
            line, column = load(spec.source)[1].of(("dag_id",))
            broken.setdefault(dag_id, []).append(
                SpecProblem(spec.path, line, column, f"dag_id: '{dag_id}' is also the dag_id of {others}", "dag_id")
            )
    problems = tuple(p for ps in broken.values() for p in ps)
    return FolderResult(tuple(valid), problems, {k: tuple(v) for k, v in broken.items()})


_DAG_ID_LINE = re.compile(r"^dag_id:\s*['\"]?([A-Za-z0-9_.-]+)", re.MULTILINE)


def claimed_dag_id(file: Path) -> str | None:
    """The dag_id a file states on a plain ``dag_id: x`` line, read without YAML; None if none is."""
    try:
        match = _DAG_ID_LINE.search(file.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def lenient_dag_id(file: Path) -> str:
    """The dag_id a broken file meant, so the broken DAG shows under its own name (else the file's stem)."""
    return claimed_dag_id(file) or file.stem
