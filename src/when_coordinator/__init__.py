"""when-coordinator: take part in when-v3 workflow coordination, the OpenTelemetry way."""

from .phase_manager import (
    InvalidTransitionError,
    PhaseError,
    PhaseManager,
    PhaseState,
    UnknownWorkflowError,
    WorkflowExistsError,
)
from .protocol import LogEntry, LogLevel, Message, MessageType, Phase, ProtocolError

__version__ = "0.1.0"

__all__ = [
    "InvalidTransitionError",
    "LogEntry",
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
