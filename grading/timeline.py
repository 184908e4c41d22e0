"""What a chaos check did and when: the fault it injected, the lab's recovery, the ledger's outcome.

The grading plugin opens a timeline around each check (:func:`begin` / :func:`end`); the chaos helpers
(``grading.facts``) and the ledger (``grading.client``) :func:`mark` events on it, in seconds since the check began.
A check that marks nothing has no timeline. The events reach grades.json (``timeline`` of the check) and the HTML
report draws them as a small timeline per chaos check.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

KINDS = ("fault", "recovered", "ledger", "probe")
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "labkit_timeline", default=None
)


def begin() -> contextvars.Token:
    return _current.set({"t0": time.monotonic(), "events": []})


def mark(kind: str, event: str) -> None:
    """Record ``event`` (one of :data:`KINDS`) at the current time of the running check's timeline, if any."""
    timeline = _current.get()
    if timeline is not None:
        if kind not in KINDS:
            raise ValueError(f"timeline kind {kind!r} is not one of {KINDS}")
        timeline["events"].append(
            {"t": round(time.monotonic() - timeline["t0"], 1), "kind": kind, "event": event}
        )


def end(token: contextvars.Token) -> list[dict[str, Any]]:
    timeline = _current.get()
    _current.reset(token)
    return list(timeline["events"]) if timeline else []
