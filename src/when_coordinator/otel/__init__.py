"""The OpenTelemetry layer: workflows as spans, and spans and logs as coordination traffic."""

from .instrumentor import WhenInstrumentor
from .log_exporter import CoordinationLogExporter
from .metrics import disable_metrics, enable_metrics
from .propagation import CarriedCall, attached, carrier
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
    "CarriedCall",
    "CoordinationLogExporter",
    "CoordinationSpanProcessor",
    "WhenInstrumentor",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowDefinition",
    "attached",
    "carrier",
    "current_workflow",
    "disable_metrics",
    "enable_metrics",
    "get_coordinator",
    "set_coordinator",
    "workflow",
]
