"""when-coordinator: take part in when-v3 workflow coordination, the OpenTelemetry way."""

from ._version import __version__
from .client import (
    CommandEvent,
    Config,
    ConfigError,
    Coordinator,
    CoordinatorLogHandler,
    CoordinatorStats,
    LogForwarder,
)
from .otel import (
    AsyncWorkflow,
    Workflow,
    WorkflowCancelled,
    current_workflow,
    get_coordinator,
    set_coordinator,
    workflow,
)
from .phase_manager import (
    InvalidTransitionError,
    PhaseError,
    PhaseManager,
    PhaseState,
    UnknownWorkflowError,
    WorkflowExistsError,
)
from .protocol import LogEntry, LogLevel, Message, MessageType, Phase, ProtocolError

__all__ = [
    "AsyncWorkflow",
    "CommandEvent",
    "Config",
    "ConfigError",
    "Coordinator",
    "CoordinatorLogHandler",
    "CoordinatorStats",
    "InvalidTransitionError",
    "LogEntry",
    "LogForwarder",
    "LogLevel",
    "Message",
    "MessageType",
    "Phase",
    "PhaseError",
    "PhaseManager",
    "PhaseState",
    "ProtocolError",
    "UnknownWorkflowError",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowExistsError",
    "__version__",
    "current_workflow",
    "get_coordinator",
    "set_coordinator",
    "workflow",
]
