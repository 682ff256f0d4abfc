"""The core every workflow run shares: its ids, span, phases, reporting and hub control.

``otel/workflow.py`` builds the public API on it (``Workflow``, ``AsyncWorkflow``,
``workflow()``). A run is current while its code runs: its OpenTelemetry Context, attached
around that code, holds its span, the W3C baggage of its ids and the run itself
(``_workflow_context``), so whatever carries the OpenTelemetry context into threads and tasks
carries the workflow too.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from .. import _workflow_context
from .._compat.otel_trace import add_text_event, span_limits_of
from .._version import __version__
from ..client import CommandEvent, Coordinator
from ..client._util import describe_error
from ..lifecycle import settle, start_lifecycle
from ..phase_manager import PhaseError, PhaseState, WorkflowExistsError
from ..protocol import MessageType, Phase
from . import attributes as attr
from ._identity import ByIdentity
from .metrics import OTHER_ERROR, error_type
from .tracking import get_coordinator, tracker_for

__all__ = ["WorkflowBase", "WorkflowCancelled", "current_run"]


class WorkflowCancelled(Exception):
    """Raised by ``safe_point()`` when the hub cancelled the workflow.

    The workflow that was cancelled catches it and ends as ``cancelled``; enclosing code sees
    the ``with`` block (or decorated call, returning None) end normally.
    """

    def __init__(self, workflow_id: str, reason: str = "") -> None:
        super().__init__(f"workflow {workflow_id!r} was cancelled: {reason or 'no reason given'}")
        self.workflow_id = workflow_id
        self.reason = reason


def current_run() -> WorkflowBase | None:
    """The run whose code is running in the current context, if any."""
    current = _workflow_context.current()
    return current if isinstance(current, WorkflowBase) else None


_MAX_PROGRESS_EVENTS = 64
_CICD_RESULTS = {
    Phase.COMPLETED: "success",
    Phase.FAILED: "failure",
    Phase.CANCELLED: "cancellation",
}
"""Final phase -> ``cicd.pipeline.result`` (semantic conventions' values)."""
_LIFECYCLE_EVENTS = 8
"""Events kept free for the lifecycle: three to start, two to end, a failure or a pause."""


def _progress_events_allowed(span: Span) -> int:
    """Stage-change events one span may take, so that its phase events always fit.

    Half of what the span's event limit leaves after the lifecycle's own events, at most 64.
    The limit is the span's own (an SDK span carries its provider's ``SpanLimits``, which may
    differ from the environment's); other spans fall back to ``OTEL_SPAN_EVENT_COUNT_LIMIT``.
    """
    if not span.is_recording():
        return 0
    limits = span_limits_of(span) or SpanLimits()
    max_events = limits.max_events
    if max_events is None:  # unlimited
        return _MAX_PROGRESS_EVENTS
    return max(0, min(_MAX_PROGRESS_EVENTS, (max_events - _LIFECYCLE_EVENTS) // 2))


_ID_BYTES = 16 * 256
_id_lock = threading.Lock()
_id_pool = b""
_id_pos = _ID_BYTES


def _forget_id_pool() -> None:
    """A forked child must not draw the same random bytes as its parent."""
    global _id_pool, _id_pos, _id_lock  # noqa: PLW0603
    _id_lock = threading.Lock()
    _id_pool, _id_pos = b"", _ID_BYTES


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id_pool)


def _new_workflow_id() -> str:
    """``wf-`` and a random UUID (version 4) in hex, as ``uuid.uuid4().hex`` makes it.

    The random bytes are read 256 ids at a time: ``os.urandom`` releases the GIL, and a
    workflow that gave it up to the client's thread at its start waited for it to come back.
    """
    global _id_pool, _id_pos  # noqa: PLW0603 - the pool of random bytes, guarded by _id_lock
    with _id_lock:
        position = _id_pos
        if position >= _ID_BYTES:
            _id_pool = os.urandom(_ID_BYTES)
            position = 0
        _id_pos = position + 16
        value = int.from_bytes(_id_pool[position : position + 16], "big")
    # The version (4) and variant (RFC 4122) bits, as ``uuid.UUID(version=4)`` sets them.
    value = (value & ~(0xC000 << 48) | 0x8000 << 48) & ~(0xF000 << 64) | 4 << 76
    return f"wf-{value:032x}"


_global_tracer: trace.Tracer | None = None
_tracers: ByIdentity[trace.Tracer] = ByIdentity()  # providers need not be hashable (logfire's)


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    """The package's tracer for ``provider``, made once: the SDK builds a new one per call.

    For the global provider the API's proxy tracer is kept, which follows a provider that is
    set later.
    """
    global _global_tracer  # noqa: PLW0603 - a cache of one
    if provider is None:
        if _global_tracer is None:
            _global_tracer = trace.get_tracer("when_coordinator", __version__)
        return _global_tracer
    tracer = _tracers.get(provider)
    if tracer is None:
        tracer = provider.get_tracer("when_coordinator", __version__)
        _tracers.set(provider, tracer)
    return tracer


_baggage_module: ModuleType | None = None


def _baggage() -> ModuleType:
    """``opentelemetry.baggage``, imported at the first workflow: its regular expressions are
    5 ms of every process's import. Kept here, since an ``import`` statement in a function
    costs every call (about 0.4 us, twice a workflow)."""
    global _baggage_module  # noqa: PLW0603 - a cache of one
    if _baggage_module is None:
        from opentelemetry import baggage  # noqa: PLC0415

        _baggage_module = baggage
    return _baggage_module


def _reset(token: Any) -> None:
    """Undo an ``attach``; from another context there is nothing of ours to undo.

    The default runtime context is ``contextvars``-based and its tokens are ``ContextVar``
    tokens: reset here, a workflow ended in another task or thread is safe, where
    OpenTelemetry's own ``detach`` would log "Failed to detach context".
    """
    if isinstance(token, contextvars.Token):
        try:  # noqa: SIM105 - ``contextlib.suppress`` is three Python calls at every run's end
            token.var.reset(token)
        except ValueError:
            pass
    else:  # a runtime context that is not contextvars-based
        otel_context.detach(token)


class WorkflowBase:
    """What sync and async workflows share; see ``workflow()``."""

    def __init__(
        self,
        name: str,
        *,
        workflow_id: str | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        action_id: str | None = None,
        action_type: str | None = None,
        coordinator: Coordinator | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
        tracer_provider: TracerProvider | None = None,
        cicd_attributes: bool | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a workflow needs a non-empty name")
        self.name = name
        self._coordinator = coordinator if coordinator is not None else get_coordinator()
        self._phases = self._coordinator.phases
        self._tracker = tracker_for(self._coordinator)
        inherited_parent, inherited_root = _inherited_ids()
        self.id = workflow_id or _new_workflow_id()
        self.parent_id = inherited_parent if parent_id is None else parent_id
        self.root_id = root_id or (inherited_root if self.parent_id else "") or self.id
        self.action_id = action_id or ""
        self.action_type = action_type or name
        self._attributes = dict(attributes or {})
        self._tracer_provider = tracer_provider
        self._cicd = (
            self._coordinator.config.cicd_attributes if cicd_attributes is None else cicd_attributes
        )
        self._failed = False
        self._span: Span = INVALID_SPAN
        self._context: otel_context.Context | None = None
        self._token: Any = None
        self._listener = _Listener(self)
        self._cancel_reason: str | None = None
        self._checkpoint_id = ""
        self._checkpoints = 0
        self._last_stage = ""
        self._percent: float | None = None
        self._progress_events = 0
        self._progress_budget = 0
        self._started = False
        self._ended = False
        self._version = 0
        self._wake_lock = threading.Lock()  # guards ``_version`` and ``_waiters``
        self._changed: threading.Condition | None = None  # on ``_wake_lock``; see ``_condition``
        self._waiters = 0  # threads in ``safe_point`` waiting on ``_changed``

    # A workflow another process ran until now (a retried task): the hub has it in this phase
    # already, so it is not announced again; from ``paused`` it resumes. See ``_continue``.
    _continued: Phase | None = None
    _continue_reason = ""

    def _continue(self, phase: Phase, reason: str = "") -> None:
        """Before it starts: continue the workflow from ``phase`` instead of announcing it."""
        self._continued = phase
        self._continue_reason = reason

    # ------------------------------------------------------------------ reading

    @property
    def span(self) -> Span:
        return self._span

    @property
    def phase(self) -> Phase:
        return self._phases.get_phase(self.id)

    @property
    def state(self) -> PhaseState:
        return self._phases.get_state(self.id)

    @property
    def pause_requested(self) -> bool:
        return self.phase in (Phase.PAUSING, Phase.PAUSED)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_reason is not None or self.phase is Phase.CANCELLING

    @property
    def ended(self) -> bool:
        """Whether the run's code has ended (its terminal phase is then settled)."""
        return self._ended

    def __repr__(self) -> str:
        phase = self.phase.value if self._started else "not started"
        return f"<{type(self).__name__} {self.name!r} id={self.id!r} {phase}>"

    # ------------------------------------------------------------------ reporting

    def _check_running(self) -> None:
        if not self._started or self._ended:
            raise RuntimeError(f"workflow {self.id!r} is not running")

    def transition(self, phase: Phase | str, reason: str = "") -> PhaseState:
        """Move to ``phase`` explicitly (the table in PROTOCOL.md section 3 applies)."""
        self._check_running()
        return self._phases.transition_to(self.id, phase, reason)

    def progress(
        self,
        percent: float,
        stage: str = "",
        message: str = "",
        *,
        current_item: int = 0,
        total_items: int = 0,
    ) -> None:
        """Report progress (0 to 100); the stage defaults to the current action (span)."""
        if self._ended or not self._started:  # the call, only to raise: progress is frequent
            self._check_running()
        action = self._phases.note_progress(self.id, percent)  # checks the percent
        stage = stage or action
        if current_item or total_items:
            self._coordinator.send_progress(
                self.id,
                self.action_id,
                percent,
                stage,
                message,
                current_item=current_item,
                total_items=total_items,
            )
        else:  # the id is this run's and the percent was checked above: skip those checks
            self._coordinator.send_progress(self.id, self.action_id, percent, stage, message)
        # The latest percent and stage become span attributes when the span ends: setting
        # them on every call costs more than the rest of this method.
        self._percent = percent
        if stage != self._last_stage:
            self._last_stage = stage
            if self._progress_events < self._progress_budget:
                self._progress_events += 1
                self._span.add_event(
                    attr.PROGRESS_EVENT,
                    {
                        attr.PROGRESS_PERCENT: percent,
                        attr.PROGRESS_STAGE: stage,
                        attr.PROGRESS_MESSAGE: message,
                    },
                )

    def checkpoint(
        self,
        checkpoint_id: str | None = None,
        reason: str = "",
        *,
        state: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a checkpoint (an id is made when none is given) and return its id.

        A later pause completes with the latest checkpoint.
        """
        self._check_running()
        self._checkpoints += 1
        checkpoint_id = checkpoint_id or f"{self.id}-cp-{self._checkpoints}"
        self._coordinator.send_checkpoint(self.id, checkpoint_id, reason, state=state)
        self._checkpoint_id = checkpoint_id
        add_text_event(
            self._span,
            attr.CHECKPOINT_EVENT,
            {attr.CHECKPOINT_ID: checkpoint_id, attr.CHECKPOINT_REASON: reason},
        )
        return checkpoint_id

    def error(self, message: str | BaseException, recoverable: bool = True) -> None:
        """Report an error the workflow survives (or not: ``recoverable=False``).

        An exception is reported as ``"Type: text"``; one whose ``str()`` raises as
        ``"Type: <str() failed>"``, never raising into the caller.
        """
        self._check_running()
        text = describe_error(message)  # never raises, whatever str(message) does
        self._coordinator.send_error(self.id, self.action_id, text, recoverable)
        if isinstance(message, BaseException):
            _record_exception(self._span, message, text, {attr.ERROR_RECOVERABLE: recoverable})
        else:
            self._span.add_event(
                attr.ERROR_EVENT,
                {attr.ERROR_MESSAGE: text, attr.ERROR_RECOVERABLE: recoverable},
            )

    # ------------------------------------------------------------------ lifecycle

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError(f"workflow {self.id!r} was already started")
        self._started = True
        phase = self._continued or Phase.PENDING
        try:
            self._phases.register_workflow(self.id, self.parent_id, self.root_id, phase=phase)
        except WorkflowExistsError as exc:
            if not exc.phase.is_terminal:
                self._ended = True
                raise ValueError(f"workflow {self.id!r} is already running") from None
            self._phases.remove_workflow(self.id)  # a new run under a reused id
            self._phases.register_workflow(self.id, self.parent_id, self.root_id, phase=phase)
        self._tracker.attach(self.id, self._listener)
        if self._continued is None:
            self._coordinator.send_workflow_created(
                self.id, self.parent_id, self.root_id, self.action_id, self.action_type
            )
        attributes: dict[str, AttributeValue] = {
            attr.WORKFLOW_ID: self.id,
            attr.WORKFLOW_NAME: self.name,
            attr.WORKFLOW_ROOT_ID: self.root_id,
            attr.ACTION_TYPE: self.action_type,
        }
        if self.parent_id:
            attributes[attr.WORKFLOW_PARENT_ID] = self.parent_id
        if self.action_id:
            attributes[attr.ACTION_ID] = self.action_id
        if self._cicd:
            attributes[attr.CICD_PIPELINE_NAME] = self.name
            attributes[attr.CICD_PIPELINE_RUN_ID] = self.id
        attributes.update(self._attributes)
        self._span = _tracer(self._tracer_provider).start_span(self.name, attributes=attributes)
        self._progress_budget = _progress_events_allowed(self._span)
        self._tracker.adopt_span(self.id, self._span)
        self._tracker.bind(self._span.get_span_context().span_id, self.id)
        baggage = _baggage()
        context = baggage.set_baggage(attr.BAGGAGE_WORKFLOW_ID, self.id)
        context = baggage.set_baggage(attr.BAGGAGE_ROOT_ID, self.root_id, context)
        context = trace.set_span_in_context(self._span, context)
        self._context = _workflow_context.with_workflow(self, context)
        if self._continued is Phase.PAUSED:
            reason = self._continue_reason or "continued"
            self._phases.transition_to(self.id, Phase.RESUMING, reason)
            self._phases.transition_to(self.id, Phase.EXECUTION, reason)
        start_lifecycle(self._phases, self.id)
        if self._cancel_reason is not None:
            self._cancel_now()

    def _activate(self) -> None:
        """Make this run current: attach its context (span, baggage, the run itself)."""
        assert self._context is not None
        self._token = otel_context.attach(self._context)

    def _deactivate(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            _reset(token)

    def _end(self, exc: BaseException | None) -> bool:
        """Settle the phase, close the span; True when ``exc`` is this workflow's cancellation."""
        if self._ended or not self._started:
            return False
        self._ended = True
        suppress = False
        try:
            if exc is None or isinstance(exc, GeneratorExit):
                # GeneratorExit: the generator around this block was closed by its consumer,
                # who stopped early because it had what it wanted. Not a failure.
                settle(self._phases, self.id, checkpoint_id=self._checkpoint_id)
            elif isinstance(exc, (WorkflowCancelled, asyncio.CancelledError)):
                # Ours, a parent's, or the task's: this workflow ends cancelled where the table
                # allows it. Only its own cancellation stops here.
                suppress = isinstance(exc, WorkflowCancelled) and exc.workflow_id == self.id
                self._end_cancelled(getattr(exc, "reason", "") or "cancelled")
            else:
                reason = describe_error(exc)
                self._coordinator.send_error(self.id, self.action_id, reason, False)
                _record_exception(self._span, exc, reason)
                self._fail_span(error_type(exc), reason)
                self._tracker.note_failure(self.id, error_type(exc))
                settle(self._phases, self.id, error=reason)
        finally:
            self._tracker.detach(self.id, self._listener)
            self._span.set_attributes(self._final_attributes())
            self._span.end()
            # The context holds this run (``current_workflow()``): a cycle that left each
            # ended run, its span and events to the garbage collector instead of freeing them.
            self._context = None
            self._notify()
        return suppress

    def _fail_span(self, kind: str, description: str) -> None:
        """Span status and the semantic conventions' attributes of a failure."""
        self._failed = True
        self._span.set_status(Status(StatusCode.ERROR, description))
        self._span.set_attributes({attr.ERROR_TYPE: kind, attr.STATUS_DESCRIPTION: description})

    def _final_attributes(self) -> dict[str, AttributeValue]:
        state = self._phases.get_state(self.id)
        phase = state.phase
        if phase is Phase.FAILED and not self._failed:
            # Failed without an exception here (an explicit transition, a cancellation that
            # the phase did not allow): still an error, of no more precise type.
            self._fail_span(OTHER_ERROR, state.reason or "failed")
        attributes: dict[str, AttributeValue] = {attr.PHASE: phase.value}
        if self._cicd and phase in _CICD_RESULTS:
            attributes[attr.CICD_PIPELINE_RESULT] = _CICD_RESULTS[phase]
        if self._percent is not None:
            attributes[attr.PROGRESS_PERCENT] = self._percent
        if self._last_stage:
            attributes[attr.PROGRESS_STAGE] = self._last_stage
        return attributes

    def _end_cancelled(self, reason: str) -> None:
        phase = self._phases.get_phase(self.id)
        if phase is not Phase.CANCELLING and not phase.is_terminal:
            try:
                self._phases.cancel(self.id, reason)
            except PhaseError:
                settle(self._phases, self.id, error=f"cancelled while {phase.value}")
                return
        settle(self._phases, self.id)

    def _suspend(self, reason: str, checkpoint_id: str) -> None:
        """End this process's part of a workflow that continues later, maybe in another
        process (a task that will be retried): pause it at the hub, close the span, forget it
        here. The next part starts with ``_continue(Phase.PAUSED)``."""
        if self._ended or not self._started:
            return
        try:
            if self._phases.get_phase(self.id) is Phase.EXECUTION:
                self._phases.pause(self.id, reason)
            if self._phases.get_phase(self.id) is Phase.PAUSING:
                self._phases.complete_pause(self.id, checkpoint_id)
        except PhaseError:
            pass  # a hub command moved it meanwhile: its last phase stands
        finally:
            self._release()

    def _release(self) -> None:
        """Close the span and forget the workflow here without settling it: another process
        reports how it ends (a task whose process is being terminated, or a retry)."""
        if self._ended or not self._started:
            return
        self._ended = True
        try:
            self._tracker.detach(self.id, self._listener)
            self._span.set_attributes(self._final_attributes())
            self._span.end()
        finally:
            self._phases.remove_workflow(self.id)  # not replayed from here after a reconnect
            self._context = None  # a cycle through this run, as in ``_end``
            self._notify()

    # ------------------------------------------------------------------ control

    def _cancel_now(self) -> None:
        reason, self._cancel_reason = self._cancel_reason, None
        if reason is None:
            return  # the other thread honoured it meanwhile
        try:
            self._phases.cancel(self.id, reason)
        except PhaseError:
            if self._phases.get_phase(self.id) in (Phase.PENDING, Phase.PRE_FLIGHT, Phase.PLANNING):
                self._cancel_reason = reason  # not yet in execution: keep it for later

    def _on_command(self, event: CommandEvent) -> None:
        """A hub command for this workflow (on the client's thread)."""
        if event.type is MessageType.CANCEL and not event.accepted:
            phase = self._phases.get_phase(self.id)
            # Refused because it came too early for the phase table: honoured once execution
            # is reached. Already in execution means the workflow got there after the refusal
            # (a cancel from execution is never refused), so it is honoured now.
            if phase in (Phase.PENDING, Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
                self._cancel_reason = event.reason or "cancel requested"
                if self._phases.get_phase(self.id) is Phase.EXECUTION:
                    self._cancel_now()
        self._notify()

    def _notify(self) -> None:
        # Every transition comes here: ``notify_all`` only when someone waits (a paused run).
        with self._wake_lock:
            self._version += 1
            if self._waiters and self._changed is not None:
                self._changed.notify_all()

    def _condition(self) -> threading.Condition:
        """What a paused ``safe_point`` waits on; the caller holds ``_wake_lock``. Made at the first
        wait: a ``Condition`` costs every run, and most runs are never paused."""
        if self._changed is None:
            self._changed = threading.Condition(self._wake_lock)
        return self._changed

    def _safe_step(self) -> bool:
        """Advance pause/resume/cancel by one step; True while paused (the caller waits).

        Raises ``WorkflowCancelled`` once a cancellation is completed.
        """
        self._check_running()
        if self._cancel_reason is not None and self.phase is Phase.EXECUTION:
            self._cancel_now()
        state = self._phases.get_state(self.id)
        try:
            if state.phase is Phase.CANCELLING:
                self._phases.complete_cancellation(self.id)
                raise WorkflowCancelled(self.id, state.reason)
            if state.phase is Phase.PAUSING:
                self._phases.complete_pause(self.id, self._checkpoint_id or f"{self.id}-pause")
            elif state.phase is Phase.RESUMING:
                self._phases.complete_resume(self.id)
        except PhaseError:
            pass  # a hub command moved it meanwhile: look again
        else:
            if state.phase not in (Phase.PAUSING, Phase.RESUMING):
                return state.phase is Phase.PAUSED
        return True


def _record_exception(
    span: Span,
    exc: BaseException,
    text: str,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> None:
    """``span.record_exception``, which calls ``str(exc)``: an exception whose ``__str__``
    raises is recorded with ``text`` (from ``describe_error``) instead of raising."""
    try:
        span.record_exception(exc, attributes)
    except Exception:
        span.add_event(
            "exception",
            {
                "exception.type": type(exc).__name__,
                "exception.message": text,
                **(attributes or {}),
            },
        )


class _Listener:
    """A run's ``WorkflowListener`` (``otel/tracking.py``): the tracker tells it what happens
    to the run's workflow id."""

    __slots__ = ("_run",)

    def __init__(self, run: WorkflowBase) -> None:
        # Weak: the run holds its listener, and a cycle would leave each ended run, its span
        # and its events to the garbage collector instead of freeing them at once.
        self._run = weakref.ref(run)

    def phase_changed(self, state: PhaseState) -> None:
        """Called under the phase manager's lock: only wake waiters here."""
        run = self._run()
        if run is not None:
            run._notify()

    def command(self, event: CommandEvent) -> None:
        run = self._run()
        if run is not None:
            run._on_command(event)


def _inherited_ids() -> tuple[str, str]:
    """(parent, root) from the enclosing workflow, else from W3C baggage (another process)."""
    current = current_run()
    if current is not None:
        return current.id, current.root_id
    entries = _baggage().get_all()  # one read of the context for both
    parent = entries.get(attr.BAGGAGE_WORKFLOW_ID)
    root = entries.get(attr.BAGGAGE_ROOT_ID)
    return (
        parent if isinstance(parent, str) else "",
        root if isinstance(root, str) else "",
    )
