"""Workflow phases and the transitions between them (PROTOCOL.md section 3).

The phase strings are a hard contract: when-v3 stores them, so they are never derived or
reformatted, only compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

__all__ = [
    "ACTIVE_PHASES",
    "PAUSABLE_PHASES",
    "RESUMABLE_PHASES",
    "TERMINAL_PHASES",
    "VALID_TRANSITIONS",
    "Phase",
    "can_transition",
]


class Phase(str, Enum):
    """A workflow phase; compares equal to its protocol string (``Phase.PAUSED == "paused"``)."""

    PENDING = "pending"
    PRE_FLIGHT = "pre-flight"
    PLANNING = "planning"
    EXECUTION = "execution"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"

    def __str__(self) -> str:
        # ``str(Phase.PAUSED)`` must give the wire string on every Python version.
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_PHASES

    @property
    def is_pausable(self) -> bool:
        return self in PAUSABLE_PHASES

    @property
    def is_resumable(self) -> bool:
        return self in RESUMABLE_PHASES

    def can_transition_to(self, target: Phase) -> bool:
        return target in VALID_TRANSITIONS[self]


VALID_TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.PRE_FLIGHT, Phase.FAILED}),
    Phase.PRE_FLIGHT: frozenset({Phase.PLANNING, Phase.FAILED}),
    Phase.PLANNING: frozenset({Phase.EXECUTION, Phase.FAILED}),
    Phase.EXECUTION: frozenset({Phase.PAUSING, Phase.CANCELLING, Phase.COMPLETING, Phase.FAILED}),
    Phase.PAUSING: frozenset({Phase.PAUSED, Phase.CANCELLING, Phase.FAILED}),
    Phase.PAUSED: frozenset({Phase.RESUMING, Phase.CANCELLING, Phase.FAILED}),
    Phase.RESUMING: frozenset({Phase.EXECUTION, Phase.CANCELLING, Phase.FAILED}),
    Phase.CANCELLING: frozenset({Phase.CANCELLED, Phase.FAILED}),
    Phase.COMPLETING: frozenset({Phase.COMPLETED, Phase.FAILED}),
    Phase.COMPLETED: frozenset(),
    Phase.CANCELLED: frozenset(),
    Phase.FAILED: frozenset(),
}
"""Allowed transitions: phase to the phases it may move to. Terminal phases map to nothing."""

TERMINAL_PHASES = frozenset({Phase.COMPLETED, Phase.CANCELLED, Phase.FAILED})
ACTIVE_PHASES = frozenset(
    {
        Phase.PRE_FLIGHT,
        Phase.PLANNING,
        Phase.EXECUTION,
        Phase.PAUSING,
        Phase.RESUMING,
        Phase.CANCELLING,
        Phase.COMPLETING,
    }
)
PAUSABLE_PHASES = frozenset({Phase.EXECUTION})
RESUMABLE_PHASES = frozenset({Phase.PAUSED})


def can_transition(source: Phase | str, target: Phase | str) -> bool:
    """Whether the table allows ``source -> target``; unknown phase strings are never allowed."""
    if source.__class__ is Phase and target.__class__ is Phase:  # the hub's case, per message
        return target in VALID_TRANSITIONS[source]
    try:
        return Phase(target) in VALID_TRANSITIONS[Phase(source)]
    except ValueError:
        return False
