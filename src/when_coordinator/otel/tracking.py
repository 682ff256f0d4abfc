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
from typing import Protocol

from opentelemetry.trace import Span

from .._compat.otel_trace import add_text_event
from ..client import CommandEvent, Config, ConfigError, Coordinator
from ..phase_manager import PhaseState
from ..protocol.phases import TERMINAL_PHASES
from . import attributes as attr
from . import metrics as _metrics

__all__ = [
    "Tracker",
    "WorkflowListener",
    "get_coordinator",
    "set_coordinator",
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


class WorkflowListener(Protocol):
    """What a running workflow hears of its own workflow id, from any thread.

    ``phase_changed`` is called under the phase manager's lock (keep it to waking waiters);
    ``command`` on the client's thread, for every hub command, accepted or refused.
    """

    def phase_changed(self, state: PhaseState) -> None: ...

    def command(self, event: CommandEvent) -> None: ...


class Tracker:
    """What the OpenTelemetry layer knows about one coordinator's workflows."""

    MAX_SPANS = 16_384

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.phases = coordinator.phases
        self._lock = threading.Lock()
        self._spans: dict[str, Span] = {}
        self._listeners: dict[str, WorkflowListener] = {}
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

    def attach(self, workflow_id: str, listener: WorkflowListener) -> None:
        """Tell ``listener`` about ``workflow_id`` from now on (the run that owns the id)."""
        with self._lock:
            self._listeners[workflow_id] = listener

    def attached(self, workflow_id: str) -> bool:
        """Whether a run listens to ``workflow_id`` (it registered the workflow itself)."""
        return workflow_id in self._listeners  # one dict read: no lock needed

    def detach(self, workflow_id: str, listener: WorkflowListener) -> None:
        """Stop telling ``listener``; a newer run of the same id keeps its own listener."""
        with self._lock:
            if self._listeners.get(workflow_id) is listener:
                del self._listeners[workflow_id]
            self._spans.pop(workflow_id, None)

    def _on_phase_changed(self, state: PhaseState) -> None:
        # Every transition of every workflow: ``TERMINAL_PHASES`` is a set look-up where
        # ``is_terminal`` is a property call.
        workflow_id, phase, previous = state.workflow_id, state.phase, state.previous_phase
        name = failure = ""
        with self._lock:
            span = self._spans.get(workflow_id)
            listener = self._listeners.get(workflow_id)
            if phase in TERMINAL_PHASES:
                name = self._names.pop(workflow_id, "")
                failure = self._failures.pop(workflow_id, "")
        recorder = _metrics.recorder
        if recorder is not None:
            recorder.transition(state, name, failure)
        if span is not None:
            add_text_event(
                span,
                attr.PHASE_CHANGED_EVENT,
                {
                    # ``_value_``: the plain string; ``.value`` is an Enum property, slower.
                    attr.PHASE_FROM: previous._value_ if previous else "",
                    attr.PHASE_TO: phase._value_,
                    attr.PHASE_REASON: state.reason,
                    attr.PHASE_CHECKPOINT_ID: state.checkpoint_id,
                },
            )
        if listener is not None:
            listener.phase_changed(state)

    def _on_command(self, event: CommandEvent) -> None:
        with self._lock:
            listener = self._listeners.get(event.workflow_id)
        if listener is not None:
            listener.command(event)


_trackers: weakref.WeakKeyDictionary[Coordinator, Tracker] = weakref.WeakKeyDictionary()
_trackers_lock = threading.Lock()
_last: tuple[weakref.ref[Coordinator], Tracker] | None = None
"""The tracker asked for last: nearly always the one of the default coordinator, which every
workflow asks for (a lock and a ``WeakKeyDictionary`` look-up otherwise)."""


def tracker_for(coordinator: Coordinator) -> Tracker:
    global _last  # noqa: PLW0603 - a cache of one
    last = _last
    if last is not None and last[0]() is coordinator:
        return last[1]
    with _trackers_lock:
        tracker = _trackers.get(coordinator)
        if tracker is None:
            tracker = _trackers[coordinator] = Tracker(coordinator)
        _last = (weakref.ref(coordinator), tracker)
        return tracker
