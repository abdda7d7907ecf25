"""Ollama's `keep_alive`: how long a model stays loaded after a request, as Go durations or seconds."""

from __future__ import annotations

import math
import re

from minerva.core.errors import InvalidRequestError

FOREVER = -1.0
"""A negative keep-alive: never unload for idleness (the pool's convention)."""

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")


def go_duration_seconds(text: str) -> float:
    """Seconds of a Go duration string ("5m", "1h30m", "-1s", "250ms", "0"); ValueError when it is not one."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    if position == 0:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Seconds to keep the model loaded after the request (FOREVER when negative); None when not given.

    Numbers are seconds; strings are Go durations, or a bare number of seconds.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            seconds = float(value) if _NUMBER.fullmatch(value.strip()) else go_duration_seconds(value)
        except ValueError:
            raise InvalidRequestError(
                f"invalid keep_alive {value!r}: use a duration such as \"5m\", \"30s\" or \"1h\", a number of "
                "seconds, a negative value to keep the model loaded, or 0 to unload it after the request",
                param="keep_alive") from None
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise InvalidRequestError("invalid keep_alive: not a number", param="keep_alive")
    return FOREVER if seconds < 0 else seconds
