"""Names of the span attributes, events, baggage keys and metrics the package emits.

They form a contract with tracing backends and with other services (baggage crosses process
boundaries), so they live in one place and never change meaning. ``when.*`` names are ours;
the others are OpenTelemetry semantic conventions, set where they apply. docs/telemetry.md
lists every one of them (tests/docs/test_telemetry_docs.py checks both ways).
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
    "CICD_PIPELINE_NAME",
    "CICD_PIPELINE_RESULT",
    "CICD_PIPELINE_RUN_ID",
    "ERROR_EVENT",
    "ERROR_MESSAGE",
    "ERROR_RECOVERABLE",
    "ERROR_TYPE",
    "EXCEPTION_EVENT",
    "METRIC_CLIENT_CONNECTION_ATTEMPTS",
    "METRIC_CLIENT_CONNECTION_DURATION",
    "METRIC_CLIENT_OUTBOX_CAPACITY",
    "METRIC_CLIENT_OUTBOX_MEMORY_LIMIT",
    "METRIC_CLIENT_OUTBOX_MEMORY_USAGE",
    "METRIC_CLIENT_OUTBOX_SIZE",
    "METRIC_CLIENT_PING_DURATION",
    "METRIC_CLIENT_SENT_MESSAGES",
    "METRIC_WORKFLOW_ACTIVE",
    "METRIC_WORKFLOW_DURATION",
    "METRIC_WORKFLOW_TRANSITIONS",
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
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "STATUS_DESCRIPTION",
    "WORKFLOW_ID",
    "WORKFLOW_NAME",
    "WORKFLOW_PARENT_ID",
    "WORKFLOW_RESULT",
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
"""A reported error the workflow survives, or not (``Workflow.error()`` with a text)."""
ERROR_MESSAGE = "when.error.message"
ERROR_RECOVERABLE = "when.error.recoverable"
"""On ``when.error``, and on the ``exception`` event of ``Workflow.error()`` with an exception."""
EXCEPTION_EVENT = "exception"
"""The SDK's own event (``Span.record_exception``): an exception that failed the workflow, or
one passed to ``Workflow.error()``."""

# Semantic conventions set on a workflow span that failed (and on metrics, see below).
ERROR_TYPE = "error.type"
"""The exception's fully qualified class name; ``_OTHER`` when the workflow failed without one."""
STATUS_DESCRIPTION = "otel.status_description"
"""The span status description again, as an attribute, for backends that read only those."""

# Opt-in (``WHEN_CICD_ATTRIBUTES=true`` or ``workflow(..., cicd_attributes=True)``): the
# semantic conventions' CI/CD pipeline run attributes, for backends that chart pipelines.
CICD_PIPELINE_NAME = "cicd.pipeline.name"
CICD_PIPELINE_RUN_ID = "cicd.pipeline.run.id"
CICD_PIPELINE_RESULT = "cicd.pipeline.result"
"""``success``, ``failure`` or ``cancellation``, from the final phase."""

# Metrics (``otel/metrics.py``), through the meter provider. Units are UCUM; no workflow id is
# ever a metric attribute (unbounded cardinality).
METRIC_WORKFLOW_DURATION = "when.workflow.duration"
METRIC_WORKFLOW_ACTIVE = "when.workflow.active"
METRIC_WORKFLOW_TRANSITIONS = "when.workflow.transitions"
METRIC_CLIENT_OUTBOX_SIZE = "when.client.outbox.size"
METRIC_CLIENT_OUTBOX_CAPACITY = "when.client.outbox.capacity"
METRIC_CLIENT_OUTBOX_MEMORY_USAGE = "when.client.outbox.memory.usage"
METRIC_CLIENT_OUTBOX_MEMORY_LIMIT = "when.client.outbox.memory.limit"
METRIC_CLIENT_SENT_MESSAGES = "when.client.sent.messages"
METRIC_CLIENT_CONNECTION_ATTEMPTS = "when.client.connection.attempts"
METRIC_CLIENT_CONNECTION_DURATION = "when.client.connection.duration"
METRIC_CLIENT_PING_DURATION = "when.client.ping.duration"
WORKFLOW_RESULT = "when.workflow.result"
"""On ``when.workflow.duration``: the phase the workflow ended in."""
SERVER_ADDRESS = "server.address"
"""On the ``when.client.*`` metrics: the hub's host (from ``when_url``)."""
SERVER_PORT = "server.port"

# W3C baggage entries, so a workflow started in another process links to its parent.
BAGGAGE_WORKFLOW_ID = "when.workflow.id"
BAGGAGE_ROOT_ID = "when.workflow.root_id"
