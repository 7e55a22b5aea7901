"""Duration strings of the desired-state file ("500ms", "5s", "10m", "1h", "1d").

Pure functions. CeresDB parses the same units (lowercase only), so `format_duration` produces text
that the server accepts back.
"""

from __future__ import annotations

import re
from typing import Final

_UNITS_S: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(text: str) -> float:
    """Return the duration in seconds. Raises ValueError with a readable message."""
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit: ms, s, m, h or d "
            '(for example "500ms", "5s", "10m")'
        )
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact text for `seconds` in the largest unit that divides it ("10s", "500ms")."""
    millis = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis and millis % factor == 0:
            return f"{millis // factor}{unit}"
    return f"{millis}ms"
