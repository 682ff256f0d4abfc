"""The service side: the resilient connection to the hub, and log forwarding."""

from .config import ENVIRONMENT, Config, ConfigError, EnvVar
from .coordinator import CommandEvent, Coordinator, CoordinatorStats, MessageHandler
from .logs import CoordinatorLogHandler, LogForwarder

__all__ = [
    "ENVIRONMENT",
    "CommandEvent",
    "Config",
    "ConfigError",
    "Coordinator",
    "CoordinatorLogHandler",
    "CoordinatorStats",
    "EnvVar",
    "LogForwarder",
    "MessageHandler",
]
