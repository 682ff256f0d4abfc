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
    "WorkflowExistsError",
    "__version__",
]
