"""The automatic lifecycle of a workflow whose code runs here, by legal transitions.

Beside the phase manager because it is nothing but phase-table moves: the workflow API, the
span processor (a workflow span started by anyone) and the task integrations all start and
settle workflows the same way.
"""

from __future__ import annotations

from .phase_manager import PhaseError, PhaseManager
from .protocol import Phase

__all__ = ["settle", "start_lifecycle"]

_START = (
    (Phase.PRE_FLIGHT, "workflow started"),
    (Phase.PLANNING, "planning"),
    (Phase.EXECUTION, "executing"),
)


def start_lifecycle(phases: PhaseManager, workflow_id: str) -> None:
    """pending -> pre-flight -> planning -> execution, from wherever it stands.

    In one hold of the phase manager's lock, unless a subclass overrides ``transition_to``
    (a test holding a workflow in a phase): that one still sees every step.
    """
    if type(phases).transition_to is PhaseManager.transition_to:
        phases.walk(workflow_id, _START)
        return
    for phase, reason in _START:
        if phases.get_phase(workflow_id).can_transition_to(phase):
            phases.transition_to(workflow_id, phase, reason)


def settle(
    phases: PhaseManager, workflow_id: str, *, error: str | None = None, checkpoint_id: str = ""
) -> None:
    """Bring a workflow whose code has ended to its terminal phase by legal transitions.

    An error fails it from anywhere. Otherwise it completes: an unanswered pause is completed
    and resumed first (the work is done), and a requested cancellation is completed. A hub
    command racing with this is retried; as a last resort the workflow fails, never stays open.
    """
    for _attempt in range(3):
        try:
            _settle_once(phases, workflow_id, error, checkpoint_id)
            return
        except PhaseError as exc:
            last = exc
    state = phases.get_state(workflow_id)
    if not state.phase.is_terminal:
        phases.fail(workflow_id, f"could not settle from {state.phase.value}: {last}")


def _settle_once(
    phases: PhaseManager, workflow_id: str, error: str | None, checkpoint_id: str
) -> None:
    state = phases.get_state(workflow_id)
    if state.phase.is_terminal:
        return
    if error is not None:
        phases.fail(workflow_id, error)
        return
    phase = state.phase
    if phase is Phase.CANCELLING:
        phases.complete_cancellation(workflow_id)
        return
    if phase in (Phase.PENDING, Phase.PRE_FLIGHT, Phase.PLANNING):
        start_lifecycle(phases, workflow_id)
    elif phase is Phase.PAUSING:
        phases.complete_pause(workflow_id, checkpoint_id)
        phase = Phase.PAUSED
    if phase is Phase.PAUSED:
        phases.resume(workflow_id, checkpoint_id)
        phase = Phase.RESUMING
    if phase is Phase.RESUMING:
        phases.complete_resume(workflow_id)
    phases.complete(workflow_id)
