"""The OpenTelemetry layer: workflows as spans, and spans and logs as coordination traffic.

What only some processes use is imported on first use of its name: the instrumentor pulls in
``opentelemetry.instrumentation`` (and through it ``importlib.metadata`` and ``packaging``),
which only a process run under ``opentelemetry-instrument`` needs; the log exporter the SDK's
logs pipeline; the propagation helpers the propagators; the span processor the SDK's span
processing, which only a process that adds it to its tracer provider needs. Every other import
would pay for them.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .metrics import disable_metrics, enable_metrics
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
    from .log_exporter import CoordinationLogExporter
    from .propagation import CarriedCall, attached, carrier
    from .span_processor import CoordinationSpanProcessor

_LAZY = {
    "CoordinationSpanProcessor": ".span_processor",
    "WhenInstrumentor": ".instrumentor",
    "CoordinationLogExporter": ".log_exporter",
    "CarriedCall": ".propagation",
    "attached": ".propagation",
    "carrier": ".propagation",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is an ordinary one
    return value
