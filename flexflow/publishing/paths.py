"""Where a run may write: the rendered target folder and file names, checked before anything is submitted.

Pure functions over strings (no Airflow, no I/O), so that ``PreparePublishOperator`` can refuse a bad
target before any job is paid for, and publishing can check each final name again. A target is
rendered from a template a spec author wrote and from params anyone may type into the trigger form;
these rules keep whatever they render inside the folder the spec's literal prefix names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from flexflow.spec.checks import (
    MAX_NAME_BYTES,
    PATH_SYNTAX_RULE,
    RUN_FILES,
    has_path_syntax,
)

#: Where ``{job_id}`` goes before the job exists: as long as the API's ids (UUIDs), so lengths are real.
JOB_ID_STAND_IN = "0" * 36
JOB_ID = "{job_id}"
_PLACEHOLDER = re.compile(r"\{(image|variant|ext|job_id)\}")
_TEMPLATE_START = re.compile(r"{{|{%|{#")
#: Unicode categories no path may hold: controls (NUL, newline, ...), line and paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


class PathRefused(ValueError):
    """A rendered target, name or param value that could leave the target folder."""


def literal_prefix(template: str) -> str:
    """The part of ``publish.to`` before its first template: the root every rendering must stay under."""
    match = _TEMPLATE_START.search(template)
    return template if match is None else template[: match.start()]


def checked_folder(rendered: str, root: str) -> str:
    """The rendered target folder, refused unless it is a plain folder under ``root``, the spec's literal prefix.

    Compared as parsed URLs: the scheme must be the prefix's, a ``file://`` URL has no host
    (``file://host/x``, ``file:////x`` name other machines), and every segment of the path is a real
    name (no ``..``, ``.``, empty or encoded separators), so nothing can climb out of the root.
    """
    _refuse_unsafe_characters(rendered, "the target folder")
    if not rendered.startswith(root):
        raise PathRefused(f"the target folder {rendered!r} is not under {root!r}, the root publish.to names")
    parts, root_parts = urlsplit(rendered), urlsplit(root)
    if parts.scheme != root_parts.scheme:
        raise PathRefused(f"the target folder {rendered!r} changes the scheme of {root!r}")
    if parts.query or parts.fragment or "?" in rendered or "#" in rendered:
        raise PathRefused(f"the target folder {rendered!r} has a query or fragment ('?' or '#')")
    path = _checked_location(rendered, parts.scheme, parts.netloc, parts.path)
    if parts.scheme != "file" and not path.strip("/"):
        return rendered.rstrip("/")  # the bucket itself (validation accepts `s3://bucket`, so does the run)
    for segment in path.strip("/").split("/"):
        _check_segment(segment, f"the target folder {rendered!r}")
    return rendered.rstrip("/")


def _checked_location(rendered: str, scheme: str, host: str, path: str) -> str:
    """The path part; a local target names no host, a bucket target names its bucket."""
    if scheme == "file":
        if host or not path.startswith("/") or path.startswith("//"):
            raise PathRefused(f"the target folder {rendered!r} is not a local path (write file:///folder)")
        return path
    _check_segment(host, f"the target folder {rendered!r} (its bucket)")
    return path.removeprefix("/")


def checked_name(name: str, reserved: Iterable[str] = ()) -> str:
    """A file name: one path segment of at most 255 bytes, and none of the names the run writes itself."""
    _refuse_unsafe_characters(name, "the file name")
    _check_segment(name, f"the file name {name!r}")
    if name in reserved:
        raise PathRefused(f"the file name {name!r} is reserved: the run writes that file itself")
    return name


def _check_segment(segment: str, where: str) -> None:
    decoded = unquote(segment)  # object stores and browsers decode %2F and %2e%2e: judge what they see
    if decoded in ("", ".", ".."):
        raise PathRefused(f"{where} has an empty, '.' or '..' path segment")
    if "/" in decoded or "\\" in decoded:
        raise PathRefused(f"{where} has a path separator in a name")
    _refuse_unsafe_characters(decoded, where)
    size = len(segment.encode())
    if size > MAX_NAME_BYTES:
        raise PathRefused(f"{where}: a name of {size} bytes is longer than {MAX_NAME_BYTES} bytes")


def _refuse_unsafe_characters(text: str, where: str) -> None:
    if "\\" in text:
        raise PathRefused(f"{where} {text!r} has a backslash")
    for character in text:
        if _is_control(character):
            raise PathRefused(f"{where} {text!r} has a control character ({character!r})")


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in _CONTROL_CATEGORIES


def substituted(pattern: str, values: Mapping[str, str]) -> str:
    """The pattern with each placeholder replaced once, literally: no format specs, no attribute access.

    One pass, so a value that itself looks like a placeholder stays as written.
    """
    return _PLACEHOLDER.sub(lambda match: values.get(match[1], match[0]), pattern)


def numbered(name: str, number: int) -> str:
    """The name of a job's ``number``-th image (from 1) when it returns several: ``poster.png`` -> ``poster-2.png``.

    The number goes before the extension, so the file keeps its type; :func:`unique_names` refuses a run in
    which such a name could be another job's file.
    """
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{number}.{ext}" if dot and stem else f"{name}-{number}"


def _unnumbered(name: str) -> str | None:
    """The name whose numbered form ``name`` is (``poster-2.png`` -> ``poster.png``), or None."""
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem):
        stem, dot, ext = name, "", ""
    match = _NUMBERED_STEM.fullmatch(stem)
    return f"{match[1]}{dot}{ext}" if match else None


_NUMBERED_STEM = re.compile(r"(.+)-[1-9][0-9]*")


def unique_names(names: Iterable[str]) -> None:
    """Refuses two jobs writing one file. Names still holding ``{job_id}`` differ by their job's id.

    A job may return several images, numbered by :func:`numbered`; a name that is another name's numbered
    form (``poster_seed-1.png`` beside ``poster_seed.png``) is refused too, since it could be overwritten.
    """
    seen: set[str] = set()
    for name in names:
        if name in seen and JOB_ID not in name:
            raise PathRefused(f"two images of the run would be written to {name!r}; file names must be unique")
        seen.add(name)
    for name in sorted(seen):
        base = _unnumbered(name)
        if base in seen and JOB_ID not in name:
            raise PathRefused(
                f"the file name {name!r} is what the job writing {base!r} names its images when it returns "
                "several (numbered before the extension); rename one of the images or change publish.filename"
            )


def checked_param(name: str, value: object) -> None:
    """A param the target or a name reads is a value, never path syntax (it may come from the trigger form)."""
    if has_path_syntax(value):
        raise PathRefused(f"param {name!r} is {str(value)!r}: {PATH_SYNTAX_RULE}")


@dataclass(frozen=True)
class PlannedFile:
    """One job's file before it runs: its image, its variant label, the extension of its output format."""

    image: str
    variant: str
    ext: str


def planned_target(
    rendered_to: str, root: str, pattern: str, files: Iterable[PlannedFile], params: Mapping[str, object]
) -> dict[str, Any]:
    """The run's folder and each job's file name (``{job_id}`` left in), every one checked.

    ``params`` are the values the target and names read; they are checked first, so that a bad value
    typed into the trigger form is named as such rather than as the path it produced.
    """
    for name in sorted(params):
        checked_param(name, params[name])
    folder = checked_folder(rendered_to, root)
    names: dict[str, dict[str, str]] = {}
    for file in files:
        name = substituted(pattern, {"image": file.image, "variant": file.variant, "ext": file.ext})
        checked_name(substituted(name, {"job_id": JOB_ID_STAND_IN}), reserved=tuple(RUN_FILES))
        names.setdefault(file.image, {})[file.variant] = name
    unique_names(name for by_variant in names.values() for name in by_variant.values())
    return {"folder": folder, "names": names}
