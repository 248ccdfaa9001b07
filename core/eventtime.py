"""Event time: the one parser of an event's time field, used by every job.

An event time is epoch seconds (an int or a float) or an ISO 8601 string. A naive ISO time (no
offset) is UTC everywhere, and a trailing ``Z`` is accepted on every supported Python (3.10's
``fromisoformat`` refuses it). Parquet timestamps arrive as `datetime` objects and follow the
same rule. Anything else is a `ValueError` whose message names the value.

>>> event_time("1970-01-01T00:01:00Z"), event_time("1970-01-01T00:01:00"), event_time(12.5)
(60.0, 60.0, 12.5)
>>> event_time("1970-01-01T01:00:00+01:00")
0.0
>>> event_time(1714571100000)
Traceback (most recent call last):
...
ValueError: expected epoch seconds, got 1714571100000 (out of range: milliseconds?)
>>> event_time(True)
Traceback (most recent call last):
...
ValueError: expected epoch seconds or an ISO 8601 time, got True
"""

from __future__ import annotations

import datetime
from typing import Any

_UTC = datetime.timezone.utc


def event_time(value: Any) -> float:
    """`value` as epoch seconds (float); `ValueError` naming the value when it is not a time."""
    kind = type(value)
    if kind is float or kind is int:
        try:
            datetime.datetime.fromtimestamp(value, tz=_UTC)  # in range (epoch milliseconds are not)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"expected epoch seconds, got {value!r} (out of range: milliseconds?)") from None
        return float(value)
    if kind is str:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected epoch seconds or an ISO 8601 time, got {value!r}") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=_UTC)).timestamp()
    if isinstance(value, datetime.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_UTC)).timestamp()
    raise ValueError(f"expected epoch seconds or an ISO 8601 time, got {value!r}")
