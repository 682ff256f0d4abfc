"""Errors the hub's commands raise; each message says what to do about it."""

from __future__ import annotations

__all__ = [
    "CommandError",
    "CommandRefused",
    "HubClosed",
    "HubError",
    "ServiceUnavailable",
    "StatusTimeout",
    "WorkflowNotFound",
    "first_line",
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


class CommandRefused(CommandError):
    """The workflow's known phase does not allow the command (HTTP 409): resuming a running
    workflow, pausing or cancelling a finished one. Nothing is sent to the service.

    ``phase`` is the workflow's phase as the hub knows it; ``allowed`` the commands (of
    pause, resume, cancel) that phase accepts, possibly none.
    """

    def __init__(
        self, command: str, workflow_id: str, phase: str, allowed: tuple[str, ...]
    ) -> None:
        if allowed:
            what = "it allows " + " and ".join(allowed)
        else:
            what = "it has finished: no command applies"
        super().__init__(f"cannot {command} workflow {workflow_id!r}: its phase is {phase}; {what}")
        self.command = command
        self.workflow_id = workflow_id
        self.phase = phase
        self.allowed = allowed


def first_line(exc: BaseException) -> str:
    """An exception in one line, for a status field or a log (its type when it says nothing)."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]
