"""Text views of the operator API's records for the command line.

Every table fits a given width: columns are padded to line up (by terminal cells, so wide
characters count twice), the flexible ones shrink first, and a cell that does not fit is cut
with ``…`` rather than wrapped. The records are the hub's JSON; names the hub may not send
(``name``, ``service_name``: older hubs) are derived here, so any hub reads the same.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "LEVELS",
    "PHASE_WIDTH",
    "bar",
    "cut",
    "display_progress",
    "fit_table",
    "log_line",
    "percent",
    "phases_filter",
    "short_ids",
    "sort_tree",
    "workflow_name",
]

TERMINAL_PHASES = frozenset({"completed", "cancelled", "failed"})
ALL_PHASES = (
    "pending",
    "pre-flight",
    "planning",
    "execution",
    "pausing",
    "paused",
    "resuming",
    "cancelling",
    "completing",
    "completed",
    "cancelled",
    "failed",
)
PHASE_WIDTH = max(len(p) for p in ALL_PHASES)
LEVELS = ("debug", "info", "warn", "error", "fatal")
SHORT_ID = 12
"""Ids are shown to this many characters (more where needed to stay unique); any unique
prefix is accepted back by every command."""


def width(text: str) -> int:
    """Terminal cells ``text`` takes: East Asian wide characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def cut(text: str, cells: int) -> str:
    """``text`` in at most ``cells`` terminal cells, ending in ``…`` if it was cut."""
    text = " ".join(text.split()) if "\n" in text or "\t" in text else text
    if width(text) <= cells:
        return text
    if cells <= 0:
        return ""
    out, used = [], 0
    for char in text:
        step = width(char)
        if used + step > cells - 1:
            break
        out.append(char)
        used += step
    return "".join(out) + "…"


def pad(text: str, cells: int, *, right: bool = False) -> str:
    text = cut(text, cells)
    fill = " " * (cells - width(text))
    return fill + text if right else text + fill


def fit_table(
    rows: Sequence[Sequence[str]],
    total: int | None = None,
    *,
    shrink: Sequence[int] = (),
    minimum: int = 4,
    right: Iterable[int] = (),
) -> list[str]:
    """Rows (the first is the header) as aligned lines at most ``total`` cells wide.

    Columns named in ``shrink`` give up width first, in that order (the stage before the
    name before the service: what identifies a row goes last), down to ``minimum``;
    whatever still does not fit is cut at the end of the line. ``None`` is no limit.
    """
    if not rows:
        return []
    columns = len(rows[0])
    widths = [max(width(row[i]) for row in rows) for i in range(columns)]
    if total is not None:
        excess = sum(widths) + 2 * (columns - 1) - total
        for index in shrink:
            if excess <= 0:
                break
            give = min(excess, max(0, widths[index] - minimum))
            widths[index] -= give
            excess -= give
    aligned = set(right)
    lines = []
    for number, row in enumerate(rows):
        line = "  ".join(
            pad(cell, w, right=number > 0 and i in aligned)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ).rstrip()
        lines.append(cut(line, total) if total is not None else line)
    return lines


def bar(value: float, cells: int = 20) -> str:
    filled = round(max(0.0, min(100.0, value)) / 100 * cells)
    return "[" + "#" * filled + "-" * (cells - filled) + "]"


def percent(value: float) -> str:
    return f"{value:.0f}%" if float(value).is_integer() else f"{value:.1f}%"


def display_progress(workflow: Mapping[str, Any]) -> float:
    """Progress as shown: a completed workflow that never reported any is done, so 100 %."""
    value = float(workflow.get("progress") or 0.0)
    if (
        workflow.get("phase") == "completed"
        and value == 0.0
        and not (workflow.get("stage") or workflow.get("message") or workflow.get("total_items"))
    ):
        return 100.0
    return value


def workflow_name(workflow: Mapping[str, Any]) -> str:
    return str(workflow.get("name") or workflow.get("action_type") or "")


def service_label(workflow: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """The service's registered name (from the record, else the services the hub listed)."""
    service_id = str(workflow.get("service_id") or "")
    name = str(workflow.get("service_name") or "")
    if not name or name == service_id:
        name = names.get(service_id) or service_id
    return name or "-"


def service_names(services: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    return {
        str(s["service_id"]): str(s.get("service_name") or s["service_id"])
        for s in services
        if s.get("service_id")
    }


def short_ids(ids: Iterable[str], keep: int = SHORT_ID) -> dict[str, str]:
    """Each id cut to ``keep`` characters, or longer where that would not be unique.

    Neighbours in sorted order share the longest prefixes, so comparing with them suffices.
    """
    ordered = sorted(set(ids))
    out = {}
    for index, workflow_id in enumerate(ordered):
        need = keep
        for other in ordered[max(0, index - 1) : index + 2]:
            if other != workflow_id:
                common = next(
                    (i for i, (a, b) in enumerate(zip(workflow_id, other, strict=False)) if a != b),
                    min(len(workflow_id), len(other)),
                )
                need = max(need, common + 1)
        out[workflow_id] = workflow_id if need >= len(workflow_id) - 1 else workflow_id[:need]
    return out


def sort_key(workflow: Mapping[str, Any]) -> tuple[bool, float, str]:
    """Active first, then newest first."""
    return (
        workflow.get("phase") in TERMINAL_PHASES,
        -float(workflow.get("created_at") or 0.0),
        str(workflow.get("workflow_id", "")),
    )


def sort_tree(workflows: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """Workflows in tree order (children under their parent), each level active first and
    newest first, with their depths."""
    by_id = {w["workflow_id"]: w for w in workflows}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots = []
    for workflow in workflows:
        parent = workflow.get("parent_workflow_id") or ""
        if parent and parent in by_id and parent != workflow["workflow_id"]:
            children.setdefault(parent, []).append(workflow)
        else:
            roots.append(workflow)
    out: list[tuple[int, Mapping[str, Any]]] = []
    seen: set[str] = set()

    def visit(workflow: Mapping[str, Any], depth: int) -> None:
        if workflow["workflow_id"] in seen:
            return
        seen.add(workflow["workflow_id"])
        out.append((depth, workflow))
        for child in sorted(children.get(workflow["workflow_id"], ()), key=sort_key):
            visit(child, depth + 1)

    for root in sorted(roots, key=sort_key):
        visit(root, 0)
    for workflow in workflows:  # cycles: show them flat rather than lose them
        visit(workflow, 0)
    return out


def phases_filter(text: str) -> frozenset[str] | None:
    """``--phase``: comma-separated phases, ``active`` (not finished) or ``terminal``."""
    if not text:
        return None
    out: set[str] = set()
    for raw in text.split(","):
        word = raw.strip().lower()
        if word == "active":
            out |= set(ALL_PHASES) - TERMINAL_PHASES
        elif word == "terminal":
            out |= TERMINAL_PHASES
        elif word in ALL_PHASES:
            out.add(word)
        elif word:
            raise ValueError(
                f"unknown phase {word!r}: use {', '.join(ALL_PHASES)}, active or terminal"
            )
    return frozenset(out)


def ago(epoch: float, now: float) -> str:
    if not epoch:
        return "-"
    return duration(now - epoch) + " ago"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def clock(epoch: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def progress_cell(workflow: Mapping[str, Any], cells: int | None) -> str:
    """``[####------]  40%``: the bar (if ``cells``) and a percentage padded so bars align."""
    value = display_progress(workflow)
    text = percent(value).rjust(4)
    return f"{bar(value, cells)} {text}" if cells else text


def workflow_rows(
    workflows: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    *,
    now: float,
    bar_cells: int | None = None,
    errors: bool = True,
) -> list[list[str]]:
    """The header and one row per workflow, in tree order (see ``sort_tree``)."""
    shorts = short_ids(w["workflow_id"] for w in workflows)
    header = ["WORKFLOW", "NAME", "SERVICE", "PHASE", "PROGRESS", "STAGE"]
    header += ["ERRORS", "UPDATED"] if errors else ["UPDATED"]
    rows = [header]
    for depth, w in sort_tree(workflows):
        marker = "  " * (depth - 1) + "└ " if depth else ""
        row = [
            marker + shorts[w["workflow_id"]],
            workflow_name(w) or "-",
            service_label(w, names),
            str(w.get("phase", "")),
            progress_cell(w, bar_cells),
            str(w.get("stage") or w.get("current_action") or "-"),
        ]
        if errors:
            row.append(str(w.get("error_count", 0) or "-"))
        row.append(ago(float(w.get("updated_at") or 0.0), now))
        rows.append(row)
    return rows


def workflow_table(
    workflows: Sequence[Mapping[str, Any]],
    names: Mapping[str, str],
    *,
    now: float | None = None,
    total: int | None = None,
) -> list[str]:
    """The ``workflows`` table: NAME, STAGE and SERVICE shrink first to fit ``total``."""
    rows = workflow_rows(workflows, names, now=time.time() if now is None else now)
    return fit_table(rows, total, shrink=(5, 1, 2), right=(4,))


def log_line(record: Mapping[str, Any], names: Mapping[str, str], shorts: Mapping[str, str]) -> str:
    """One log entry: time, level, service, workflow, message and its fields."""
    at = float(record.get("at") or 0.0)
    workflow_id = str(record.get("workflow_id") or "")
    service = names.get(str(record.get("service_id") or ""), str(record.get("service_id") or "-"))
    fields = record.get("fields") or {}
    extra = " ".join(f"{k}={v}" for k, v in fields.items()) if isinstance(fields, dict) else ""
    text = " ".join(str(record.get("message", "")).split())
    return (
        f"{clock(at) if at else '--:--:--'} {str(record.get('level', '')).upper():<5} "
        f"{service} {shorts.get(workflow_id, workflow_id) or '-'}  {text}"
        + (f"  {extra}" if extra else "")
    )
