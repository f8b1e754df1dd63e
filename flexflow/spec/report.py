"""Showing spec problems to a person (source excerpt with a caret) or a program (JSON)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from flexflow.spec.problems import SpecProblem
from flexflow.text import visible

RED, BOLD, DIM, RESET = "\033[31m", "\033[1m", "\033[2m", "\033[0m"


def use_color(stream: TextIO) -> bool:
    """Color only for a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def render_text(problems: Sequence[SpecProblem], color: bool) -> str:
    lines: list[str] = []
    sources: dict[str, list[str]] = {}
    for problem in problems:
        location = f"{problem.file}:{problem.line}:{problem.column}"
        if color:
            lines.append(f"{BOLD}{location}{RESET}: {RED}error{RESET}: {problem.message}")
        else:
            lines.append(f"{location}: {problem.message}")
        source = sources.setdefault(problem.file, _read_lines(problem.file))
        if 0 < problem.line <= len(source):
            text = visible(source[problem.line - 1].rstrip("\n"))
            gutter = f"{problem.line:>5} | "
            caret = " " * (len(gutter) + problem.column - 1) + "^"
            lines.append(f"{DIM}{gutter}{RESET}{text}" if color else f"{gutter}{text}")
            lines.append(f"{RED}{caret}{RESET}" if color else caret)
    return "\n".join(lines)


def _read_lines(file: str) -> list[str]:
    try:
        return Path(file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def render_json(problems: Sequence[SpecProblem], files: Sequence[str]) -> str:
    return json.dumps(
        {"valid": not problems, "files": list(files), "problems": [p.to_dict() for p in problems]}, indent=2
    )
