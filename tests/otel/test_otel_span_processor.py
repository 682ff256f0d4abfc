"""``CoordinationSpanProcessor``: spans started by anyone become coordination traffic."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from tests.otel.conftest import history, wait_phase
from when_coordinator import Config, Coordinator, Phase, workflow
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import CoordinationSpanProcessor
from when_coordinator.otel import attributes as attr

LIFECYCLE = ["pre-flight", "planning", "execution", "completing", "completed"]


def received(hub: ThreadedHub, kind: str) -> Counter[str]:
    return Counter(r.message.workflow_id for r in hub.received if r.message.type == kind)


@pytest.fixture
def processor(otel_coordinator: Coordinator) -> CoordinationSpanProcessor:
    return CoordinationSpanProcessor(otel_coordinator)


@pytest.fixture
def provider(
    processor: CoordinationSpanProcessor, span_exporter: InMemorySpanExporter
) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


# ---------------------------------------------------------------------- raw workflow spans


def test_a_raw_span_with_a_workflow_id_becomes_a_workflow_and_settles_when_it_ends(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    processor: CoordinationSpanProcessor,
    provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    tracer = provider.get_tracer("some.library")
    with tracer.start_as_current_span(
        "raw-import",
        attributes={
            attr.WORKFLOW_ID: "wf-raw-1",
            attr.WORKFLOW_PARENT_ID: "wf-upstream",
            attr.WORKFLOW_ROOT_ID: "wf-root",
            attr.ACTION_ID: "act-9",
        },
    ):
        state = wait_phase(otel_hub, "wf-raw-1", "execution")  # live, while the span runs
        assert otel_coordinator.phases.get_phase("wf-raw-1") is Phase.EXECUTION
        assert (state.parent_workflow_id, state.root_workflow_id) == ("wf-upstream", "wf-root")
        assert (state.action_id, state.action_type) == ("act-9", "raw-import")
    state = wait_phase(otel_hub, "wf-raw-1", "completed")
    assert history(state) == LIFECYCLE
    assert received(otel_hub, "workflow_created")["wf-raw-1"] == 1
    assert processor.errors == 0
    (span,) = span_exporter.get_finished_spans()
    phases = [
        e.attributes[attr.PHASE_TO]
        for e in span.events
        if e.name == attr.PHASE_CHANGED_EVENT and e.attributes
    ]
    assert phases == ["pre-flight", "planning", "execution"]  # the rest came after it ended


def test_a_raw_workflow_span_ending_with_an_exception_fails_the_workflow(
    otel_hub: ThreadedHub, processor: CoordinationSpanProcessor, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.library")
    with (
        pytest.raises(ZeroDivisionError),
        tracer.start_as_current_span("raw-divide", attributes={attr.WORKFLOW_ID: "wf-raw-2"}),
    ):
        _ = 1 / 0
    state = wait_phase(otel_hub, "wf-raw-2", "failed")
    assert history(state) == ["pre-flight", "planning", "execution", "failed"]
    assert "division by zero" in state.reason
    assert processor.errors == 0


def test_a_raw_workflow_span_with_error_status_fails_with_its_description(
    otel_hub: ThreadedHub, provider: TracerProvider
) -> None:
    span = provider.get_tracer("x").start_span("raw", attributes={attr.WORKFLOW_ID: "wf-raw-3"})
    span.set_status(Status(StatusCode.ERROR, "upstream said no"))
    span.end()
    state = wait_phase(otel_hub, "wf-raw-3", "failed")
    assert state.reason == "upstream said no"


def test_workflow_spans_register_themselves_so_nothing_is_sent_twice(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    processor: CoordinationSpanProcessor,
    provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with (
        workflow("ours", coordinator=otel_coordinator, tracer_provider=provider) as wf,
        workflow("child", coordinator=otel_coordinator, tracer_provider=provider) as child,
    ):
        assert child.parent_id == wf.id
    wait_phase(otel_hub, wf.id, "completed")
    created = received(otel_hub, "workflow_created")
    assert created[wf.id] == 1
    assert created[child.id] == 1
    changes = Counter(
        (r.message.workflow_id, r.message.payload["to"])
        for r in otel_hub.received
        if r.message.type == "phase_changed"
    )
    assert all(changes[(w, to)] == 1 for w in (wf.id, child.id) for to in LIFECYCLE)
    for span in span_exporter.get_finished_spans():
        events = [e.name for e in span.events]
        assert events.count(attr.PHASE_CHANGED_EVENT) == 5
    assert processor.errors == 0


# ---------------------------------------------------------------------- current action


def test_nested_spans_become_the_current_action(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    processor: CoordinationSpanProcessor,
    provider: TracerProvider,
) -> None:
    tracer = provider.get_tracer("app")
    with workflow("etl", coordinator=otel_coordinator, tracer_provider=provider) as wf:
        wait_phase(otel_hub, wf.id, "execution")
        assert otel_hub.status(wf.id).current_action == ""
        with tracer.start_as_current_span("extract"):
            status = otel_hub.status(wf.id)
            assert (status.phase, status.current_action) == (Phase.EXECUTION, "extract")
            wf.progress(10)  # no stage: the current action is the stage
            with tracer.start_as_current_span("parse"):
                assert otel_hub.status(wf.id).current_action == "parse"
                wf.progress(20, message="parsing")
            assert otel_hub.status(wf.id).current_action == "extract"
            wf.progress(30, "explicit stage")
        assert otel_hub.status(wf.id).current_action == ""
        assert otel_hub.status(wf.id).progress == 30
    wait_phase(otel_hub, wf.id, "completed")
    stages = [
        (r.message.payload["percent"], r.message.payload.get("stage", ""))
        for r in otel_hub.received
        if r.message.type == "progress" and r.message.workflow_id == wf.id
    ]
    assert stages == [(10, "extract"), (20, "parse"), (30, "explicit stage")]
    assert processor.errors == 0


def test_spans_nested_in_a_raw_workflow_span_become_its_actions(
    otel_hub: ThreadedHub, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.library")
    with tracer.start_as_current_span("raw", attributes={attr.WORKFLOW_ID: "wf-raw-4"}):
        wait_phase(otel_hub, "wf-raw-4", "execution")
        with tracer.start_as_current_span("download"):
            assert otel_hub.status("wf-raw-4").current_action == "download"
    wait_phase(otel_hub, "wf-raw-4", "completed")


# ---------------------------------------------------------------------- robustness


class BrokenCoordinator(Coordinator):
    """A coordinator whose ``send_workflow_created`` fails, as a bug or a full disk might."""

    def send_workflow_created(self, *args: object, **kwargs: object) -> bool:
        raise RuntimeError("cannot send")


def test_the_processor_never_raises_into_the_traced_code(
    caplog: pytest.LogCaptureFixture, span_exporter: InMemorySpanExporter
) -> None:
    coordinator = BrokenCoordinator(Config())  # no hub: nothing connects
    try:
        processor = CoordinationSpanProcessor(coordinator)
        provider = TracerProvider()
        provider.add_span_processor(processor)
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        tracer = provider.get_tracer("app")
        with tracer.start_as_current_span("raw", attributes={attr.WORKFLOW_ID: "wf-broken"}):
            pass
        assert processor.errors == 1
        assert any("span processor" in r.getMessage() for r in caplog.records)
        (span,) = span_exporter.get_finished_spans()  # the span itself went through
        assert span.name == "raw"
        assert processor.force_flush(1000) is True  # no hub configured: nothing to wait for
    finally:
        coordinator.close()


def test_force_flush_delivers_what_the_coordinator_holds(
    otel_hub: ThreadedHub, processor: CoordinationSpanProcessor, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("x")
    for i in range(20):
        with tracer.start_as_current_span("raw", attributes={attr.WORKFLOW_ID: f"wf-flush-{i}"}):
            pass
    assert provider.force_flush(10_000)
    assert processor.coordinator.stats().queued == 0
    wait_phase(otel_hub, "wf-flush-19", "completed")


# ---------------------------------------------------------------------- parents and reruns


def test_a_raw_workflow_span_takes_its_parent_from_the_enclosing_workflow(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("some.library")
    with (
        workflow("outer", coordinator=otel_coordinator, tracer_provider=provider) as outer,
        workflow("middle", coordinator=otel_coordinator, tracer_provider=provider) as middle,
        tracer.start_as_current_span("step"),  # an action of middle, in between
        tracer.start_as_current_span("raw-child", attributes={attr.WORKFLOW_ID: "wf-raw-5"}),
    ):
        state = wait_phase(otel_hub, "wf-raw-5", "execution")
        assert (state.parent_workflow_id, state.root_workflow_id) == (middle.id, outer.id)
    assert "wf-raw-5" in wait_phase(otel_hub, middle.id, "completed").children


def test_a_raw_workflow_span_takes_its_parent_from_baggage(
    otel_hub: ThreadedHub, provider: TracerProvider
) -> None:
    from opentelemetry import baggage, context  # noqa: PLC0415

    carried = baggage.set_baggage(attr.BAGGAGE_WORKFLOW_ID, "wf-remote-parent")
    carried = baggage.set_baggage(attr.BAGGAGE_ROOT_ID, "wf-remote-root", carried)
    token = context.attach(carried)
    try:
        with provider.get_tracer("x").start_as_current_span(
            "raw", attributes={attr.WORKFLOW_ID: "wf-raw-6"}
        ):
            pass
    finally:
        context.detach(token)
    state = wait_phase(otel_hub, "wf-raw-6", "completed")
    assert (state.parent_workflow_id, state.root_workflow_id) == (
        "wf-remote-parent",
        "wf-remote-root",
    )


def test_a_raw_workflow_span_reusing_a_finished_workflow_id_is_a_new_run(
    otel_hub: ThreadedHub, provider: TracerProvider
) -> None:
    tracer = provider.get_tracer("scheduler")
    with (
        pytest.raises(RuntimeError),
        tracer.start_as_current_span("nightly", attributes={attr.WORKFLOW_ID: "wf-nightly"}),
    ):
        raise RuntimeError("first attempt failed")
    wait_phase(otel_hub, "wf-nightly", "failed")
    with tracer.start_as_current_span("nightly", attributes={attr.WORKFLOW_ID: "wf-nightly"}):
        wait_phase(otel_hub, "wf-nightly", "execution")  # the retry runs again, live
    state = wait_phase(otel_hub, "wf-nightly", "completed")
    assert history(state)[-5:] == LIFECYCLE
    assert received(otel_hub, "workflow_created")["wf-nightly"] == 2
