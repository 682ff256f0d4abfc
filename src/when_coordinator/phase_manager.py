"""Thread-safe phase state of many workflows (PROTOCOL.md section 3).

Every change produces a new immutable ``PhaseState``; readers get that object, so a read can
never observe a half-made change and never needs copying. Listeners are called under the
manager's lock, which is what guarantees that they see a workflow's transitions in the order
they happened even when several threads drive it: keep them quick (the client only enqueues).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from .protocol.phases import TERMINAL_PHASES, VALID_TRANSITIONS, Phase

__all__ = [
    "InvalidTransitionError",
    "PhaseError",
    "PhaseListener",
    "PhaseManager",
    "PhaseState",
    "UnknownWorkflowError",
    "WorkflowExistsError",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhaseState:
    """One workflow's state, as it was at one moment; never mutated.

    ``previous_phase`` and ``reason`` describe the last transition, so a snapshot is all a
    ``phase_changed`` message needs (``previous_phase`` is None for the first phase).
    ``sequence`` counts the workflow's transitions; the first phase is 0.
    """

    workflow_id: str
    phase: Phase = Phase.PENDING
    previous_phase: Phase | None = None
    reason: str = ""
    checkpoint_id: str = ""
    parent_workflow_id: str = ""
    root_workflow_id: str = ""
    progress: float = 0.0
    current_action: str = ""
    sequence: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def is_terminal(self) -> bool:
        return self.phase.is_terminal


PhaseListener = Callable[[PhaseState], None]

_new_object = object.__new__


def _snapshot(
    workflow_id: str,
    phase: Phase,
    previous_phase: Phase | None,
    reason: str,
    checkpoint_id: str,
    parent_workflow_id: str,
    root_workflow_id: str,
    progress: float,
    current_action: str,
    sequence: int,
    started_at: float,
    updated_at: float,
) -> PhaseState:
    """``PhaseState(...)`` for the hot paths, the same object made twice as fast.

    A frozen dataclass's ``__init__`` sets each of the twelve fields through
    ``object.__setattr__``; every transition and progress fold makes one.
    """
    state: PhaseState = _new_object(PhaseState)
    state.__dict__.update(
        workflow_id=workflow_id,
        phase=phase,
        previous_phase=previous_phase,
        reason=reason,
        checkpoint_id=checkpoint_id,
        parent_workflow_id=parent_workflow_id,
        root_workflow_id=root_workflow_id,
        progress=progress,
        current_action=current_action,
        sequence=sequence,
        started_at=started_at,
        updated_at=updated_at,
    )
    return state


class PhaseError(Exception):
    """Base of the phase manager's errors."""


class UnknownWorkflowError(PhaseError, KeyError):
    """The workflow id is not registered (or was removed)."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id

    def __str__(self) -> str:
        return f"unknown workflow {self.workflow_id!r}"


class WorkflowExistsError(PhaseError, ValueError):
    """``register_workflow`` was called twice for one id."""

    def __init__(self, workflow_id: str, phase: Phase) -> None:
        super().__init__(f"workflow {workflow_id!r} is already registered (phase {phase.value!r})")
        self.workflow_id = workflow_id
        self.phase = phase


class InvalidTransitionError(PhaseError, ValueError):
    """The operation is not allowed from the workflow's current phase."""

    def __init__(
        self,
        workflow_id: str,
        current: Phase,
        requested: Phase,
        operation: str = "transition",
        *,
        required: Phase | None = None,
    ) -> None:
        if required is not None:
            # The table may allow the move, but not as this operation (e.g. a resume).
            detail = f"only {required.value!r} can move to {requested.value!r} this way"
        else:
            allowed = ", ".join(sorted(p.value for p in VALID_TRANSITIONS[current])) or "nothing"
            detail = f"which cannot move to {requested.value!r} (allowed: {allowed})"
        super().__init__(
            f"cannot {operation} workflow {workflow_id!r}: it is in phase {current.value!r}, "
            + detail
        )
        self.workflow_id = workflow_id
        self.current = current
        self.requested = requested
        self.operation = operation


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


class PhaseManager:
    """The phases of a service's workflows, with the reference client's operations and reasons.

    ``max_terminal`` bounds memory in long-running services: beyond that many finished
    workflows, the oldest finished ones are forgotten (live ones never are).
    """

    def __init__(self, *, max_terminal: int = 10_000) -> None:
        if max_terminal < 0:
            raise ValueError("max_terminal must be >= 0")
        self._lock = threading.RLock()
        self._states: dict[str, PhaseState] = {}
        self._noted: dict[str, tuple[float, float]] = {}  # note_progress: (percent, time)
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_terminal = max_terminal
        self._phase_listeners: list[PhaseListener] = []
        self._checkpoint_listeners: list[PhaseListener] = []
        self.listener_errors = 0
        """Exceptions raised by listeners; logged and swallowed, never raised to the caller."""

    # ------------------------------------------------------------------ listeners

    def on_phase_changed(self, listener: PhaseListener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` once per transition; returns a function that unsubscribes."""
        return self._subscribe(self._phase_listeners, listener)

    def on_checkpoint(self, listener: PhaseListener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` after each ``create_checkpoint``; returns an unsubscriber."""
        return self._subscribe(self._checkpoint_listeners, listener)

    def _subscribe(
        self, listeners: list[PhaseListener], listener: PhaseListener
    ) -> Callable[[], None]:
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        with self._lock:
            listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in listeners:
                    listeners.remove(listener)

        return unsubscribe

    def _emit(self, listeners: list[PhaseListener], state: PhaseState) -> None:
        for listener in tuple(listeners):
            try:
                listener(state)
            except Exception:
                self.listener_errors += 1
                _log.exception("phase listener %r failed for %s", listener, state.workflow_id)

    # ------------------------------------------------------------------ registration

    def register_workflow(
        self,
        workflow_id: str,
        parent_workflow_id: str = "",
        root_workflow_id: str = "",
        *,
        phase: Phase = Phase.PENDING,
    ) -> PhaseState:
        """Add a workflow in ``pending``. No listener is called: there was no transition.

        An empty root defaults to the parent's root (or the parent), else the workflow itself.
        ``phase`` registers a workflow that another process ran until now (a retried task
        picked up by another worker) in the phase the hub already has for it.
        """
        _text("workflow_id", workflow_id)
        _text("parent_workflow_id", parent_workflow_id)
        _text("root_workflow_id", root_workflow_id)
        if not workflow_id:
            raise ValueError("workflow_id must not be empty")
        with self._lock:
            existing = self._states.get(workflow_id)
            if existing is not None:
                raise WorkflowExistsError(workflow_id, existing.phase)
            if not root_workflow_id:
                parent = self._states.get(parent_workflow_id) if parent_workflow_id else None
                root_workflow_id = (
                    (parent.root_workflow_id or parent.workflow_id)
                    if parent is not None
                    else parent_workflow_id or workflow_id
                )
            now = time.time()
            state = _snapshot(
                workflow_id,
                phase if phase.__class__ is Phase else Phase(phase),
                None,
                "",
                "",
                parent_workflow_id,
                root_workflow_id,
                0.0,
                "",
                0,
                now,
                now,
            )
            self._states[workflow_id] = state
            return state

    def remove_workflow(self, workflow_id: str) -> None:
        """Forget a workflow; unknown ids are ignored (removal is idempotent)."""
        with self._lock:
            self._states.pop(workflow_id, None)
            self._noted.pop(workflow_id, None)
            self._finished.pop(workflow_id, None)

    # ------------------------------------------------------------------ transitions

    def _get(self, workflow_id: str) -> PhaseState:
        """The current snapshot, with progress noted since the last one folded in."""
        state = self._states.get(workflow_id)
        if state is None:
            raise UnknownWorkflowError(workflow_id)
        noted = self._noted.pop(workflow_id, None)
        if noted is not None:
            state = _snapshot(
                state.workflow_id,
                state.phase,
                state.previous_phase,
                state.reason,
                state.checkpoint_id,
                state.parent_workflow_id,
                state.root_workflow_id,
                noted[0],
                state.current_action,
                state.sequence,
                state.started_at,
                noted[1],
            )
            self._states[workflow_id] = state
        return state

    def _fold_all(self) -> None:
        for workflow_id in tuple(self._noted):
            self._get(workflow_id)

    def _move(
        self,
        workflow_id: str,
        target: Phase,
        reason: str,
        *,
        operation: str = "transition",
        checkpoint_id: str = "",
        checked: bool = True,
    ) -> PhaseState:
        """Apply one transition and notify; the caller holds the lock."""
        current = self._get(workflow_id)
        if checked and target not in VALID_TRANSITIONS[current.phase]:
            raise InvalidTransitionError(workflow_id, current.phase, target, operation)
        # Built field by field: ``dataclasses.replace`` costs several times more, per transition.
        state = _snapshot(
            workflow_id,
            target,
            current.phase,
            reason,
            checkpoint_id or current.checkpoint_id,
            current.parent_workflow_id,
            current.root_workflow_id,
            current.progress,
            current.current_action,
            current.sequence + 1,
            current.started_at,
            time.time(),
        )
        self._states[workflow_id] = state
        if target in TERMINAL_PHASES:  # a set look-up: ``is_terminal`` is a property call
            self._retire(workflow_id)
        self._emit(self._phase_listeners, state)
        return state

    def _retire(self, workflow_id: str) -> None:
        self._finished[workflow_id] = None
        while len(self._finished) > self._max_terminal:
            old, _ = self._finished.popitem(last=False)
            self._states.pop(old, None)
            self._noted.pop(old, None)

    def transition_to(self, workflow_id: str, phase: Phase | str, reason: str = "") -> PhaseState:
        """Move to ``phase`` if ``VALID_TRANSITIONS`` allows it; returns the new snapshot."""
        target = phase if phase.__class__ is Phase else Phase(phase)
        _text("reason", reason)
        with self._lock:
            return self._move(workflow_id, target, reason)

    def walk(self, workflow_id: str, steps: Iterable[tuple[Phase, str]]) -> PhaseState:
        """Take each ``(phase, reason)`` step that the table allows from where the workflow
        then stands, skipping the others, in one hold of the lock: the automatic lifecycle's
        three steps at a workflow's start, each otherwise a lock, a read and a transition."""
        with self._lock:
            for phase, reason in steps:
                if phase in VALID_TRANSITIONS[self._get(workflow_id).phase]:
                    self._move(workflow_id, phase, reason)
            return self._get(workflow_id)

    def pause(self, workflow_id: str, reason: str = "") -> PhaseState:
        """``execution -> pausing``; the workflow reaches ``paused`` at its next safe point."""
        _text("reason", reason)
        with self._lock:
            return self._move(workflow_id, Phase.PAUSING, reason, operation="pause")

    def complete_pause(self, workflow_id: str, checkpoint_id: str = "") -> PhaseState:
        """``pausing -> paused``, storing the checkpoint and keeping the pause's reason."""
        _text("checkpoint_id", checkpoint_id)
        with self._lock:
            current = self._get(workflow_id)
            return self._move(
                workflow_id,
                Phase.PAUSED,
                current.reason,
                operation="complete the pause of",
                checkpoint_id=checkpoint_id,
            )

    def resume(self, workflow_id: str, from_checkpoint: str = "") -> PhaseState:
        """``paused -> resuming`` with reason ``resume requested``."""
        _text("from_checkpoint", from_checkpoint)
        with self._lock:
            return self._move(
                workflow_id,
                Phase.RESUMING,
                "resume requested",
                operation="resume",
                checkpoint_id=from_checkpoint,
            )

    def complete_resume(self, workflow_id: str) -> PhaseState:
        """``resuming -> execution`` with reason ``resumed``.

        Only from ``resuming``: the table also allows ``planning -> execution``, which is no
        resume and must not reach the hub as one.
        """
        with self._lock:
            current = self._get(workflow_id).phase
            if current is not Phase.RESUMING:
                raise InvalidTransitionError(
                    workflow_id,
                    current,
                    Phase.EXECUTION,
                    "complete the resume of",
                    required=Phase.RESUMING,
                )
            return self._move(
                workflow_id, Phase.EXECUTION, "resumed", operation="complete the resume of"
            )

    def cancel(self, workflow_id: str, reason: str = "") -> PhaseState:
        """To ``cancelling`` where the table allows it (execution, pausing, paused, resuming)."""
        _text("reason", reason)
        with self._lock:
            return self._move(workflow_id, Phase.CANCELLING, reason, operation="cancel")

    def complete_cancellation(self, workflow_id: str) -> PhaseState:
        """``cancelling -> cancelled`` with reason ``cancelled``."""
        with self._lock:
            return self._move(
                workflow_id, Phase.CANCELLED, "cancelled", operation="complete the cancellation of"
            )

    def fail(self, workflow_id: str, reason: str = "") -> PhaseState:
        """From any phase that is not terminal straight to ``failed``, bypassing the table."""
        _text("reason", reason)
        with self._lock:
            current = self._get(workflow_id)
            if current.phase.is_terminal:
                raise InvalidTransitionError(workflow_id, current.phase, Phase.FAILED, "fail")
            return self._move(workflow_id, Phase.FAILED, reason, checked=False)

    def complete(self, workflow_id: str) -> PhaseState:
        """``execution -> completing -> completed``: two transitions, two notifications.

        From ``completing`` (someone already took the first step) only the second is made.
        """
        with self._lock:
            if self._get(workflow_id).phase is not Phase.COMPLETING:
                self._move(workflow_id, Phase.COMPLETING, "completing", operation="complete")
            return self._move(
                workflow_id, Phase.COMPLETED, "completed successfully", operation="complete"
            )

    # ------------------------------------------------------------------ other state

    def set_progress(
        self, workflow_id: str, percent: float, current_action: str | None = None
    ) -> PhaseState:
        """Record progress (0 to 100) and, when given, the current action; no notification."""
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError(f"percent must be a number, got {type(percent).__name__}")
        if not math.isfinite(percent) or not 0 <= percent <= 100:
            raise ValueError(f"percent must be between 0 and 100, got {percent!r}")
        if current_action is not None:
            _text("current_action", current_action)
        with self._lock:
            current = self._get(workflow_id)
            state = replace(
                current,
                progress=percent,
                current_action=(
                    current.current_action if current_action is None else current_action
                ),
                updated_at=time.time(),
            )
            self._states[workflow_id] = state
            return state

    def note_progress(self, workflow_id: str, percent: float) -> str:
        """``set_progress`` for hot paths: records the percent and returns the current action.

        The snapshot is rebuilt only when someone reads it, so a workflow reporting progress
        in a tight loop pays for a dictionary store, not for a new ``PhaseState`` each time.
        """
        if percent.__class__ not in (int, float) and (
            isinstance(percent, bool) or not isinstance(percent, (int, float))
        ):
            raise TypeError(f"percent must be a number, got {type(percent).__name__}")
        if not 0 <= percent <= 100:  # also false for NaN
            raise ValueError(f"percent must be between 0 and 100, got {percent!r}")
        with self._lock:
            state = self._states.get(workflow_id)
            if state is None:
                raise UnknownWorkflowError(workflow_id)
            self._noted[workflow_id] = (percent, time.time())
            return state.current_action

    def create_checkpoint(self, workflow_id: str, checkpoint_id: str) -> PhaseState:
        """Store a checkpoint id (carried by every later ``phase_changed``); no phase change."""
        _text("checkpoint_id", checkpoint_id)
        if not checkpoint_id:
            raise ValueError("checkpoint_id must not be empty")
        with self._lock:
            state = replace(
                self._get(workflow_id), checkpoint_id=checkpoint_id, updated_at=time.time()
            )
            self._states[workflow_id] = state
            self._emit(self._checkpoint_listeners, state)
            return state

    def _reset_lock_after_fork(self) -> None:
        """In a forked child, a lock held by a parent thread would stay held forever."""
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ reads

    def get_state(self, workflow_id: str) -> PhaseState:
        """The current snapshot; raises ``UnknownWorkflowError``."""
        with self._lock:
            return self._get(workflow_id)

    def get_phase(self, workflow_id: str) -> Phase:
        with self._lock:
            return self._get(workflow_id).phase

    def get_active_workflows(self) -> list[PhaseState]:
        """Workflows not in a terminal phase (pending and paused included), oldest first."""
        with self._lock:
            self._fold_all()
            return [s for s in self._states.values() if not s.phase.is_terminal]

    def get_all_workflows(self) -> Mapping[str, PhaseState]:
        """A copy of every known workflow's snapshot, by id."""
        with self._lock:
            self._fold_all()
            return dict(self._states)

    def __contains__(self, workflow_id: object) -> bool:
        with self._lock:
            return workflow_id in self._states

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)
