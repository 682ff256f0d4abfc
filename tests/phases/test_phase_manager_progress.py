"""``note_progress``: the hot-path progress record, folded into snapshots when read."""

from __future__ import annotations

import math

import pytest

from when_coordinator import Phase, PhaseManager, PhaseState, UnknownWorkflowError


def _running(manager: PhaseManager, workflow_id: str = "wf") -> None:
    manager.register_workflow(workflow_id)
    for phase in (Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
        manager.transition_to(workflow_id, phase)


def test_noted_progress_shows_in_reads_and_in_the_next_transition() -> None:
    manager = PhaseManager()
    _running(manager)
    seen: list[PhaseState] = []
    manager.on_phase_changed(seen.append)
    manager.set_progress("wf", 10, current_action="extract")
    assert manager.note_progress("wf", 42.5) == "extract"
    assert manager.get_state("wf").progress == 42.5
    manager.note_progress("wf", 60)
    assert manager.get_all_workflows()["wf"].progress == 60
    manager.note_progress("wf", 70)
    assert [s.progress for s in manager.get_active_workflows()] == [70]
    manager.note_progress("wf", 80)
    manager.pause("wf", "operator")
    assert seen[-1].progress == 80
    assert seen[-1].current_action == "extract"


@pytest.mark.parametrize("percent", [-0.1, 100.5, math.nan, math.inf])
def test_note_progress_refuses_out_of_range(percent: float) -> None:
    manager = PhaseManager()
    _running(manager)
    with pytest.raises(ValueError, match="between 0 and 100"):
        manager.note_progress("wf", percent)
    assert manager.get_state("wf").progress == 0


@pytest.mark.parametrize("percent", ["50", True, None])
def test_note_progress_refuses_non_numbers(percent: object) -> None:
    manager = PhaseManager()
    _running(manager)
    with pytest.raises(TypeError, match="percent must be a number"):
        manager.note_progress("wf", percent)  # type: ignore[arg-type]


def test_note_progress_for_unknown_or_removed_workflows() -> None:
    manager = PhaseManager()
    with pytest.raises(UnknownWorkflowError):
        manager.note_progress("nope", 1)
    _running(manager)
    manager.note_progress("wf", 30)
    manager.remove_workflow("wf")
    manager.register_workflow("wf")
    assert manager.get_state("wf").progress == 0
