"""Text shown to people (terminals, logs, the Airflow UI, HTML): what a reader cannot see is spelled out.

Spec text is written by many hands (issue 11): an escape sequence in a key can clear a terminal or forge
a CI log line, and bidi overrides make a value read differently from what it is. Shown as code points,
they cannot. This module imports nothing of flexflow, so every layer can use it.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

#: Unicode categories a reader cannot see: controls, formats (bidi overrides, zero-width, tag characters),
#: surrogates, private use, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def visible(text: str, keep: str = "") -> str:
    """``text`` with every character a reader cannot see (except those in ``keep``) written as ``[U+XXXX]``.

    Bidi overrides and zero-width characters make a value read differently from what it is (the
    "Trojan Source" trick); shown as code points, they cannot.
    """
    if (text.translate(_deleting(keep)) if keep else text).isprintable():
        return text  # the common case, found by C code: a spec's whole YAML in microseconds
    return "".join(f"[U+{ord(c):04X}]" if c not in keep and unicodedata.category(c) in _HIDDEN else c for c in text)


@lru_cache(maxsize=8)
def _deleting(characters: str) -> dict[int, int | None]:
    return str.maketrans("", "", characters)
