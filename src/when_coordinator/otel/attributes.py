"""Names of the span attributes, events and baggage keys that carry coordination.

They form a contract with tracing backends and with other services (baggage crosses process
boundaries), so they live in one place and never change meaning.
"""

from __future__ import annotations

__all__ = [
    "ACTION_ID",
    "ACTION_TYPE",
    "BAGGAGE_ROOT_ID",
    "BAGGAGE_WORKFLOW_ID",
    "CHECKPOINT_EVENT",
    "CHECKPOINT_ID",
    "CHECKPOINT_REASON",
    "ERROR_EVENT",
    "PHASE",
    "PHASE_CHANGED_EVENT",
    "PHASE_CHECKPOINT_ID",
    "PHASE_FROM",
    "PHASE_REASON",
    "PHASE_TO",
    "PROGRESS_EVENT",
    "PROGRESS_MESSAGE",
    "PROGRESS_PERCENT",
    "PROGRESS_STAGE",
    "WORKFLOW_ID",
    "WORKFLOW_NAME",
    "WORKFLOW_PARENT_ID",
    "WORKFLOW_ROOT_ID",
]

# Span attributes of a workflow span.
WORKFLOW_ID = "when.workflow.id"
WORKFLOW_PARENT_ID = "when.workflow.parent_id"
WORKFLOW_ROOT_ID = "when.workflow.root_id"
WORKFLOW_NAME = "when.workflow.name"
ACTION_ID = "when.action.id"
ACTION_TYPE = "when.action.type"
PHASE = "when.workflow.phase"
"""The phase the workflow ended in, set when its span ends."""
PROGRESS_PERCENT = "when.progress.percent"
"""The last progress reported, set when the span ends: progress is coalesced, not logged."""
PROGRESS_STAGE = "when.progress.stage"

# Span events.
PHASE_CHANGED_EVENT = "when.phase_changed"
PHASE_FROM = "when.phase.from"
PHASE_TO = "when.phase.to"
PHASE_REASON = "when.phase.reason"
PHASE_CHECKPOINT_ID = "when.checkpoint.id"
PROGRESS_EVENT = "when.progress"
"""Recorded when the stage changes (with the percent at that moment), not on every call."""
PROGRESS_MESSAGE = "when.progress.message"
CHECKPOINT_EVENT = "when.checkpoint"
CHECKPOINT_ID = "when.checkpoint.id"
CHECKPOINT_REASON = "when.checkpoint.reason"
ERROR_EVENT = "when.error"

# W3C baggage entries, so a workflow started in another process links to its parent.
BAGGAGE_WORKFLOW_ID = "when.workflow.id"
BAGGAGE_ROOT_ID = "when.workflow.root_id"
