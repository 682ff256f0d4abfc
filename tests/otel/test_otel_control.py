"""Cooperative control: the hub's pause, resume and cancel honoured at ``safe_point()``.

The hub sends real commands over the real connection; the workflow code meets them at its safe
points. Operators run on their own thread (or task) and synchronise with ``hub.wait_for``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.conftest import OTEL_TIMEOUT
from tests.otel.conftest import history, wait_phase, wait_state
from when_coordinator import (
    AsyncWorkflow,
    CommandEvent,
    Coordinator,
    Phase,
    PhaseError,
    PhaseManager,
    PhaseState,
    current_workflow,
    workflow,
)
from when_coordinator.hub import ThreadedHub, WorkflowState


def transitions_once(hub: ThreadedHub, workflow_id: str) -> None:
    """Every (from, to) the hub received for the workflow, exactly once."""
    counts = Counter(
        (m.message.payload["from"], m.message.payload["to"])
        for m in hub.received
        if m.message.type == "phase_changed" and m.message.workflow_id == workflow_id
    )
    assert counts
    assert set(counts.values()) == {1}, counts


class Operator:
    """Steps run on a thread against the hub; a failure is kept and the workflow is cancelled,
    so a workflow blocked at a safe point is released and the test fails instead of hanging."""

    def __init__(self, hub: ThreadedHub, workflow_id: str, *steps: Callable[[], object]) -> None:
        self.hub = hub
        self.workflow_id = workflow_id
        self.steps = steps
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        try:
            for step in self.steps:
                step()
        except BaseException as exc:
            self.error = exc
            self.hub.cancel(self.workflow_id, "operator failed")

    def __enter__(self) -> Operator:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(OTEL_TIMEOUT)
        assert not self.thread.is_alive(), "the operator did not finish"
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------------- pause and resume


def test_pause_completes_with_the_latest_checkpoint_and_blocks_until_resumed(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    hub = otel_hub
    with workflow("pausable", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wf.checkpoint("cp-1")
        wf.checkpoint("cp-2", "after batch 2")
        wait_phase(hub, wf.id, "execution")
        hub.pause(wf.id, "maintenance window")
        wait_phase(hub, wf.id, "pausing")
        assert wf.pause_requested
        assert wf.phase is Phase.PAUSING  # nothing happens until the code says it is safe

        seen_paused: list[WorkflowState] = []
        with Operator(
            hub,
            wf.id,
            lambda: seen_paused.append(wait_phase(hub, wf.id, "paused")),
            lambda: hub.resume(wf.id, "cp-2"),
        ):
            wf.safe_point()  # completes the pause, blocks, completes the resume
        assert wf.state.phase is Phase.EXECUTION
        assert not wf.pause_requested
        assert seen_paused[0].checkpoint_id == "cp-2"
        wf.progress(100, "done")

    state = wait_phase(hub, wf.id, "completed")
    assert history(state) == [
        "pre-flight",
        "planning",
        "execution",
        "pausing",
        "paused",
        "resuming",
        "execution",
        "completing",
        "completed",
    ]
    by_phase = {c.to_phase.value: c for c in state.history}
    assert by_phase["pausing"].reason == "maintenance window"
    assert by_phase["paused"].reason == "maintenance window"
    assert by_phase["paused"].checkpoint_id == "cp-2"
    assert by_phase["resuming"].reason == "resume requested"
    assert state.history[6].reason == "resumed"
    transitions_once(hub, wf.id)
    (span,) = span_exporter.get_finished_spans()
    phases = [
        e.attributes["when.phase.to"]
        for e in span.events
        if e.attributes and e.name == "when.phase_changed"
    ]
    assert phases == history(state)


def test_pause_without_a_checkpoint_completes_with_a_made_up_one(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub
    with workflow("no-cp", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wait_phase(hub, wf.id, "execution")
        hub.pause(wf.id)
        wait_phase(hub, wf.id, "pausing")
        with Operator(
            hub, wf.id, lambda: wait_phase(hub, wf.id, "paused"), lambda: hub.resume(wf.id)
        ):
            wf.safe_point()
    state = wait_phase(hub, wf.id, "completed")
    paused = [c for c in state.history if c.to_phase is Phase.PAUSED]
    assert len(paused) == 1
    assert paused[0].checkpoint_id


async def test_async_safe_point_awaits_without_blocking_the_loop(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub

    async def operator(workflow_id: str) -> None:
        # Runs on the workflow's own loop: it can only finish if safe_point() yields the loop.
        await asyncio.to_thread(wait_phase, hub, workflow_id, "paused")
        await asyncio.to_thread(hub.resume, workflow_id)

    async with workflow(
        "async-pausable", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        wf.checkpoint("cp-a")
        await asyncio.to_thread(wait_phase, hub, wf.id, "execution")
        await asyncio.to_thread(hub.pause, wf.id, "hold on")
        await asyncio.to_thread(wait_phase, hub, wf.id, "pausing")
        resumer = asyncio.create_task(operator(wf.id))
        await asyncio.wait_for(wf.safe_point(), OTEL_TIMEOUT)
        await asyncio.wait_for(resumer, OTEL_TIMEOUT)
        assert wf.phase is Phase.EXECUTION
    workflow_id = wf.id
    state = wait_phase(hub, workflow_id, "completed")
    assert history(state)[3:7] == ["pausing", "paused", "resuming", "execution"]
    assert state.history[4].checkpoint_id == "cp-a"
    transitions_once(hub, workflow_id)


def test_an_unanswered_pause_is_settled_when_the_code_ends(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub
    with workflow(
        "no-safe-point", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        wf.checkpoint("cp-last")
        wait_phase(hub, wf.id, "execution")
        hub.pause(wf.id, "too late")
        wait_phase(hub, wf.id, "pausing")
    state = wait_phase(hub, wf.id, "completed")
    assert history(state)[3:] == [
        "pausing",
        "paused",
        "resuming",
        "execution",
        "completing",
        "completed",
    ]
    transitions_once(hub, wf.id)


# ---------------------------------------------------------------------- cancel


def test_cancel_at_a_safe_point_ends_the_workflow_cancelled_not_failed(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    hub = otel_hub
    after_safe_point = False
    with workflow(
        "cancellable", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        wait_phase(hub, wf.id, "execution")
        hub.cancel(wf.id, "operator said stop")
        wait_phase(hub, wf.id, "cancelling")
        assert wf.cancel_requested
        wf.safe_point()
        after_safe_point = True  # pragma: no cover - never reached
    assert not after_safe_point
    assert wf.phase is Phase.CANCELLED

    state = wait_phase(hub, wf.id, "cancelled")
    assert history(state) == ["pre-flight", "planning", "execution", "cancelling", "cancelled"]
    assert state.history[3].reason == "operator said stop"
    assert state.errors == ()
    (span,) = span_exporter.get_finished_spans()
    assert span.status.status_code is not StatusCode.ERROR
    assert (span.attributes or {})["when.workflow.phase"] == "cancelled"
    transitions_once(hub, wf.id)


def test_cancel_while_paused_releases_the_safe_point(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub

    @workflow(
        "paused-then-cancelled", coordinator=otel_coordinator, tracer_provider=tracer_provider
    )
    def job() -> str:
        wf = current_workflow()
        assert wf is not None
        wait_phase(hub, wf.id, "execution")
        hub.pause(wf.id)
        wait_phase(hub, wf.id, "pausing")
        ids.append(wf.id)
        with Operator(
            hub,
            wf.id,
            lambda: wait_phase(hub, wf.id, "paused"),
            lambda: hub.cancel(wf.id, "abandon"),
        ):
            wf.safe_point()  # raises WorkflowCancelled, which the workflow turns into "cancelled"
        return "unreachable"  # pragma: no cover

    ids: list[str] = []
    assert job() is None
    state = wait_phase(hub, ids[0], "cancelled")
    assert history(state)[3:] == ["pausing", "paused", "cancelling", "cancelled"]
    transitions_once(hub, ids[0])


async def test_async_cancel_ends_a_decorated_coroutine_with_none(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub
    ids: list[str] = []

    @workflow("async-cancellable", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    async def job() -> str:
        wf = current_workflow()
        assert isinstance(wf, AsyncWorkflow)
        ids.append(wf.id)
        await asyncio.to_thread(wait_phase, hub, wf.id, "execution")
        await asyncio.to_thread(hub.cancel, wf.id, "stop")
        await asyncio.to_thread(wait_phase, hub, wf.id, "cancelling")
        await wf.safe_point()
        return "unreachable"  # pragma: no cover

    assert await job() is None
    state = wait_phase(hub, ids[0], "cancelled")
    assert history(state)[3:] == ["cancelling", "cancelled"]


def test_a_parent_cancellation_propagates_through_a_child_and_stops_at_the_parent(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    hub = otel_hub
    options: dict[str, Any] = {"coordinator": otel_coordinator, "tracer_provider": tracer_provider}
    reached_parent_end = False
    with workflow("parent", **options) as parent:
        with workflow("child", **options) as child:
            wait_phase(hub, parent.id, "execution")
            hub.cancel(parent.id, "stop all")
            wait_phase(hub, parent.id, "cancelling")
            parent.safe_point()  # raised through the child
        reached_parent_end = True  # pragma: no cover - never reached
    assert not reached_parent_end
    assert wait_phase(hub, parent.id, "cancelled").errors == ()
    # The child is cancelled too where the table allows it (it was in execution).
    assert history(wait_phase(hub, child.id, "cancelled"))[3:] == ["cancelling", "cancelled"]


# ---------------------------------------------------------------------- cancel before execution


class HoldInPlanning(PhaseManager):
    """A real phase manager that calls ``hook`` when a workflow has just reached planning,
    on the workflow's thread and outside the manager's lock: the workflow stays in planning
    until the hook returns."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Callable[[PhaseState], None] = lambda state: None

    def transition_to(self, workflow_id: str, phase: Phase | str, reason: str = "") -> PhaseState:
        state = super().transition_to(workflow_id, phase, reason)
        if state.phase is Phase.PLANNING:
            self.hook(state)
        return state


class HoldAtSpanStart(SpanProcessor):
    """Calls ``hook`` when a span starts: a workflow's span starts while it is still pending."""

    def __init__(self, hook: Callable[[Span], None]) -> None:
        self.hook = hook

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.hook(span)

    def on_end(self, span: ReadableSpan) -> None:
        pass


@pytest.mark.parametrize("held_in", ["planning", "pending"])
def test_a_cancel_that_arrives_before_execution_is_honoured_once_execution_is_reached(
    held_in: str,
    otel_hub: ThreadedHub,
    otel_connect: Callable[..., Coordinator],
    span_exporter: InMemorySpanExporter,
) -> None:
    """The hub's cancel reaches the service while the workflow is held in ``held_in``; the
    phase table refuses it there (cancel is only allowed from execution on), and the workflow
    still honours it: it enters its body already cancelling and ends cancelled."""
    hub = otel_hub
    phases = HoldInPlanning()
    coordinator = otel_connect(phases=phases)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    run = workflow("early-cancel", coordinator=coordinator, tracer_provider=provider).new()
    # The handle exists, so the workflow layer's command listener runs before this one.
    refused = threading.Event()

    def on_command(event: CommandEvent) -> None:
        if event.type == "cancel" and not event.accepted:
            refused.set()

    unsubscribe = coordinator.on_command(on_command)
    seen: list[Phase] = []

    def cancel_now(workflow_id: str) -> None:
        wait_state(hub, workflow_id, lambda state: state.announced)
        hub.cancel(workflow_id, "called off early")
        assert refused.wait(OTEL_TIMEOUT), "the coordinator never saw the cancel"
        seen.append(phases.get_phase(workflow_id))

    if held_in == "planning":
        phases.hook = lambda state: cancel_now(state.workflow_id)
    else:
        provider.add_span_processor(HoldAtSpanStart(lambda span: cancel_now(run.id)))

    body_ran = False
    with run as wf:
        assert seen == [Phase(held_in)]
        assert wf.cancel_requested
        assert wf.phase is Phase.CANCELLING
        body_ran = True
        wf.safe_point()
    unsubscribe()
    assert body_ran
    assert wf.phase is Phase.CANCELLED

    state = wait_phase(hub, wf.id, "cancelled")
    assert history(state) == ["pre-flight", "planning", "execution", "cancelling", "cancelled"]
    assert state.history[3].reason == "called off early"
    assert state.errors == ()
    transitions_once(hub, wf.id)


class RefuseSlowly(HoldInPlanning):
    """Interposes on the first cancel: when the phase table refuses it, lets ``on_refused``
    run (the workflow moves on meanwhile) before the refusal reaches the coordinator."""

    def __init__(self) -> None:
        super().__init__()
        self.on_refused: Callable[[], None] = lambda: None
        self._armed = True

    def cancel(self, workflow_id: str, reason: str = "") -> PhaseState:
        try:
            return super().cancel(workflow_id, reason)
        except PhaseError:
            if self._armed:
                self._armed = False
                self.on_refused()
            raise


def test_a_cancel_refused_just_before_execution_is_not_lost(
    otel_hub: ThreadedHub, otel_connect: Callable[..., Coordinator], tracer_provider: TracerProvider
) -> None:
    """The race at the execution boundary: the cancel is refused in planning, and by the time
    the workflow layer hears of the refusal the workflow is already executing its body."""
    hub = otel_hub
    phases = RefuseSlowly()
    coordinator = otel_connect(phases=phases)
    run = workflow("boundary", coordinator=coordinator, tracer_provider=tracer_provider).new()
    refused = threading.Event()
    body_started = threading.Event()

    def on_refused() -> None:  # on the client's thread, inside the refused cancel
        refused.set()
        assert body_started.wait(OTEL_TIMEOUT)

    def in_planning(state: PhaseState) -> None:  # on the workflow's thread, held in planning
        wait_state(hub, state.workflow_id, lambda s: s.announced)
        hub.cancel(state.workflow_id, "right at the edge")
        assert refused.wait(OTEL_TIMEOUT)

    phases.on_refused = on_refused
    phases.hook = in_planning
    with run as wf:
        assert not wf.cancel_requested  # the refusal has not been heard of yet
        body_started.set()
        wait_phase(hub, wf.id, "cancelling")
        assert wf.cancel_requested
        wf.safe_point()
    state = wait_phase(hub, wf.id, "cancelled")
    assert state.history[3].reason == "right at the edge"
    transitions_once(hub, wf.id)


async def test_an_asyncio_task_cancellation_ends_the_workflow_cancelled_and_propagates(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    ids: list[str] = []

    started = asyncio.Event()

    async def job() -> None:
        async with workflow(
            "task-cancelled", coordinator=otel_coordinator, tracer_provider=tracer_provider
        ) as wf:
            ids.append(wf.id)
            started.set()
            await asyncio.Event().wait()  # until the task is cancelled

    task = asyncio.create_task(job())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    state = wait_phase(otel_hub, ids[0], "cancelled")
    assert history(state)[3:] == ["cancelling", "cancelled"]
    assert state.errors == ()
