"""What is wrong with a spec, and where: each problem at ``file:line:column``.

Every stage finds problems by path of keys and indexes (a :class:`~flexflow.contract.schema.Problem`);
:func:`locate` turns one into a :class:`SpecProblem` at the spot of the file that path stands for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flexflow.errors import FlexflowError
from flexflow.spec.yaml_source import KeyPath, Positions
from flexflow.text import visible


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


def locate(file: str, positions: Positions, path: KeyPath, message: str) -> SpecProblem:
    """The problem at ``path`` as a person reads it: at its line and column, led by its dotted path."""
    # A missing start_date is best shown where the schedule that needs it is.
    line, column = positions.of(("schedule",) if path == ("start_date",) and path not in positions.spots else path)
    dotted = dotted_path(path)
    key = next((part for part in reversed(path) if isinstance(part, str)), None)
    if key and message.startswith(f"{key} "):
        message = message[len(key) + 1 :]  # "guidance must be ..." under the key guidance
    # Keys and values quoted in a message come from the spec: their control characters are spelled out.
    shown = visible(message if not dotted else f"{dotted}: {message}")
    return SpecProblem(file, line, column, shown, visible(dotted))


def dotted_path(path: KeyPath) -> str:
    """``("images", 0, "flux", "seed")`` -> ``images[0].flux.seed``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
