"""The package type checks under mypy --strict (config in pyproject.toml's [tool.mypy]).

CI runs only pytest, so this test is what puts the type checker in CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    # No paths on the command line: [tool.mypy] files says what to check, so a local
    # `python -m mypy` and this test check the same thing.
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
