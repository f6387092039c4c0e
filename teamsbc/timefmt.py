"""Wall-clock times as operators read them: ISO 8601 in UTC with milliseconds and a `Z`."""
from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(t: float | None) -> str | None:
    """Unix seconds -> `2024-05-01T12:00:00.000Z`; None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
