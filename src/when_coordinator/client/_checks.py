"""Argument checks of the public sending API: a wrong argument is the caller's bug, raised at
the call (``TypeError`` / ``ValueError``) rather than dropped later on the client's thread."""

from __future__ import annotations

import math

__all__ = [
    "check_count",
    "check_percent",
    "check_progress",
    "check_text",
    "check_timeout",
    "check_workflow",
]


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def check_workflow(workflow_id: object) -> str:
    if not check_text("workflow_id", workflow_id):
        raise ValueError("workflow_id must not be empty")
    return workflow_id  # type: ignore[return-value]


def check_percent(percent: object) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise TypeError(f"percent must be a number, got {type(percent).__name__}")
    if not 0 <= percent <= 100:  # also false for NaN
        raise ValueError(f"percent must be between 0 and 100, got {percent!r}")
    return percent


def check_timeout(timeout: object) -> float | None:
    """Seconds to wait: None or infinity wait for good, a negative number not at all. NaN
    (every comparison false) once made ``flush()`` wait forever: it is refused here."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, got nan")
    if math.isinf(timeout):
        return None if timeout > 0 else 0.0
    return max(float(timeout), 0.0)


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def check_progress(
    workflow_id: object,
    action_id: object,
    percent: object,
    stage: object,
    message: object,
    current_item: object,
    total_items: object,
) -> None:
    """``send_progress``'s checks. Progress is the most frequent message: its common arguments
    (exact ``str`` and ``float``, no item counts) pass one test, where the separate checks
    were six calls an update; anything else goes through them, which raise."""
    if (
        workflow_id.__class__ is str
        and workflow_id
        and percent.__class__ is float
        and 0 <= percent <= 100  # also false for NaN
        and action_id.__class__ is str
        and stage.__class__ is str
        and message.__class__ is str
        and not (current_item or total_items)
    ):
        return
    check_workflow(workflow_id)
    check_percent(percent)
    if current_item or total_items:
        check_count("current_item", current_item)
        check_count("total_items", total_items)
    check_text("action_id", action_id)
    check_text("stage", stage)
    check_text("message", message)
