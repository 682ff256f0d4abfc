"""A stateful property test: the PhaseManager against a small model of PROTOCOL.md section 3.

Hypothesis drives random operations on a few workflows; the model is written here from the
spec (its own copy of the table, reasons and checkpoint rules), so a disagreement points at
either the manager or the spec reading, never at shared code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from when_coordinator import (
    InvalidTransitionError,
    Phase,
    PhaseManager,
    PhaseState,
    UnknownWorkflowError,
    WorkflowExistsError,
)

TABLE: dict[str, frozenset[str]] = {
    "pending": frozenset({"pre-flight", "failed"}),
    "pre-flight": frozenset({"planning", "failed"}),
    "planning": frozenset({"execution", "failed"}),
    "execution": frozenset({"pausing", "cancelling", "completing", "failed"}),
    "pausing": frozenset({"paused", "cancelling", "failed"}),
    "paused": frozenset({"resuming", "cancelling", "failed"}),
    "resuming": frozenset({"execution", "cancelling", "failed"}),
    "cancelling": frozenset({"cancelled", "failed"}),
    "completing": frozenset({"completed", "failed"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "failed": frozenset(),
}
TERMINAL = frozenset(phase for phase, targets in TABLE.items() if not targets)
CANCELLABLE = frozenset({"execution", "pausing", "paused", "resuming"})
WORKFLOWS = ["a", "b", "c"]
PATH: dict[str, list[str]] = {
    "pending": [],
    "pre-flight": ["pre-flight"],
    "planning": ["pre-flight", "planning"],
    "execution": ["pre-flight", "planning", "execution"],
    "pausing": ["pre-flight", "planning", "execution", "pausing"],
    "paused": ["pre-flight", "planning", "execution", "pausing", "paused"],
    "resuming": ["pre-flight", "planning", "execution", "pausing", "paused", "resuming"],
    "cancelling": ["pre-flight", "planning", "execution", "cancelling"],
    "cancelled": ["pre-flight", "planning", "execution", "cancelling", "cancelled"],
    "completing": ["pre-flight", "planning", "execution", "completing"],
    "completed": ["pre-flight", "planning", "execution", "completing", "completed"],
    "failed": ["failed"],
}
"""A way from pending to each phase through plain table transitions."""


@dataclass(frozen=True)
class Model:
    """What the spec says one workflow's state is."""

    phase: str = "pending"
    previous: str | None = None
    reason: str = ""
    checkpoint: str = ""
    sequence: int = 0

    def moved(self, target: str, reason: str, checkpoint: str = "") -> Model:
        """The state after one transition; a given checkpoint replaces, none keeps."""
        return Model(target, self.phase, reason, checkpoint or self.checkpoint, self.sequence + 1)


def expect(operation: str, state: Model, arg: str) -> list[Model] | None:
    """The states ``operation`` passes through per section 3, or None when it is refused.

    ``arg`` is the operation's one free argument: a reason, a checkpoint id, or nothing.
    """
    phase = state.phase
    if operation.startswith("to:"):
        target = operation[3:]
        return [state.moved(target, arg)] if target in TABLE[phase] else None
    if operation == "pause":
        return [state.moved("pausing", arg)] if phase == "execution" else None
    if operation == "complete_pause":  # keeps the pause's reason
        return [state.moved("paused", state.reason, arg)] if phase == "pausing" else None
    if operation == "resume":
        return [state.moved("resuming", "resume requested", arg)] if phase == "paused" else None
    if operation == "complete_resume":
        return [state.moved("execution", "resumed")] if phase == "resuming" else None
    if operation == "cancel":
        return [state.moved("cancelling", arg)] if phase in CANCELLABLE else None
    if operation == "complete_cancellation":
        return [state.moved("cancelled", "cancelled")] if phase == "cancelling" else None
    if operation == "fail":  # bypasses the table
        return [state.moved("failed", arg)] if phase not in TERMINAL else None
    assert operation == "complete"
    if phase == "execution":
        completing = state.moved("completing", "completing")
        return [completing, completing.moved("completed", "completed successfully")]
    if phase == "completing":
        return [state.moved("completed", "completed successfully")]
    return None


def _view(state: PhaseState) -> tuple[str, str, str | None, str, str, int]:
    """The parts of a snapshot that a ``phase_changed`` carries, as plain values."""
    previous = None if state.previous_phase is None else state.previous_phase.value
    return (
        state.workflow_id,
        state.phase.value,
        previous,
        state.reason,
        state.checkpoint_id,
        state.sequence,
    )


Call = Callable[[PhaseManager, str, str], PhaseState]
CALLS: dict[str, Call] = {
    "pause": lambda m, w, a: m.pause(w, a),
    "complete_pause": lambda m, w, a: m.complete_pause(w, a),
    "resume": lambda m, w, a: m.resume(w, a),
    "complete_resume": lambda m, w, a: m.complete_resume(w),
    "cancel": lambda m, w, a: m.cancel(w, a),
    "complete_cancellation": lambda m, w, a: m.complete_cancellation(w),
    "fail": lambda m, w, a: m.fail(w, a),
    "complete": lambda m, w, a: m.complete(w),
    **{
        f"to:{phase}": (lambda m, w, a, phase=phase: m.transition_to(w, phase, a))  # type: ignore[misc]
        for phase in TABLE
    },
}
OPERATIONS = sorted(CALLS)

workflow_ids = st.sampled_from(WORKFLOWS)
args = st.sampled_from(["", "cp-1", "operator pause", "\u00e9\u2603"]) | st.text(max_size=4)


class PhaseManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager = PhaseManager()
        self.model: dict[str, Model] = {}
        self.seen: list[PhaseState] = []
        self.expected: list[tuple[str, str]] = []  # (workflow, phase) of every notification
        self.manager.on_phase_changed(self.seen.append)

    def _apply(self, workflow_id: str, operation: str, arg: str) -> None:
        """Run one operation on manager and model alike and compare what happened."""
        call = CALLS[operation]
        if workflow_id not in self.model:
            with pytest.raises(UnknownWorkflowError):
                call(self.manager, workflow_id, arg)
            return
        moves = expect(operation, self.model[workflow_id], arg)
        before = self.manager.get_state(workflow_id)
        seen_before = len(self.seen)
        if moves is None:
            with pytest.raises(InvalidTransitionError) as caught:
                call(self.manager, workflow_id, arg)
            assert caught.value.workflow_id == workflow_id
            assert caught.value.current.value == self.model[workflow_id].phase
            assert self.manager.get_state(workflow_id) is before  # nothing changed
            assert len(self.seen) == seen_before  # nobody was told
            return
        result = call(self.manager, workflow_id, arg)
        self.model[workflow_id] = moves[-1]
        self.expected.extend((workflow_id, m.phase) for m in moves)
        assert result is self.manager.get_state(workflow_id)
        # Each notification is what the hub would be sent: all of it must match the model.
        assert [_view(s) for s in self.seen[seen_before:]] == [
            (workflow_id, m.phase, m.previous, m.reason, m.checkpoint, m.sequence) for m in moves
        ]
        self._probe(workflow_id)

    def _probe(self, workflow_id: str) -> None:
        """Every operation the spec forbids in the phase just reached must be refused.

        Done after each move, so transient phases (pre-flight, planning, completing...) are
        probed as thoroughly as the ones a workflow rests in.
        """
        state = self.model[workflow_id]
        for operation in OPERATIONS:
            if expect(operation, state, "x") is None:
                self._apply(workflow_id, operation, "x")

    # -------------------------------------------------------------- rules

    @initialize(
        starts=st.lists(st.sampled_from(list(TABLE)), min_size=len(WORKFLOWS), max_size=3),
        checkpoint=st.sampled_from(["", "cp-0"]),
    )
    def start(self, starts: list[str], checkpoint: str) -> None:
        """Register every workflow and drive each to a drawn phase (checked at every step).

        Random operations from ``pending`` seldom get far; starting anywhere in the table
        lets short runs, which also shrink fast, exercise the deep phases.
        """
        for workflow_id, phase in zip(WORKFLOWS, starts, strict=True):
            self.manager.register_workflow(workflow_id)
            self.model[workflow_id] = Model()
            if checkpoint:
                self.manager.create_checkpoint(workflow_id, checkpoint)
                self.model[workflow_id] = Model(checkpoint=checkpoint)
            for step in PATH[phase]:
                self._apply(workflow_id, f"to:{step}", f"start {step}")

    @rule(workflow_id=workflow_ids)
    def register(self, workflow_id: str) -> None:
        if workflow_id in self.model:
            with pytest.raises(WorkflowExistsError):
                self.manager.register_workflow(workflow_id)
            return
        assert self.manager.register_workflow(workflow_id).phase is Phase.PENDING
        self.model[workflow_id] = Model()

    @rule(workflow_id=workflow_ids)
    def remove(self, workflow_id: str) -> None:
        self.manager.remove_workflow(workflow_id)
        self.model.pop(workflow_id, None)

    @rule(workflow_id=workflow_ids, operation=st.sampled_from(OPERATIONS), arg=args)
    def operate(self, workflow_id: str, operation: str, arg: str) -> None:
        """Any operation at all; most are refused, which must change nothing."""
        self._apply(workflow_id, operation, arg)

    @rule(
        workflow_id=workflow_ids,
        steps=st.lists(st.tuples(st.integers(0, 7), args), min_size=1, max_size=8),
    )
    def walk(self, workflow_id: str, steps: list[tuple[int, str]]) -> None:
        """A chain of operations the model allows (``fail`` aside), so that runs reach
        pausing, paused and resuming, which uniform random operations rarely do."""
        for choice, arg in steps:
            state = self.model.get(workflow_id)
            if state is None:
                return
            allowed = [
                op
                for op in OPERATIONS
                if op not in ("fail", "to:failed") and expect(op, state, arg) is not None
            ]
            if not allowed:
                return
            self._apply(workflow_id, allowed[choice % len(allowed)], arg)

    @rule(
        workflow_id=workflow_ids,
        reason=args,
        paused_at=args,
        resume_from=args,
        rounds=st.integers(1, 3),
    )
    def pause_cycle(
        self, workflow_id: str, reason: str, paused_at: str, resume_from: str, rounds: int
    ) -> None:
        """pause, complete_pause, resume, complete_resume: the path whose reasons and
        checkpoints section 3 is most precise about, and which random walks seldom finish.
        Outside ``execution`` each step is simply refused, which is checked too."""
        for _ in range(rounds):
            self._apply(workflow_id, "pause", reason)
            self._apply(workflow_id, "complete_pause", paused_at)
            self._apply(workflow_id, "resume", resume_from)
            self._apply(workflow_id, "complete_resume", "")

    @rule(workflow_id=workflow_ids, checkpoint=st.sampled_from(["cp-3", "cp-4"]))
    def create_checkpoint(self, workflow_id: str, checkpoint: str) -> None:
        if workflow_id not in self.model:
            with pytest.raises(UnknownWorkflowError):
                self.manager.create_checkpoint(workflow_id, checkpoint)
            return
        seen_before = len(self.seen)
        state = self.manager.create_checkpoint(workflow_id, checkpoint)
        self.model[workflow_id] = replace(self.model[workflow_id], checkpoint=checkpoint)
        assert (state.checkpoint_id, len(self.seen)) == (checkpoint, seen_before)

    @rule(workflow_id=workflow_ids, percent=st.integers(0, 100) | st.floats(0, 100))
    def set_progress(self, workflow_id: str, percent: float) -> None:
        if workflow_id not in self.model:
            with pytest.raises(UnknownWorkflowError):
                self.manager.set_progress(workflow_id, percent)
            return
        seen_before = len(self.seen)
        assert self.manager.set_progress(workflow_id, percent).progress == percent
        assert len(self.seen) == seen_before

    # -------------------------------------------------------------- invariants

    @invariant()
    def manager_matches_model(self) -> None:
        assert sorted(self.manager.get_all_workflows()) == sorted(self.model)
        for workflow_id, m in self.model.items():
            assert _view(self.manager.get_state(workflow_id)) == (
                workflow_id,
                m.phase,
                m.previous,
                m.reason,
                m.checkpoint,
                m.sequence,
            )
        active = {s.workflow_id for s in self.manager.get_active_workflows()}
        assert active == {w for w, m in self.model.items() if m.phase not in TERMINAL}

    @invariant()
    def notifications_match_model(self) -> None:
        assert [(s.workflow_id, s.phase.value) for s in self.seen] == self.expected
        assert self.manager.listener_errors == 0


PhaseManagerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=20, deadline=None
)
test_phase_manager_matches_the_model = PhaseManagerMachine.TestCase
