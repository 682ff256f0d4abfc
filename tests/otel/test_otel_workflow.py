"""``workflow()``: context managers, decorators, the auto lifecycle, the handle's methods, and
how a run maps to its span, against a real hub, a real ``Coordinator`` and the real SDK."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.conftest import OTEL_TIMEOUT
from tests.otel.conftest import history, wait_phase, wait_state
from tests.support.collector import collector_off
from when_coordinator import (
    AsyncWorkflow,
    Coordinator,
    Phase,
    PhaseError,
    Workflow,
    current_workflow,
    workflow,
)
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import attributes as attr
from when_coordinator.otel._base import WorkflowBase, _new_workflow_id

LIFECYCLE = ["pre-flight", "planning", "execution", "completing", "completed"]


def span_of(exporter: InMemorySpanExporter, workflow_id: str) -> ReadableSpan:
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if (s.attributes or {}).get(attr.WORKFLOW_ID) == workflow_id
    ]
    return span


def phase_events(span: ReadableSpan) -> list[tuple[str, str, str, str]]:
    return [
        (
            str(e.attributes[attr.PHASE_FROM]),
            str(e.attributes[attr.PHASE_TO]),
            str(e.attributes[attr.PHASE_REASON]),
            str(e.attributes[attr.PHASE_CHECKPOINT_ID]),
        )
        for e in span.events
        if e.name == attr.PHASE_CHANGED_EVENT and e.attributes is not None
    ]


# ---------------------------------------------------------------------- context managers


def test_with_block_runs_the_auto_lifecycle_and_completes(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with workflow(
        "nightly-etl", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        assert isinstance(wf, Workflow)
        assert wf.phase is Phase.EXECUTION
        assert wf.id.startswith("wf-")
        assert wf.parent_id == ""
        assert wf.root_id == wf.id
        assert wf.span.is_recording()
        assert trace.get_current_span() is wf.span
        assert current_workflow() is wf
        assert not wf.pause_requested
        assert not wf.cancel_requested
    assert wf.phase is Phase.COMPLETED
    assert current_workflow() is None
    assert trace.get_current_span() is not wf.span

    state = wait_phase(otel_hub, wf.id, "completed")
    assert history(state) == LIFECYCLE
    assert [c.reason for c in state.history] == [
        "workflow started",
        "planning",
        "executing",
        "completing",
        "completed successfully",
    ]
    assert state.action_type == "nightly-etl"
    assert state.root_workflow_id == wf.id
    span = span_of(span_exporter, wf.id)
    assert span.name == "nightly-etl"
    assert span.status.status_code is not StatusCode.ERROR
    with pytest.raises(RuntimeError, match="not running"):
        wf.progress(10)


async def test_async_with_runs_the_auto_lifecycle(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
) -> None:
    async with workflow(
        "async-etl", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        assert isinstance(wf, AsyncWorkflow)
        assert wf.phase is Phase.EXECUTION
        assert current_workflow() is wf
        await asyncio.sleep(0)
        assert current_workflow() is wf
        wf.progress(50, "halfway")
        await wf.safe_point()  # nothing asked: returns at once
    assert current_workflow() is None

    state = wait_phase(otel_hub, wf.id, "completed")
    assert history(state) == LIFECYCLE
    assert state.progress == 50
    assert state.stage == "halfway"


def test_explicit_ids_action_and_attributes_reach_hub_and_span(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with workflow(
        "import",
        workflow_id="wf-import-7",
        action_id="act-7",
        action_type="csv-import",
        attributes={"tenant": "acme"},
        coordinator=otel_coordinator,
        tracer_provider=tracer_provider,
    ) as wf:
        assert wf.id == "wf-import-7"
        with (
            pytest.raises(ValueError, match="already running"),
            workflow(
                "again",
                workflow_id="wf-import-7",
                coordinator=otel_coordinator,
                tracer_provider=tracer_provider,
            ),
        ):
            pass  # pragma: no cover - never entered
    state = wait_phase(otel_hub, "wf-import-7", "completed")
    assert state.action_id == "act-7"
    assert state.action_type == "csv-import"
    attributes = span_of(span_exporter, "wf-import-7").attributes or {}
    assert attributes[attr.ACTION_ID] == "act-7"
    assert attributes[attr.ACTION_TYPE] == "csv-import"
    assert attributes["tenant"] == "acme"


# ---------------------------------------------------------------------- decorators


def test_decorated_function_is_a_new_workflow_per_call(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    runs: list[Workflow | AsyncWorkflow] = []

    @workflow("add", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    def add(x: int, *, y: int) -> int:
        """Adds."""
        wf = current_workflow()
        assert wf is not None
        assert wf.phase is Phase.EXECUTION
        runs.append(wf)
        return x + y

    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert add(1, y=2) == 3
    assert add(3, y=4) == 7
    assert len(runs) == 2
    assert runs[0].id != runs[1].id
    for run in runs:
        assert isinstance(run, Workflow)
        assert history(wait_phase(otel_hub, run.id, "completed")) == LIFECYCLE


def test_decorated_coroutine(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    runs: list[Workflow | AsyncWorkflow] = []

    @workflow("fetch", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    async def fetch(n: int) -> list[int]:
        wf = current_workflow()
        assert isinstance(wf, AsyncWorkflow)
        runs.append(wf)
        await asyncio.sleep(0)
        await wf.safe_point()
        return list(range(n))

    assert asyncio.run(fetch(3)) == [0, 1, 2]
    (run,) = runs
    assert history(wait_phase(otel_hub, run.id, "completed")) == LIFECYCLE


def test_decorated_generator_attaches_its_context_only_while_it_runs(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    runs: list[Workflow | AsyncWorkflow] = []

    @workflow("numbers", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    def numbers(n: int) -> Generator[int, str | None, None]:
        wf = current_workflow()
        assert isinstance(wf, Workflow)
        runs.append(wf)
        for i in range(n):
            assert current_workflow() is wf
            wf.progress(100 * (i + 1) / n, "counting")
            received = yield i
            assert received is None or received == "hello"

    gen = numbers(3)
    assert runs == []  # nothing starts before the first step
    assert next(gen) == 0
    (run,) = runs
    assert run.phase is Phase.EXECUTION
    assert current_workflow() is None  # suspended: not attached to the consumer
    assert trace.get_current_span() is not run.span
    assert gen.send("hello") == 1
    assert list(gen) == [2]
    assert run.state.phase is Phase.COMPLETED
    state = wait_phase(otel_hub, run.id, "completed")
    assert history(state) == LIFECYCLE
    assert state.progress == 100


async def test_decorated_async_generator(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    runs: list[Workflow | AsyncWorkflow] = []

    @workflow("stream", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    async def stream(n: int) -> AsyncIterator[int]:
        wf = current_workflow()
        assert isinstance(wf, AsyncWorkflow)
        runs.append(wf)
        for i in range(n):
            await wf.safe_point()
            yield i

    items = []
    async for item in stream(3):
        assert current_workflow() is None
        items.append(item)
    assert items == [0, 1, 2]
    (run,) = runs
    assert history(wait_phase(otel_hub, run.id, "completed")) == LIFECYCLE


# ---------------------------------------------------------------------- failures


def _failing(kind: str, error: BaseException, **options: Any) -> Callable[[], object]:
    """A callable that runs a workflow of ``kind`` raising ``error`` inside."""
    definition = workflow(f"failing-{kind}", **options)
    if kind == "with":

        def run_with() -> None:
            with definition:
                raise error

        return run_with
    if kind == "function":

        @definition
        def function() -> None:
            raise error

        return function
    if kind == "coroutine":

        @definition
        async def coroutine() -> None:
            await asyncio.sleep(0)
            raise error

        return lambda: asyncio.run(coroutine())
    if kind == "generator":

        @definition
        def generator() -> Iterator[int]:
            yield 1
            raise error

        return lambda: list(generator())
    assert kind == "async generator"

    @definition
    async def agen() -> AsyncIterator[int]:
        yield 1
        raise error

    async def consume() -> None:
        async for _ in agen():
            pass

    return lambda: asyncio.run(consume())


@pytest.mark.parametrize("kind", ["with", "function", "coroutine", "generator", "async generator"])
def test_an_exception_fails_the_workflow_and_is_reraised_unchanged(
    kind: str,
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    boom = KeyError("no such row")
    run = _failing(kind, boom, coordinator=otel_coordinator, tracer_provider=tracer_provider)
    with pytest.raises(KeyError) as caught:
        run()
    assert caught.value is boom
    assert caught.value.__traceback__ is not None

    (span,) = span_exporter.get_finished_spans()
    workflow_id = str((span.attributes or {})[attr.WORKFLOW_ID])
    assert span.status.status_code is StatusCode.ERROR
    assert "no such row" in (span.status.description or "")
    assert any(e.name == "exception" for e in span.events)
    assert (span.attributes or {})[attr.PHASE] == "failed"

    state = wait_state(
        otel_hub, workflow_id, lambda s: s.phase is Phase.FAILED and len(s.errors) > 0
    )
    assert history(state) == ["pre-flight", "planning", "execution", "failed"]
    (error,) = state.errors
    assert error.error == "KeyError: 'no such row'"
    assert error.recoverable is False
    assert state.reason == "KeyError: 'no such row'"


# ---------------------------------------------------------------------- the handle


def test_progress_checkpoint_error_and_transition(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with workflow("report", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wf.progress(25, stage="extract", message="reading", current_item=1, total_items=4)
        assert wf.checkpoint("cp-extract", "after extract", state={"offset": 100}) == "cp-extract"
        generated = wf.checkpoint(reason="auto id")
        assert generated
        assert generated != "cp-extract"
        wf.error("source flaked, retrying", recoverable=True)
        assert wf.phase is Phase.EXECUTION  # a recoverable error does not end the workflow

        state = wait_state(
            otel_hub, wf.id, lambda s: len(s.checkpoints) == 2 and len(s.errors) == 1
        )
        assert (state.progress, state.stage, state.message) == (25, "extract", "reading")
        assert (state.current_item, state.total_items) == (1, 4)
        assert [c.checkpoint_id for c in state.checkpoints] == ["cp-extract", generated]
        assert state.checkpoints[0].state == {"offset": 100}
        assert state.checkpoints[0].reason == "after extract"
        assert (state.errors[0].error, state.errors[0].recoverable) == (
            "source flaked, retrying",
            True,
        )

        with pytest.raises(PhaseError):
            wf.transition(Phase.PAUSED)  # not allowed from execution
        wf.transition(Phase.COMPLETING, "wrapping up")
        assert wf.state.phase is Phase.COMPLETING

    state = wait_phase(otel_hub, wf.id, "completed")
    assert history(state) == LIFECYCLE
    assert state.history[3].reason == "wrapping up"
    # The latest checkpoint travels on every later phase change.
    assert [c.checkpoint_id for c in state.history[3:]] == [generated, generated]
    span = span_of(span_exporter, wf.id)
    names = [e.name for e in span.events]
    assert names.count(attr.CHECKPOINT_EVENT) == 2
    assert names.count(attr.ERROR_EVENT) == 1
    assert span.status.status_code is not StatusCode.ERROR


class Unprintable(Exception):
    """An exception whose ``str()`` raises (a broken ``__str__`` in application code)."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_an_error_whose_text_cannot_be_made_never_raises_into_the_caller(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with workflow("odd", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wf.error(Unprintable())  # raised RuntimeError into this block before
        wf.error(Unprintable(), recoverable=True)
        assert otel_coordinator.send_error(wf.id, "act", Unprintable(), True)
        wf_id = wf.id
    state = wait_state(otel_hub, wf_id, lambda s: s.phase is Phase.COMPLETED and len(s.errors) == 3)
    assert {e.error for e in state.errors} == {"Unprintable: <str() failed>"}
    span = span_of(span_exporter, wf_id)
    assert [e.name for e in span.events].count("exception") == 2

    # Raised out of the block, it fails the workflow and comes out unchanged.
    boom = Unprintable()
    ids: list[str] = []

    def fail() -> None:
        with workflow("odder", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
            ids.append(wf.id)
            raise boom

    with pytest.raises(Unprintable) as caught:
        fail()
    assert caught.value is boom
    wf_id = ids[0]
    state = wait_state(otel_hub, wf_id, lambda s: s.phase is Phase.FAILED and len(s.errors) == 1)
    assert state.errors[0].error == "Unprintable: <str() failed>"


# ---------------------------------------------------------------------- nesting


def test_nested_workflows_take_parent_and_root_from_the_context(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    options: dict[str, Any] = {"coordinator": otel_coordinator, "tracer_provider": tracer_provider}
    with workflow("outer", **options) as outer:
        with workflow("middle", **options) as middle:
            with workflow("inner", **options) as inner:
                assert current_workflow() is inner
            assert current_workflow() is middle
        with workflow("sibling", **options) as sibling:
            pass
    assert (middle.parent_id, middle.root_id) == (outer.id, outer.id)
    assert (inner.parent_id, inner.root_id) == (middle.id, outer.id)
    assert (sibling.parent_id, sibling.root_id) == (outer.id, outer.id)

    wait_phase(otel_hub, outer.id, "completed")
    workflows = otel_hub.workflows
    assert workflows[inner.id].parent_workflow_id == middle.id
    assert workflows[inner.id].root_workflow_id == outer.id
    assert workflows[middle.id].parent_workflow_id == outer.id
    assert set(workflows[outer.id].children) == {middle.id, sibling.id}

    spans = {
        str((s.attributes or {})[attr.WORKFLOW_ID]): s for s in span_exporter.get_finished_spans()
    }
    outer_ctx = spans[outer.id].context
    assert outer_ctx is not None
    for child, parent in ((middle, outer), (inner, middle), (sibling, outer)):
        span = spans[child.id]
        parent_ctx = spans[parent.id].context
        assert span.parent is not None
        assert parent_ctx is not None
        assert span.parent.span_id == parent_ctx.span_id
        assert span.context is not None
        assert span.context.trace_id == outer_ctx.trace_id
        assert (span.attributes or {})[attr.WORKFLOW_PARENT_ID] == parent.id
        assert (span.attributes or {})[attr.WORKFLOW_ROOT_ID] == outer.id
    assert attr.WORKFLOW_PARENT_ID not in (spans[outer.id].attributes or {})


async def test_parallel_async_children_each_link_to_the_parent(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    options: dict[str, Any] = {"coordinator": otel_coordinator, "tracer_provider": tracer_provider}

    @workflow("child", **options)
    async def child(i: int) -> tuple[str, str, str]:
        wf = current_workflow()
        assert wf is not None
        for _ in range(3):
            await asyncio.sleep(0)  # interleave with the siblings
            assert current_workflow() is wf
        return wf.id, wf.parent_id, wf.root_id

    async with workflow("parent", **options) as parent:
        results = await asyncio.gather(*(child(i) for i in range(4)))
    parent_id = parent.id
    assert len({r[0] for r in results}) == 4
    assert all(r[1:] == (parent_id, parent_id) for r in results)
    state = wait_phase(otel_hub, parent_id, "completed")
    assert set(state.children) == {r[0] for r in results}


# ---------------------------------------------------------------------- live delivery


def test_the_hub_sees_execution_and_progress_while_the_workflow_runs(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    with workflow("live", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wait_phase(otel_hub, wf.id, "execution")
        wf.progress(42, "loading", "row 42")

        state = wait_state(otel_hub, wf.id, lambda s: s.progress == 42)
        assert (state.phase, state.stage, state.message) == (Phase.EXECUTION, "loading", "row 42")
        assert wf.phase is Phase.EXECUTION  # still inside the block
    wait_phase(otel_hub, wf.id, "completed")


def test_every_fact_reaches_the_hub_exactly_once(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    options: dict[str, Any] = {"coordinator": otel_coordinator, "tracer_provider": tracer_provider}
    ids = []
    for i in range(5):
        with workflow("batch", **options) as wf:
            ids.append(wf.id)
            with workflow("step", **options) as step:
                ids.append(step.id)
                step.progress(50)
            wf.checkpoint(f"cp-{i}")
    broken = workflow("broken", **options).new()

    def fail() -> None:
        with broken:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    ids.append(broken.id)
    # A last workflow on the same connection is a barrier: once the hub has it, it has all.
    with workflow("barrier", **options) as barrier:
        pass
    wait_phase(otel_hub, barrier.id, "completed")

    received = [r.message for r in otel_hub.received]
    changes = Counter(
        (m.workflow_id, m.payload["to"]) for m in received if m.type == "phase_changed"
    )
    created = Counter(m.workflow_id for m in received if m.type == "workflow_created")
    errors = Counter(m.workflow_id for m in received if m.type == "error")
    for workflow_id in ids:
        final = "failed" if workflow_id == broken.id else "completed"
        expected = [*LIFECYCLE[:3], final] if final == "failed" else LIFECYCLE
        assert {to: changes[(workflow_id, to)] for to in expected} == dict.fromkeys(expected, 1)
        assert created[workflow_id] == 1
        assert history(otel_hub.workflows[workflow_id]) == expected
    assert errors == {broken.id: 1}
    assert all(count == 1 for count in changes.values())


# ---------------------------------------------------------------------- span mapping


def test_span_carries_attributes_and_one_phase_event_per_transition(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with workflow("mapped", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        wf.progress(10, "extract")
        wf.progress(20, "extract")  # same stage: attributes only
        wf.progress(60, "load", "almost")
        wf.checkpoint("cp-load")
    state = wait_phase(otel_hub, wf.id, "completed")
    span = span_of(span_exporter, wf.id)
    attributes = span.attributes or {}
    assert attributes[attr.WORKFLOW_ID] == wf.id
    assert attributes[attr.WORKFLOW_NAME] == "mapped"
    assert attributes[attr.WORKFLOW_ROOT_ID] == wf.id
    assert attributes[attr.ACTION_TYPE] == "mapped"
    assert attributes[attr.PHASE] == "completed"
    assert attributes[attr.PROGRESS_PERCENT] == 60
    assert attributes[attr.PROGRESS_STAGE] == "load"

    at_hub = [
        (
            "" if c.from_phase is None else c.from_phase.value,
            c.to_phase.value,
            c.reason,
            c.checkpoint_id,
        )
        for c in state.history
    ]
    assert phase_events(span) == at_hub
    assert [e[:2] for e in at_hub] == [
        ("pending", "pre-flight"),
        ("pre-flight", "planning"),
        ("planning", "execution"),
        ("execution", "completing"),
        ("completing", "completed"),
    ]
    progress = [e.attributes for e in span.events if e.name == attr.PROGRESS_EVENT]
    assert [(p[attr.PROGRESS_STAGE], p[attr.PROGRESS_PERCENT]) for p in progress if p] == [
        ("extract", 10),
        ("load", 60),
    ]
    assert span.dropped_events == 0


def _many_progress_calls(coordinator: Coordinator, provider: TracerProvider) -> Workflow:
    with workflow("chatty", coordinator=coordinator, tracer_provider=provider) as wf:
        for i in range(200):
            wf.progress(i / 2, f"stage-{i}")
        wf.checkpoint("cp-end")
    return wf


def _check_event_budget(span: ReadableSpan, limit: int) -> None:
    assert span.dropped_events == 0
    assert len(span.events) <= limit
    assert [e[1] for e in phase_events(span)] == LIFECYCLE
    assert any(e.name == attr.CHECKPOINT_EVENT for e in span.events)
    assert any(e.name == attr.PROGRESS_EVENT for e in span.events)
    assert (span.attributes or {})[attr.PROGRESS_PERCENT] == 99.5
    assert (span.attributes or {})[attr.PROGRESS_STAGE] == "stage-199"


def test_progress_never_crowds_out_phase_events_under_provider_span_limits(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_events=16))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    wf = _many_progress_calls(otel_coordinator, provider)
    _check_event_budget(span_of(exporter, wf.id), 16)
    assert wait_phase(otel_hub, wf.id, "completed").progress == 99.5


def test_progress_never_crowds_out_phase_events_under_the_environment_limit(
    otel_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "12")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    wf = _many_progress_calls(otel_coordinator, provider)
    _check_event_budget(span_of(exporter, wf.id), 12)


def test_made_workflow_ids_are_random_uuids_and_a_forked_child_draws_its_own(
    otel_coordinator: Coordinator,
) -> None:
    """Ids come from a pool of random bytes (one system call per 256 workflows): still the
    shape of ``uuid.uuid4().hex``, and a child process does not repeat its parent's."""
    made = []
    for _ in range(300):  # more than one pool
        with workflow("ids", coordinator=otel_coordinator) as wf:
            made.append(wf.id)
    assert len(set(made)) == len(made)
    for made_id in made:
        assert made_id.startswith("wf-")
        as_uuid = uuid.UUID(made_id[3:])
        assert (as_uuid.version, as_uuid.variant, as_uuid.hex) == (4, uuid.RFC_4122, made_id[3:])
    if not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the next ids it makes, to the parent
        try:
            os.write(write, ",".join(_new_workflow_id() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [_new_workflow_id() for _ in range(4)]
    assert len(child) == 4
    assert not set(child) & set(parent)


# ---------------------------------------------------------------------- memory


def _ended_run(kind: str, coordinator: Coordinator, provider: TracerProvider) -> WorkflowBase:
    if kind == "failed":
        try:  # not ``pytest.raises``: its record of the exception holds this frame, and ``wf``
            with workflow("leaky", coordinator=coordinator, tracer_provider=provider) as wf:
                raise KeyError("boom")
        except KeyError:
            pass
        assert wf.phase is Phase.FAILED
        return wf
    if kind == "generator":
        made: list[Workflow] = []

        @workflow("leaky", coordinator=coordinator, tracer_provider=provider)
        def steps() -> Iterator[int]:
            run = current_workflow()
            assert isinstance(run, Workflow)
            made.append(run)
            yield 1

        assert list(steps()) == [1]
        return made.pop()
    with workflow("leaky", coordinator=coordinator, tracer_provider=provider) as wf:
        wf.checkpoint("cp-1")
    return wf


@pytest.mark.parametrize("kind", ["completed", "failed", "generator"])
def test_an_ended_run_is_freed_by_reference_counting_not_left_to_the_collector(
    kind: str, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    """A run, its span and its events are freed when the last reference goes: a reference
    cycle through the run (its listener, its context) left every one of them, hundreds of
    objects a second in a busy worker, for the collector."""
    freed = threading.Event()
    with collector_off():
        weakref.finalize(_ended_run(kind, otel_coordinator, tracer_provider), freed.set)
        # Not always at once: a wake-up of the client's thread sent while the run was current
        # (its ``error``) holds a copy of the context until that thread has run it.
        assert freed.wait(OTEL_TIMEOUT)
