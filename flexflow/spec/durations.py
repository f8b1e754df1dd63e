"""Durations as specs write them: ``30s``, ``2m``, ``1h30m``, ``1d``, ``500ms``, or ISO 8601 (``PT2M``)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SHORT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SHORT_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


MAX_DURATION = timedelta(days=30)


def parse_duration(text: str) -> timedelta:
    """A positive duration of at most 30 days, or ValueError saying what a duration looks like."""
    try:
        value = _parse(text.strip())
    except OverflowError:
        value = timedelta.max
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is not a positive duration")
    if value > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION.days} days")
    return value


def _parse(text: str) -> timedelta:
    iso = _ISO.match(text)
    if iso and text not in ("P", "PT") and not text.endswith("T"):
        days, hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif _SHORT_WHOLE.fullmatch(text):  # one anchored pass: finditer restarted at every digit (quadratic)
        value = timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _SHORT.findall(text)))
    else:
        raise ValueError(f"{text!r} is not a duration; write 30s, 2m, 1h, 1h30m or ISO 8601 such as PT2M")
    return value
