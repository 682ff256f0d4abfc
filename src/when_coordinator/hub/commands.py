"""Which operator commands a workflow's phase allows (the hub refuses the others with 409).

The rules are the client's own (PROTOCOL.md section 3, the phase manager): pause only from
a pausable phase, resume only from a resumable one. Cancel is refused once the workflow is
terminal, or already cancelling or completing, where the phase table has no way to
``cancelling``; before execution a workflow keeps the request and honours it on reaching
execution, so a cancel is allowed there.
"""

from __future__ import annotations

from ..protocol import Phase
from ..protocol.phases import PAUSABLE_PHASES, RESUMABLE_PHASES, TERMINAL_PHASES
from .errors import CommandRefused

__all__ = ["COMMANDS", "allowed_commands", "check_command"]

COMMANDS = ("pause", "resume", "cancel")

_NO_CANCEL = TERMINAL_PHASES | {Phase.CANCELLING, Phase.COMPLETING}


def allowed_commands(phase: Phase) -> tuple[str, ...]:
    """The commands, of ``COMMANDS``, that a workflow in ``phase`` accepts."""
    allowed = []
    if phase in PAUSABLE_PHASES:
        allowed.append("pause")
    if phase in RESUMABLE_PHASES:
        allowed.append("resume")
    if phase not in _NO_CANCEL:
        allowed.append("cancel")
    return tuple(allowed)


def check_command(command: str, workflow_id: str, phase: Phase) -> None:
    """Raise ``CommandRefused`` if ``phase`` does not allow ``command``."""
    allowed = allowed_commands(phase)
    if command not in allowed:
        raise CommandRefused(command, workflow_id, phase.value, allowed)
