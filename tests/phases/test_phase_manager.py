"""PhaseManager operations, reasons and checkpoint rules as PROTOCOL.md section 3 states them.

The hub sees the reasons and the checkpoint ids the manager records, so they are pinned as
literal strings. Listeners are real callables recording snapshots; nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from when_coordinator import (
    InvalidTransitionError,
    Phase,
    PhaseManager,
    PhaseState,
    UnknownWorkflowError,
    WorkflowExistsError,
)

P = Phase
PATH: dict[Phase, list[Phase]] = {
    P.PENDING: [],
    P.PRE_FLIGHT: [P.PRE_FLIGHT],
    P.PLANNING: [P.PRE_FLIGHT, P.PLANNING],
    P.EXECUTION: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION],
    P.PAUSING: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.PAUSING],
    P.PAUSED: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.PAUSING, P.PAUSED],
    P.RESUMING: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.PAUSING, P.PAUSED, P.RESUMING],
    P.CANCELLING: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.CANCELLING],
    P.CANCELLED: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.CANCELLING, P.CANCELLED],
    P.COMPLETING: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.COMPLETING],
    P.COMPLETED: [P.PRE_FLIGHT, P.PLANNING, P.EXECUTION, P.COMPLETING, P.COMPLETED],
    P.FAILED: [P.FAILED],
}
"""A way to reach each phase from pending with plain table transitions."""

TERMINAL = {P.COMPLETED, P.CANCELLED, P.FAILED}


class Recorder:
    """A listener that keeps every snapshot it is given."""

    def __init__(self) -> None:
        self.states: list[PhaseState] = []

    def __call__(self, state: PhaseState) -> None:
        self.states.append(state)

    @property
    def moves(self) -> list[tuple[Phase | None, Phase, str]]:
        return [(s.previous_phase, s.phase, s.reason) for s in self.states]


def _manager_at(phase: Phase, workflow_id: str = "wf") -> tuple[PhaseManager, Recorder]:
    """A manager with one workflow driven to ``phase``, and a recorder attached afterwards."""
    manager = PhaseManager()
    manager.register_workflow(workflow_id)
    for step in PATH[phase]:
        manager.transition_to(workflow_id, step, f"to {step}")
    recorder = Recorder()
    manager.on_phase_changed(recorder)
    return manager, recorder


def _assert_refused(
    manager: PhaseManager,
    recorder: Recorder,
    operation: Callable[[], object],
    requested: Phase,
    workflow_id: str = "wf",
) -> None:
    """The operation raises a clear error and leaves state and listeners untouched."""
    before = manager.get_state(workflow_id)
    with pytest.raises(InvalidTransitionError) as caught:
        operation()
    error = caught.value
    assert (error.workflow_id, error.current, error.requested) == (
        workflow_id,
        before.phase,
        requested,
    )
    message = str(error)
    assert repr(workflow_id) in message
    assert repr(before.phase.value) in message
    assert repr(requested.value) in message
    assert manager.get_state(workflow_id) is before
    assert recorder.states == []


# ------------------------------------------------------------------ registration


def test_register_starts_pending_without_a_notification() -> None:
    manager = PhaseManager()
    recorder = Recorder()
    manager.on_phase_changed(recorder)
    state = manager.register_workflow("wf")
    assert state.phase is P.PENDING
    assert (state.previous_phase, state.reason, state.checkpoint_id, state.sequence) == (
        None,
        "",
        "",
        0,
    )
    assert state.root_workflow_id == "wf"
    assert state.started_at == state.updated_at > 0
    assert recorder.states == []
    assert manager.get_state("wf") is state
    assert manager.get_phase("wf") is P.PENDING
    assert "wf" in manager
    assert len(manager) == 1


def test_root_defaults_follow_the_parent_chain() -> None:
    manager = PhaseManager()
    manager.register_workflow("root")
    assert manager.register_workflow("child", "root").root_workflow_id == "root"
    assert manager.register_workflow("grandchild", "child").root_workflow_id == "root"
    # An unknown parent (say, in another service) is its own root as far as we know.
    assert manager.register_workflow("remote-child", "elsewhere").root_workflow_id == "elsewhere"
    explicit = manager.register_workflow("x", "child", "given-root")
    assert (explicit.parent_workflow_id, explicit.root_workflow_id) == ("child", "given-root")


def test_register_twice_is_refused() -> None:
    manager, _ = _manager_at(P.EXECUTION)
    with pytest.raises(WorkflowExistsError) as caught:
        manager.register_workflow("wf")
    assert caught.value.workflow_id == "wf"
    assert caught.value.phase is P.EXECUTION
    assert "'wf'" in str(caught.value)
    assert "'execution'" in str(caught.value)
    assert manager.get_phase("wf") is P.EXECUTION


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        (("",), ValueError, "must not be empty"),
        ((None,), TypeError, "workflow_id must be a string"),
        ((3,), TypeError, "workflow_id must be a string"),
        (("wf", 1), TypeError, "parent_workflow_id"),
        (("wf", "", None), TypeError, "root_workflow_id"),
    ],
)
def test_register_bad_arguments(args: tuple[Any, ...], error: type[Exception], text: str) -> None:
    manager = PhaseManager()
    with pytest.raises(error, match=text):
        manager.register_workflow(*args)
    assert len(manager) == 0


# ------------------------------------------------------------------ transition_to, every pair

TABLE: dict[Phase, set[Phase]] = {
    P.PENDING: {P.PRE_FLIGHT, P.FAILED},
    P.PRE_FLIGHT: {P.PLANNING, P.FAILED},
    P.PLANNING: {P.EXECUTION, P.FAILED},
    P.EXECUTION: {P.PAUSING, P.CANCELLING, P.COMPLETING, P.FAILED},
    P.PAUSING: {P.PAUSED, P.CANCELLING, P.FAILED},
    P.PAUSED: {P.RESUMING, P.CANCELLING, P.FAILED},
    P.RESUMING: {P.EXECUTION, P.CANCELLING, P.FAILED},
    P.CANCELLING: {P.CANCELLED, P.FAILED},
    P.COMPLETING: {P.COMPLETED, P.FAILED},
    P.COMPLETED: set(),
    P.CANCELLED: set(),
    P.FAILED: set(),
}


@pytest.mark.parametrize(("source", "target"), [(a, b) for a in Phase for b in Phase])
def test_transition_to_follows_the_table(source: Phase, target: Phase) -> None:
    manager, recorder = _manager_at(source)
    before = manager.get_state("wf")
    if target in TABLE[source]:
        state = manager.transition_to("wf", target.value, "why")
        assert (state.previous_phase, state.phase, state.reason) == (source, target, "why")
        assert state.sequence == before.sequence + 1
        assert recorder.states == [state]
        assert manager.get_state("wf") is state
    else:
        _assert_refused(manager, recorder, lambda: manager.transition_to("wf", target), target)


def test_transition_bad_arguments() -> None:
    manager, recorder = _manager_at(P.PENDING)
    with pytest.raises(ValueError, match="'running' is not a valid Phase"):
        manager.transition_to("wf", "running")
    with pytest.raises(TypeError, match="reason must be a string"):
        manager.transition_to("wf", P.PRE_FLIGHT, 5)  # type: ignore[arg-type]
    with pytest.raises(UnknownWorkflowError) as caught:
        manager.transition_to("nope", P.PRE_FLIGHT)
    assert str(caught.value) == "unknown workflow 'nope'"
    assert isinstance(caught.value, KeyError)
    assert manager.get_phase("wf") is P.PENDING
    assert recorder.states == []


@pytest.mark.parametrize(
    "operation",
    [
        lambda m: m.get_state("ghost"),
        lambda m: m.get_phase("ghost"),
        lambda m: m.pause("ghost"),
        lambda m: m.complete_pause("ghost"),
        lambda m: m.resume("ghost"),
        lambda m: m.complete_resume("ghost"),
        lambda m: m.cancel("ghost"),
        lambda m: m.complete_cancellation("ghost"),
        lambda m: m.fail("ghost"),
        lambda m: m.complete("ghost"),
        lambda m: m.set_progress("ghost", 1),
        lambda m: m.create_checkpoint("ghost", "cp"),
    ],
)
def test_every_operation_on_an_unknown_workflow_raises(
    operation: Callable[[PhaseManager], object],
) -> None:
    manager = PhaseManager()
    with pytest.raises(UnknownWorkflowError, match="'ghost'"):
        operation(manager)


# ------------------------------------------------------------------ pause / resume


def test_pause_cycle_reasons_and_checkpoints() -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    manager.pause("wf", "operator pause")
    manager.complete_pause("wf", "cp-1")
    manager.resume("wf", "")
    manager.complete_resume("wf")
    assert recorder.moves == [
        (P.EXECUTION, P.PAUSING, "operator pause"),
        (P.PAUSING, P.PAUSED, "operator pause"),  # the pause's reason is kept
        (P.PAUSED, P.RESUMING, "resume requested"),
        (P.RESUMING, P.EXECUTION, "resumed"),
    ]
    assert [s.checkpoint_id for s in recorder.states] == ["", "cp-1", "cp-1", "cp-1"]
    assert [s.sequence for s in recorder.states] == [4, 5, 6, 7]


def test_resume_from_a_checkpoint_stores_it() -> None:
    manager, _ = _manager_at(P.EXECUTION)
    manager.pause("wf")
    manager.complete_pause("wf")
    assert manager.get_state("wf").checkpoint_id == ""
    assert manager.get_state("wf").reason == ""
    state = manager.resume("wf", from_checkpoint="cp-7")
    assert (state.reason, state.checkpoint_id) == ("resume requested", "cp-7")
    assert manager.complete_resume("wf").checkpoint_id == "cp-7"


def test_complete_pause_without_a_checkpoint_keeps_the_earlier_one() -> None:
    manager, _ = _manager_at(P.EXECUTION)
    manager.create_checkpoint("wf", "cp-early")
    manager.pause("wf", "r")
    assert manager.complete_pause("wf").checkpoint_id == "cp-early"


@pytest.mark.parametrize("source", [p for p in Phase if p is not P.EXECUTION])
def test_pause_only_from_execution(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.pause("wf", "r"), P.PAUSING)


@pytest.mark.parametrize("source", [p for p in Phase if p is not P.PAUSING])
def test_complete_pause_only_from_pausing(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.complete_pause("wf", "cp"), P.PAUSED)


@pytest.mark.parametrize("source", [p for p in Phase if p is not P.PAUSED])
def test_resume_only_from_paused(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.resume("wf", "cp"), P.RESUMING)


@pytest.mark.parametrize("source", [p for p in Phase if p is not P.RESUMING])
def test_complete_resume_only_from_resuming(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.complete_resume("wf"), P.EXECUTION)


# ------------------------------------------------------------------ cancel

CANCELLABLE = [P.EXECUTION, P.PAUSING, P.PAUSED, P.RESUMING]


@pytest.mark.parametrize("source", CANCELLABLE)
def test_cancel_and_complete_cancellation(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    manager.cancel("wf", "operator cancel")
    manager.complete_cancellation("wf")
    assert recorder.moves == [
        (source, P.CANCELLING, "operator cancel"),
        (P.CANCELLING, P.CANCELLED, "cancelled"),
    ]
    assert manager.get_state("wf").is_terminal


@pytest.mark.parametrize("source", [p for p in Phase if p not in CANCELLABLE])
def test_cancel_refused_from_terminal_and_forbidden_phases(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.cancel("wf", "r"), P.CANCELLING)


@pytest.mark.parametrize("source", [p for p in Phase if p is not P.CANCELLING])
def test_complete_cancellation_only_from_cancelling(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.complete_cancellation("wf"), P.CANCELLED)


# ------------------------------------------------------------------ fail and complete


@pytest.mark.parametrize("source", [p for p in Phase if p not in TERMINAL])
def test_fail_from_any_non_terminal_phase(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    state = manager.fail("wf", "boom")
    assert recorder.moves == [(source, P.FAILED, "boom")]
    assert state.is_terminal


@pytest.mark.parametrize("source", sorted(TERMINAL))
def test_fail_refused_from_terminal(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.fail("wf", "again"), P.FAILED)


def test_complete_is_two_transitions() -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    state = manager.complete("wf")
    assert recorder.moves == [
        (P.EXECUTION, P.COMPLETING, "completing"),
        (P.COMPLETING, P.COMPLETED, "completed successfully"),
    ]
    assert state is recorder.states[-1]
    assert state is manager.get_state("wf")
    assert [s.sequence for s in recorder.states] == [4, 5]


def test_complete_from_completing_takes_only_the_second_step() -> None:
    manager, recorder = _manager_at(P.COMPLETING)
    manager.complete("wf")
    assert recorder.moves == [(P.COMPLETING, P.COMPLETED, "completed successfully")]


START = ((P.PRE_FLIGHT, "workflow started"), (P.PLANNING, "planning"), (P.EXECUTION, "executing"))


@pytest.mark.parametrize("source", list(Phase))
def test_walk_takes_the_steps_the_table_allows_one_notification_each(source: Phase) -> None:
    """What the lifecycle's start does in one hold of the lock: from each phase, exactly the
    moves that checking each step and transitioning would have made, and no error."""
    manager, recorder = _manager_at(source)
    expected, phase = [], source
    for step, reason in START:
        if phase.can_transition_to(step):
            expected.append((phase, step, reason))
            phase = step
    state = manager.walk("wf", START)
    assert recorder.moves == expected
    assert state is manager.get_state("wf")
    assert state.phase is phase


def test_walk_follows_a_listener_that_moves_the_workflow() -> None:
    """A listener that moves the workflow meanwhile (under the same lock): the next step is
    judged from where the workflow then stands."""
    manager, recorder = _manager_at(P.PENDING)

    def fail_at_planning(state: PhaseState) -> None:
        if state.phase is P.PLANNING:
            manager.fail("wf", "stopped")

    manager.on_phase_changed(fail_at_planning)
    assert manager.walk("wf", START).phase is P.FAILED
    assert recorder.moves == [
        (P.PENDING, P.PRE_FLIGHT, "workflow started"),
        (P.PRE_FLIGHT, P.PLANNING, "planning"),
        (P.PLANNING, P.FAILED, "stopped"),
    ]


@pytest.mark.parametrize("source", [p for p in Phase if p not in (P.EXECUTION, P.COMPLETING)])
def test_complete_refused_elsewhere(source: Phase) -> None:
    manager, recorder = _manager_at(source)
    _assert_refused(manager, recorder, lambda: manager.complete("wf"), P.COMPLETING)


# ------------------------------------------------------------------ checkpoints and progress


def test_checkpoint_is_carried_on_every_later_snapshot() -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    checkpoints = Recorder()
    manager.on_checkpoint(checkpoints)
    state = manager.create_checkpoint("wf", "cp-1")
    assert (state.phase, state.checkpoint_id, state.sequence) == (P.EXECUTION, "cp-1", 3)
    assert recorder.states == []  # no phase_changed for a checkpoint
    assert checkpoints.states == [state]
    manager.pause("wf", "r")
    manager.complete_pause("wf")
    manager.resume("wf")
    manager.complete_resume("wf")
    manager.cancel("wf", "stop")
    manager.complete_cancellation("wf")
    assert [s.checkpoint_id for s in recorder.states] == ["cp-1"] * 6
    assert manager.get_state("wf").checkpoint_id == "cp-1"


def test_fail_and_complete_carry_the_checkpoint() -> None:
    manager, recorder = _manager_at(P.EXECUTION, "a")
    manager.register_workflow("b")
    manager.create_checkpoint("a", "cp-a")
    manager.complete("a")
    manager.create_checkpoint("b", "cp-b")
    manager.fail("b", "x")
    assert [(s.workflow_id, s.checkpoint_id) for s in recorder.states] == [
        ("a", "cp-a"),
        ("a", "cp-a"),
        ("b", "cp-b"),
    ]


def test_set_progress_changes_state_without_a_notification() -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    before = manager.get_state("wf")
    state = manager.set_progress("wf", 42.5, "extract")
    assert (state.progress, state.current_action, state.phase) == (42.5, "extract", P.EXECUTION)
    assert state.sequence == before.sequence
    assert manager.set_progress("wf", 50).current_action == "extract"  # None keeps it
    assert manager.set_progress("wf", 0, "").current_action == ""
    assert manager.set_progress("wf", 100).progress == 100
    assert recorder.states == []


@pytest.mark.parametrize(
    ("percent", "action", "error"),
    [
        ("50", None, TypeError),
        (True, None, TypeError),
        (None, None, TypeError),
        (-0.1, None, ValueError),
        (100.5, None, ValueError),
        (float("nan"), None, ValueError),
        (float("inf"), None, ValueError),
        (10, 5, TypeError),
    ],
)
def test_set_progress_bad_arguments(percent: Any, action: Any, error: type[Exception]) -> None:
    manager, _ = _manager_at(P.EXECUTION)
    before = manager.get_state("wf")
    with pytest.raises(error):
        manager.set_progress("wf", percent, action)
    assert manager.get_state("wf") is before


@pytest.mark.parametrize(
    ("checkpoint", "error"), [("", ValueError), (None, TypeError), (7, TypeError)]
)
def test_create_checkpoint_bad_arguments(checkpoint: Any, error: type[Exception]) -> None:
    manager, _ = _manager_at(P.EXECUTION)
    before = manager.get_state("wf")
    with pytest.raises(error, match="checkpoint_id"):
        manager.create_checkpoint("wf", checkpoint)
    assert manager.get_state("wf") is before


@pytest.mark.parametrize(
    "operation",
    [
        lambda m: m.pause("wf", None),
        lambda m: m.cancel("wf", b"r"),
        lambda m: m.fail("wf", 1),
        lambda m: m.resume("wf", 1),
        lambda m: m.complete_pause("wf", 1),
    ],
)
def test_non_string_reasons_and_checkpoints_are_type_errors(
    operation: Callable[[PhaseManager], object],
) -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    with pytest.raises(TypeError, match="must be a string"):
        operation(manager)
    assert manager.get_phase("wf") is P.EXECUTION
    assert recorder.states == []


# ------------------------------------------------------------------ snapshots


def test_snapshots_are_immutable_and_never_change_later() -> None:
    manager, _ = _manager_at(P.EXECUTION)
    early = manager.get_state("wf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        early.phase = P.FAILED  # type: ignore[misc]
    manager.set_progress("wf", 10, "a")
    manager.pause("wf", "r")
    assert (early.phase, early.progress, early.current_action) == (P.EXECUTION, 0.0, "")
    everything = manager.get_all_workflows()
    assert isinstance(everything, dict)
    everything.clear()  # a copy: the manager is not affected
    assert "wf" in manager


def test_active_workflows_exclude_terminal_ones_oldest_first() -> None:
    manager = PhaseManager()
    for name, phase in [("a", P.PENDING), ("b", P.COMPLETED), ("c", P.PAUSED), ("d", P.FAILED)]:
        manager.register_workflow(name)
        for step in PATH[phase]:
            manager.transition_to(name, step)
    manager.set_progress("a", 5)  # an update does not reorder
    assert [s.workflow_id for s in manager.get_active_workflows()] == ["a", "c"]
    assert sorted(manager.get_all_workflows()) == ["a", "b", "c", "d"]


def test_remove_workflow_is_idempotent_and_frees_the_id() -> None:
    manager, _ = _manager_at(P.COMPLETED)
    manager.remove_workflow("wf")
    manager.remove_workflow("wf")
    manager.remove_workflow("never-existed")
    assert "wf" not in manager
    with pytest.raises(UnknownWorkflowError):
        manager.get_state("wf")
    assert manager.register_workflow("wf").phase is P.PENDING


# ------------------------------------------------------------------ listeners


def test_listener_errors_are_counted_and_never_reach_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, recorder = _manager_at(P.EXECUTION)

    def broken(state: PhaseState) -> None:
        raise RuntimeError(f"listener broke on {state.phase}")

    manager.on_phase_changed(broken)
    after = Recorder()
    manager.on_phase_changed(after)
    manager.on_checkpoint(broken)
    with caplog.at_level(logging.ERROR, logger="when_coordinator.phase_manager"):
        manager.pause("wf", "r")
        manager.create_checkpoint("wf", "cp")
        manager.complete_pause("wf")
    assert manager.listener_errors == 3
    assert manager.get_phase("wf") is P.PAUSED
    assert len(recorder.states) == len(after.states) == 2  # later listeners still run
    assert "listener broke on pausing" in caplog.text


def test_unsubscribe_stops_notifications() -> None:
    manager, recorder = _manager_at(P.EXECUTION)
    checkpoints = Recorder()
    other = Recorder()
    stop = manager.on_phase_changed(other)
    stop_checkpoints = manager.on_checkpoint(checkpoints)
    manager.pause("wf")
    stop()
    stop()  # a second call is harmless
    stop_checkpoints()
    manager.create_checkpoint("wf", "cp")
    manager.complete_pause("wf")
    assert len(other.states) == 1
    assert len(recorder.states) == 2
    assert checkpoints.states == []


def test_the_same_listener_twice_is_called_twice_and_unsubscribes_once() -> None:
    manager, _ = _manager_at(P.EXECUTION)
    recorder = Recorder()
    stop = manager.on_phase_changed(recorder)
    manager.on_phase_changed(recorder)
    manager.pause("wf")
    assert len(recorder.states) == 2
    stop()
    manager.complete_pause("wf")
    assert len(recorder.states) == 3


def test_listener_must_be_callable() -> None:
    manager = PhaseManager()
    with pytest.raises(TypeError, match="callable"):
        manager.on_phase_changed("not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        manager.on_checkpoint(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ memory bound


def _finish(manager: PhaseManager, workflow_id: str) -> None:
    manager.register_workflow(workflow_id)
    manager.fail(workflow_id, "done")


def test_max_terminal_evicts_the_oldest_terminal_workflows_only() -> None:
    manager = PhaseManager(max_terminal=2)
    manager.register_workflow("live-1")
    manager.register_workflow("old-live")
    for step in PATH[P.PAUSED]:
        manager.transition_to("old-live", step)
    for name in ("t1", "t2", "t3", "t4"):
        _finish(manager, name)
    manager.register_workflow("live-2")
    assert sorted(manager.get_all_workflows()) == ["live-1", "live-2", "old-live", "t3", "t4"]
    # A workflow that finishes later is younger, whatever its registration order.
    manager.fail("live-1", "late")
    assert sorted(manager.get_all_workflows()) == ["live-1", "live-2", "old-live", "t4"]


def test_max_terminal_zero_keeps_only_live_workflows() -> None:
    manager = PhaseManager(max_terminal=0)
    recorder = Recorder()
    manager.on_phase_changed(recorder)
    for index in range(50):
        manager.register_workflow(f"live-{index}")
    _finish(manager, "t")
    assert "t" not in manager
    assert recorder.moves == [(P.PENDING, P.FAILED, "done")]  # still notified
    assert len(manager) == 50


def test_removed_terminal_workflow_does_not_count_towards_the_bound() -> None:
    manager = PhaseManager(max_terminal=1)
    _finish(manager, "a")
    manager.remove_workflow("a")
    _finish(manager, "b")
    _finish(manager, "a")  # re-registered after removal, finished again
    assert sorted(manager.get_all_workflows()) == ["a"]


def test_negative_max_terminal_is_refused() -> None:
    with pytest.raises(ValueError, match="max_terminal"):
        PhaseManager(max_terminal=-1)


# ------------------------------------------------------------------ concurrency


def test_listener_sees_every_transition_in_order_under_contention() -> None:
    """8 threads drive their own and shared workflows; one listener records everything.

    Per workflow the recorded snapshots must be the transition order itself: sequence numbers
    1..n without gaps and each snapshot continuing from the previous one.
    """
    threads_count, rounds = 8, 150
    manager = PhaseManager()
    recorded: dict[str, list[PhaseState]] = {}

    def listener(state: PhaseState) -> None:
        recorded.setdefault(state.workflow_id, []).append(state)

    manager.on_phase_changed(listener)
    shared = [f"shared-{i}" for i in range(3)]
    own = [f"own-{t}" for t in range(threads_count)]
    for workflow_id in shared + own:
        manager.register_workflow(workflow_id)
        for step in PATH[P.EXECUTION]:
            manager.transition_to(workflow_id, step)
    recorded.clear()

    barrier = threading.Barrier(threads_count)
    refused = [0] * threads_count
    failures: list[BaseException] = []

    def cycle(workflow_id: str, index: int) -> None:
        operations: tuple[Callable[[], object], ...] = (
            lambda: manager.pause(workflow_id, f"pause by {index}"),
            lambda: manager.complete_pause(workflow_id, f"cp-{index}"),
            lambda: manager.resume(workflow_id),
            lambda: manager.complete_resume(workflow_id),
        )
        for operation in operations:
            try:
                operation()
            except InvalidTransitionError:
                refused[index] += 1

    def drive(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            for round_ in range(rounds):
                cycle(own[index], index)
                cycle(shared[(index + round_) % len(shared)], index)
                manager.set_progress(own[index], round_ % 100)
            manager.complete(own[index])
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            failures.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(threads_count)]
    # Switch threads far more often than the default 5 ms, so that they really interleave on
    # the shared workflows however fast one transition is.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert sum(refused) > 0  # the shared workflows really were contended

    for workflow_id in shared + own:
        history = recorded[workflow_id]
        final = manager.get_state(workflow_id)
        assert [s.sequence for s in history] == list(range(4, 4 + len(history)))
        assert history[-1] is final
        previous = P.EXECUTION
        for state in history:
            assert state.previous_phase is previous
            assert state.phase in TABLE[previous]
            previous = state.phase
    for workflow_id in own:
        assert len(recorded[workflow_id]) == 4 * rounds + 2
        assert manager.get_phase(workflow_id) is P.COMPLETED
    cycle_position = {P.EXECUTION: 0, P.PAUSING: 1, P.PAUSED: 2, P.RESUMING: 3}
    for workflow_id in shared:
        moves = len(recorded[workflow_id])
        assert moves >= 4  # each shared workflow went round at least once
        assert moves % 4 == cycle_position[manager.get_phase(workflow_id)]


def test_snapshots_of_the_hot_paths_are_ordinary_frozen_phase_states() -> None:
    """Transitions and progress folds build their snapshot without the dataclass's
    ``__init__`` (for speed): it must still be a ``PhaseState`` like any other."""
    manager = PhaseManager()
    manager.register_workflow("wf-s", "", "root-s")
    moved = manager.transition_to("wf-s", Phase.PRE_FLIGHT, "go")
    manager.note_progress("wf-s", 12.5)
    folded = manager.get_state("wf-s")
    for state in (moved, folded):
        assert type(state) is PhaseState
        rebuilt = PhaseState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(state)})
        assert state == rebuilt
        assert hash(state) == hash(rebuilt)
        assert repr(state) == repr(rebuilt)
        with pytest.raises(dataclasses.FrozenInstanceError):
            state.reason = "changed"  # type: ignore[misc]
    assert (moved.phase, moved.previous_phase, moved.reason, moved.sequence) == (
        Phase.PRE_FLIGHT,
        Phase.PENDING,
        "go",
        1,
    )
    assert (folded.progress, folded.root_workflow_id, folded.phase) == (12.5, "root-s", moved.phase)
    assert folded.updated_at >= moved.updated_at
