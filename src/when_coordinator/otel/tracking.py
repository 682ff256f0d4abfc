"""State the OpenTelemetry layer shares: the default coordinator, live workflow spans, and
which span belongs to which workflow.

The span processor, the workflow API and the log exporter meet here, so that a fact learnt by
one (this span is workflow ``wf-1``'s) serves the others, and each fact is sent once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

from opentelemetry.trace import Span

from ..client import CommandEvent, Config, ConfigError, Coordinator
from ..phase_manager import PhaseError, PhaseManager, PhaseState
from ..protocol import Phase
from . import attributes as attr
from . import metrics as _metrics

if TYPE_CHECKING:
    from .workflow import _WorkflowBase

__all__ = [
    "Tracker",
    "get_coordinator",
    "set_coordinator",
    "settle",
    "start_lifecycle",
    "tracker_for",
]

_log = logging.getLogger(__name__)

_default_lock = threading.Lock()
_default: Coordinator | None = None


def get_coordinator() -> Coordinator:
    """The process-wide coordinator, made from the environment on first use.

    With ``WHEN_URL`` unset it never connects; workflows still trace and keep their phases.
    """
    global _default  # noqa: PLW0603 - the process-wide default, created once
    coordinator = _default
    if coordinator is None:
        with _default_lock:
            if _default is None:
                try:
                    config = Config.from_env()
                except ConfigError as exc:
                    _log.error("when-coordinator is not connecting: %s", exc)
                    config = Config()
                _default = Coordinator(config)
                _default.connect()
                _metrics.observe(_default)
            coordinator = _default
    return coordinator


def set_coordinator(coordinator: Coordinator | None) -> Coordinator | None:
    """Make ``coordinator`` the default (None forgets it); returns the previous default."""
    global _default
    with _default_lock:
        previous, _default = _default, coordinator
    if coordinator is not None:
        _metrics.observe(coordinator)
    return previous


class Tracker:
    """What the OpenTelemetry layer knows about one coordinator's workflows."""

    MAX_SPANS = 16_384

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.phases = coordinator.phases
        self._lock = threading.Lock()
        self._spans: dict[str, Span] = {}
        self._workflows: dict[str, _WorkflowBase] = {}
        self._claimed: dict[str, int] = {}
        # span id -> (workflow id, action name); kept a while after the span ends, because
        # log records are exported later than they are made.
        self._owners: OrderedDict[int, tuple[str, str]] = OrderedDict()
        # workflow id -> its name and, once it failed, the error.type: for the metrics
        # recorded when it reaches its final phase (an adopted span is released before that).
        self._names: dict[str, str] = {}
        self._failures: dict[str, str] = {}
        _metrics.observe(coordinator)
        self.phases.on_phase_changed(self._on_phase_changed)
        coordinator.on_command(self._on_command)

    # ------------------------------------------------------------------ spans

    def adopt_span(self, workflow_id: str, span: Span) -> None:
        with self._lock:
            self._spans[workflow_id] = span
            self._names[workflow_id] = getattr(span, "name", "") or ""
            if len(self._names) > self.MAX_SPANS:  # runs that never ended: forget the oldest
                del self._names[next(iter(self._names))]

    def note_failure(self, workflow_id: str, error_type: str) -> None:
        """The ``error.type`` of the failure about to settle the workflow."""
        with self._lock:
            self._failures[workflow_id] = error_type
            if len(self._failures) > self.MAX_SPANS:
                del self._failures[next(iter(self._failures))]

    def release_span(self, workflow_id: str) -> None:
        with self._lock:
            self._spans.pop(workflow_id, None)

    def bind(self, span_id: int, workflow_id: str, action: str = "") -> None:
        with self._lock:
            self._owners[span_id] = (workflow_id, action)
            if len(self._owners) > self.MAX_SPANS:
                self._owners.popitem(last=False)

    def owner(self, span_id: int) -> tuple[str, str] | None:
        with self._lock:
            return self._owners.get(span_id)

    def claim(self, workflow_id: str, span_id: int) -> None:
        with self._lock:
            self._claimed[workflow_id] = span_id

    def unclaim(self, workflow_id: str, span_id: int) -> bool:
        """True if this span claimed the workflow (and so should settle it)."""
        with self._lock:
            if self._claimed.get(workflow_id) == span_id:
                del self._claimed[workflow_id]
                return True
            return False

    # ------------------------------------------------------------------ workflows

    def attach(self, workflow: _WorkflowBase) -> None:
        with self._lock:
            self._workflows[workflow.id] = workflow

    def detach(self, workflow: _WorkflowBase) -> None:
        with self._lock:
            if self._workflows.get(workflow.id) is workflow:
                del self._workflows[workflow.id]
            self._spans.pop(workflow.id, None)

    def _on_phase_changed(self, state: PhaseState) -> None:
        name = failure = ""
        with self._lock:
            span = self._spans.get(state.workflow_id)
            workflow = self._workflows.get(state.workflow_id)
            if state.phase.is_terminal:
                name = self._names.pop(state.workflow_id, "")
                failure = self._failures.pop(state.workflow_id, "")
        recorder = _metrics.recorder
        if recorder is not None:
            recorder.transition(state, name, failure)
        if span is not None:
            span.add_event(
                attr.PHASE_CHANGED_EVENT,
                {
                    attr.PHASE_FROM: state.previous_phase.value if state.previous_phase else "",
                    attr.PHASE_TO: state.phase.value,
                    attr.PHASE_REASON: state.reason,
                    attr.PHASE_CHECKPOINT_ID: state.checkpoint_id,
                },
            )
        if workflow is not None:
            workflow._phase_changed(state)

    def _on_command(self, event: CommandEvent) -> None:
        with self._lock:
            workflow = self._workflows.get(event.workflow_id)
        if workflow is not None:
            workflow._command(event)


_trackers: weakref.WeakKeyDictionary[Coordinator, Tracker] = weakref.WeakKeyDictionary()
_trackers_lock = threading.Lock()


def tracker_for(coordinator: Coordinator) -> Tracker:
    with _trackers_lock:
        tracker = _trackers.get(coordinator)
        if tracker is None:
            tracker = _trackers[coordinator] = Tracker(coordinator)
        return tracker


# ---------------------------------------------------------------------- lifecycle steps

_START = (
    (Phase.PRE_FLIGHT, "workflow started"),
    (Phase.PLANNING, "planning"),
    (Phase.EXECUTION, "executing"),
)


def start_lifecycle(phases: PhaseManager, workflow_id: str) -> None:
    """pending -> pre-flight -> planning -> execution, from wherever it stands."""
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
