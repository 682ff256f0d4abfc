"""Errors the hub's commands raise; each message says what to do about it."""

from __future__ import annotations

__all__ = [
    "CommandError",
    "HubClosed",
    "HubError",
    "ServiceUnavailable",
    "StatusTimeout",
    "WorkflowNotFound",
]


class HubError(Exception):
    """Base of the reference hub's errors."""


class HubClosed(HubError):
    """The hub is not running (not started yet, or closed while waiting)."""


class CommandError(HubError):
    """A pause, resume, cancel or status command could not be carried out."""


class WorkflowNotFound(CommandError, LookupError):
    """No service has reported this workflow (or service) to the hub."""


class ServiceUnavailable(CommandError):
    """The service that owns the workflow is not connected (or disconnected while waiting)."""


class StatusTimeout(CommandError, TimeoutError):
    """The service did not answer a ``status`` in time (the reference client ignores unknown
    workflows, so this is also what an id the service does not know looks like)."""
