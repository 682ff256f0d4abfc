"""Read-side views of the hub's state for operators: summaries with names, filtered pages, counts.

The dashboard and the HTTP API share these, so a workflow looks the same everywhere: its
``name`` (from ``workflow_created``'s ``action_type``), its service's registered
``service_name``, the ``commands`` its phase allows, and a progress of 100 for a completed
workflow that never reported any. A page is sorted active first, then newest first, and cut on
the hub, so a list of many thousands of workflows costs the browser one page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..protocol import Phase
from .model import WorkflowState

if TYPE_CHECKING:
    from .view import HubView

__all__ = [
    "allowed_commands",
    "matches",
    "overview",
    "query",
    "summary",
    "workflow_detail",
]

MAX_PAGE = 500
MAX_TREE = 500

_COMMAND_TARGETS = (
    ("pause", Phase.PAUSING),
    ("resume", Phase.RESUMING),
    ("cancel", Phase.CANCELLING),
)


def allowed_commands(phase: Phase) -> list[str]:
    """The steering commands the phase table allows from ``phase`` (what the page offers)."""
    return [name for name, target in _COMMAND_TARGETS if phase.can_transition_to(target)]


def _progress(workflow: WorkflowState) -> float:
    """Progress as shown: a completed workflow that never reported progress is 100 %."""
    if (
        workflow.phase is Phase.COMPLETED
        and workflow.progress == 0.0
        and not (workflow.stage or workflow.message or workflow.total_items)
    ):
        return 100.0
    return workflow.progress


def summary(hub: HubView, workflow: WorkflowState, *, full: bool = False) -> dict[str, Any]:
    """``workflow.as_dict`` plus what an operator reads it by: names and allowed commands."""
    out = workflow.as_dict(full=full)
    service = hub.services.get(workflow.service_id)
    out["name"] = workflow.action_type
    out["service_name"] = (service.service_name if service else "") or workflow.service_id
    out["progress"] = _progress(workflow)
    out["commands"] = allowed_commands(workflow.phase)
    return out


def _phases(text: str) -> frozenset[Phase] | None:
    """``phase=`` as a set: comma-separated phases, ``active`` (not terminal) or ``terminal``."""
    if not text:
        return None
    out: set[Phase] = set()
    for raw in text.split(","):
        word = raw.strip()
        if word == "active":
            out |= {p for p in Phase if not p.is_terminal}
        elif word == "terminal":
            out |= {p for p in Phase if p.is_terminal}
        elif word:
            try:
                out.add(Phase(word))
            except ValueError:
                raise ValueError(f"unknown phase {word!r}") from None
    return frozenset(out)


def matches(
    hub: HubView, workflow: WorkflowState, service: str, text: str, phases: frozenset[Phase] | None
) -> bool:
    """Whether the workflow passes the filters (``text`` is lower case already)."""
    if service and workflow.service_id != service:
        owner = hub.services.get(workflow.service_id)
        if owner is None or owner.service_name != service:
            return False
    if phases is not None and workflow.phase not in phases:
        return False
    return not text or any(
        text in field.lower()
        for field in (workflow.action_type, workflow.workflow_id, workflow.stage)
    )


def _filtered(hub: HubView, params: Mapping[str, str]) -> tuple[list[WorkflowState], Counter[str]]:
    """The workflows the filters select, and per phase the counts ignoring the phase filter."""
    service = params.get("service", "") or params.get("service_id", "")
    text = params.get("q", "").strip().lower()
    phases = _phases(params.get("phase", ""))
    counts: Counter[str] = Counter()
    selected = []
    for workflow in hub.workflows.values():
        if not matches(hub, workflow, service, text, None):
            continue
        counts[workflow.phase.value] += 1
        if phases is None or workflow.phase in phases:
            selected.append(workflow)
    return selected, counts


def _order(workflow: WorkflowState) -> tuple[bool, float, str]:
    return workflow.phase.is_terminal, -workflow.created_at, workflow.workflow_id


def query(hub: HubView, params: Mapping[str, str], *, offset: int, limit: int) -> dict[str, Any]:
    """One page of workflows, active first then newest first, with totals and phase counts.

    Filters: ``service`` (id or registered name), ``phase`` (see ``_phases``), ``q`` (part of
    the name, id or stage, any case).
    """
    if offset < 0 or not 0 <= limit <= MAX_PAGE:
        raise ValueError(f"'offset' must be >= 0 and 'limit' in [0, {MAX_PAGE}]")
    selected, counts = _filtered(hub, params)
    selected.sort(key=_order)
    page = selected[offset : offset + limit]
    return {
        "workflows": [summary(hub, w) for w in page],
        "total": len(selected),
        "offset": offset,
        "limit": limit,
        "counts": dict(counts),
        "active": sum(n for phase, n in counts.items() if not Phase(phase).is_terminal),
        "all": len(hub.workflows),
    }


def selected_ids(hub: HubView, params: Mapping[str, str], command: str) -> list[str]:
    """The filtered workflows whose phase allows ``command`` (what a bulk command acts on)."""
    selected, _ = _filtered(hub, params)
    return [w.workflow_id for w in selected if command in allowed_commands(w.phase)]


def _tree(hub: HubView, root: WorkflowState) -> list[dict[str, Any]]:
    """The descendants, depth first, each with its depth (bounded, cycles cut)."""
    out: list[dict[str, Any]] = []
    seen = {root.workflow_id}

    def visit(children: Iterable[str], depth: int) -> None:
        for child_id in children:
            child = hub.workflows.get(child_id)
            if child is None or child_id in seen or len(out) >= MAX_TREE:
                continue
            seen.add(child_id)
            out.append(
                {
                    "workflow_id": child_id,
                    "name": child.action_type,
                    "phase": child.phase.value,
                    "progress": _progress(child),
                    "depth": depth,
                }
            )
            visit(child.children, depth + 1)

    visit(root.children, 1)
    return out


def workflow_detail(hub: HubView, workflow: WorkflowState, logs: int) -> dict[str, Any]:
    """Everything the detail view shows: the full record, its tree, logs tail and trace id."""
    out = summary(hub, workflow, full=True)
    records = hub.logs_for(workflow.workflow_id)
    out["logs"] = [r.as_dict() for r in records[max(0, len(records) - logs) :]] if logs else []
    out["trace_id"] = next((r.entry.trace_id for r in records if r.entry.trace_id), "")
    out["tree"] = _tree(hub, workflow)
    return out


def overview(hub: HubView) -> dict[str, Any]:
    """Services with their workflow counts, and anomalies grouped by text with their counts."""
    total: Counter[str] = Counter()
    active: Counter[str] = Counter()
    for workflow in hub.workflows.values():
        total[workflow.service_id] += 1
        if not workflow.phase.is_terminal:
            active[workflow.service_id] += 1
    services = []
    for service in hub.services.values():
        record = service.as_dict()
        record["workflows"] = total[service.service_id]
        record["active_workflows"] = active[service.service_id]
        services.append(record)
    groups: dict[str, dict[str, Any]] = {}
    for anomaly in hub.anomalies:
        group = groups.setdefault(
            anomaly.text, {"text": anomaly.text, "count": 0, "last": 0.0, "services": []}
        )
        group["count"] += 1
        group["last"] = max(group["last"], anomaly.at)
        if anomaly.service_id and anomaly.service_id not in group["services"]:
            group["services"].append(anomaly.service_id)
    anomalies = sorted(groups.values(), key=lambda g: -g["last"])
    return {"services": services, "anomalies": anomalies}
