"""The OpenTelemetry layer: workflows as spans, and spans and logs as coordination traffic."""

from .log_exporter import CoordinationLogExporter
from .span_processor import CoordinationSpanProcessor
from .tracking import get_coordinator, set_coordinator
from .workflow import (
    AsyncWorkflow,
    Workflow,
    WorkflowCancelled,
    WorkflowDefinition,
    current_workflow,
    workflow,
)

__all__ = [
    "AsyncWorkflow",
    "CoordinationLogExporter",
    "CoordinationSpanProcessor",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowDefinition",
    "current_workflow",
    "get_coordinator",
    "set_coordinator",
    "workflow",
]
