"""``CoordinationSpanProcessor``: spans started by anyone become coordination traffic.

A span carrying ``when.workflow.id`` that nobody registered (a raw tracer, another library)
becomes a known workflow: ``workflow_created`` once, walked to ``execution``, and settled when
the span ends. Spans nested in a workflow become its current action, which the hub sees in
``status_response`` and as the default progress stage. Workflows made with ``workflow()`` are
already registered, so the processor leaves them alone: each fact is sent once.

Like every span processor it runs on the thread that starts or ends the span, so it only does
in-memory work and enqueues; its errors are counted in ``errors`` and never raised.
"""

from __future__ import annotations

import contextlib
import logging

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from ..client import Coordinator
from ..client._util import RateLimitedLog
from ..lifecycle import settle, start_lifecycle
from ..phase_manager import PhaseError, WorkflowExistsError
from . import attributes as attr
from .tracking import Tracker, get_coordinator, tracker_for

__all__ = ["CoordinationSpanProcessor"]

_log = logging.getLogger(__name__)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _enclosing(
    tracker: Tracker, span: Span, workflow_id: str, parent_context: Context | None
) -> tuple[str, str]:
    """(parent, root) for a workflow span that names no parent: the workflow of the span it is
    nested in (whose root the phase manager knows), else the workflow in W3C baggage."""
    parent = span.parent
    owner = tracker.owner(parent.span_id) if parent is not None else None
    if owner is not None and owner[0] != workflow_id:
        return owner[0], ""
    parent_id = _text(baggage.get_baggage(attr.BAGGAGE_WORKFLOW_ID, parent_context))
    if not parent_id or parent_id == workflow_id:
        return "", ""
    return parent_id, _text(baggage.get_baggage(attr.BAGGAGE_ROOT_ID, parent_context))


class CoordinationSpanProcessor(SpanProcessor):
    """Register with ``TracerProvider.add_span_processor``; uses the default coordinator
    (``WHEN_*`` environment) unless given one."""

    def __init__(self, coordinator: Coordinator | None = None) -> None:
        self._coordinator = coordinator
        self.errors = 0
        self.enabled = True
        """Off: every hook returns at once (SDK processors cannot be removed from a provider)."""
        self._warn = RateLimitedLog(_log)

    def use(self, coordinator: Coordinator) -> None:
        """Report to ``coordinator`` from now on, and switch on."""
        self._coordinator = coordinator
        self.enabled = True

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            self._coordinator = get_coordinator()
        return self._coordinator

    def _tracker(self) -> Tracker:
        return tracker_for(self.coordinator)

    def _failed(self, what: str) -> None:
        self.errors += 1
        self._warn.log(logging.WARNING, what, "span processor: %s failed", what, exc_info=True)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self.enabled:
            return
        try:
            attributes = span.attributes or {}
            span_id = span.get_span_context().span_id
            tracker = self._tracker()
            workflow_id = _text(attributes.get(attr.WORKFLOW_ID))
            if workflow_id:
                tracker.bind(span_id, workflow_id)
                self._adopt(tracker, span, workflow_id, attributes, parent_context)
                return
            parent = span.parent
            owner = tracker.owner(parent.span_id) if parent is not None else None
            if owner is not None:
                tracker.bind(span_id, owner[0], span.name)
                self._set_action(tracker, owner[0], span.name)
        except Exception:
            self._failed("on_start")

    def _adopt(
        self,
        tracker: Tracker,
        span: Span,
        workflow_id: str,
        attributes: object,
        parent_context: Context | None,
    ) -> None:
        """Register a workflow span nobody registered; workflow() spans are already known.

        Its parent is the one its attributes name, else the workflow of the enclosing span,
        else the one W3C baggage brought from another process. A span reusing the id of a
        finished workflow is a new run of it.
        """
        if tracker.attached(workflow_id):
            # Most often: the span of a ``workflow()`` run (a task's), which registered the
            # workflow before starting it. Decided here, where working out its parent and
            # being refused by ``register_workflow`` (an exception) cost every task.
            with contextlib.suppress(PhaseError):
                if not tracker.phases.get_phase(workflow_id).is_terminal:
                    return  # live: as the refusal below decides
        get = getattr(attributes, "get", lambda key: None)
        parent_id = _text(get(attr.WORKFLOW_PARENT_ID))
        root_id = _text(get(attr.WORKFLOW_ROOT_ID))
        if not parent_id:
            parent_id, inherited_root = _enclosing(tracker, span, workflow_id, parent_context)
            root_id = root_id or inherited_root
        try:
            tracker.phases.register_workflow(workflow_id, parent_id, root_id)
        except WorkflowExistsError as exc:
            if not exc.phase.is_terminal:
                return  # live: workflow() registered it, or an enclosing span of its own did
            tracker.phases.remove_workflow(workflow_id)
            tracker.phases.register_workflow(workflow_id, parent_id, root_id)
        state = tracker.phases.get_state(workflow_id)
        tracker.claim(workflow_id, span.get_span_context().span_id)
        tracker.adopt_span(workflow_id, span)
        self.coordinator.send_workflow_created(
            workflow_id,
            state.parent_workflow_id,
            state.root_workflow_id,
            _text(get(attr.ACTION_ID)),
            _text(get(attr.ACTION_TYPE)) or span.name,
        )
        start_lifecycle(tracker.phases, workflow_id)

    def _set_action(self, tracker: Tracker, workflow_id: str, action: str) -> None:
        try:
            state = tracker.phases.get_state(workflow_id)
            tracker.phases.set_progress(workflow_id, state.progress, current_action=action)
        except PhaseError:
            pass  # the workflow ended or was forgotten meanwhile

    def on_end(self, span: ReadableSpan) -> None:
        if not self.enabled:
            return
        try:
            context = span.get_span_context()
            if context is None:
                return
            tracker = self._tracker()
            workflow_id = _text((span.attributes or {}).get(attr.WORKFLOW_ID))
            if workflow_id:
                if tracker.unclaim(workflow_id, context.span_id):
                    tracker.release_span(workflow_id)
                    error = None
                    if span.status.status_code is StatusCode.ERROR:
                        error = span.status.description or "span ended with an error"
                        kind = (span.attributes or {}).get(attr.ERROR_TYPE)
                        tracker.note_failure(workflow_id, kind if isinstance(kind, str) else "")
                    settle(tracker.phases, workflow_id, error=error)
                return
            owner = tracker.owner(context.span_id)
            if owner is not None and owner[1]:
                # The action ends: the enclosing action (if any) is current again.
                parent = span.parent
                enclosing = tracker.owner(parent.span_id) if parent is not None else None
                self._set_action(tracker, owner[0], enclosing[1] if enclosing else "")
        except Exception:
            self._failed("on_end")

    def shutdown(self) -> None:
        """Nothing to release: the coordinator outlives the tracer provider."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Deliver what the coordinator holds (True when nothing is left undelivered)."""
        try:
            coordinator = self.coordinator
            if not coordinator.config.enabled:
                return True
            return coordinator.flush(timeout_millis / 1000)
        except Exception:
            self._failed("force_flush")
            return False
