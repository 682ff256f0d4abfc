"""The OpenTelemetry layer: workflows as spans, and spans and logs as coordination traffic.

``WhenInstrumentor`` is imported on first use: it pulls in ``opentelemetry.instrumentation``
(and through it ``importlib.metadata`` and ``packaging``), which only a process run under
``opentelemetry-instrument`` needs, and which every other import would pay for.
"""

from typing import TYPE_CHECKING, Any

from .log_exporter import CoordinationLogExporter
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

if TYPE_CHECKING:
    from .instrumentor import WhenInstrumentor

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
    "get_coordinator",
    "set_coordinator",
    "workflow",
]


def __getattr__(name: str) -> Any:
    if name == "WhenInstrumentor":
        from .instrumentor import WhenInstrumentor  # noqa: PLC0415 - imported when used

        return WhenInstrumentor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
