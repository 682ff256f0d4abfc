"""One run, seen twice: the same workflow in the span exporter and at the hub.

Everything is real and wired as a service would wire it: the SDK tracer provider with the
coordination span processor and an in-memory exporter, the SDK logs pipeline with our exporter
behind a batch processor, a coordinator on loopback, and the reference hub, which pauses and
resumes the workflow half-way.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import OTEL_TIMEOUT
from tests.otel.conftest import wait_phase
from when_coordinator import Coordinator, Phase, workflow
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import CoordinationLogExporter, CoordinationSpanProcessor
from when_coordinator.otel import attributes as attr


@pytest.fixture
def log(otel_coordinator: Coordinator) -> Iterator[tuple[logging.Logger, LoggerProvider]]:
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(CoordinationLogExporter(otel_coordinator))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("etl.end_to_end")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, provider
    logger.removeHandler(handler)
    provider.shutdown()


def span_facts(span: ReadableSpan) -> list[tuple[str, object]]:
    """The span's events as (kind, key), in order."""
    kinds = {
        attr.PHASE_CHANGED_EVENT: ("phase_changed", attr.PHASE_TO),
        attr.PROGRESS_EVENT: ("progress", attr.PROGRESS_STAGE),
        attr.CHECKPOINT_EVENT: ("checkpoint", attr.CHECKPOINT_ID),
        attr.ERROR_EVENT: ("error", "when.error.message"),
    }
    facts: list[tuple[str, object]] = []
    for event in span.events:
        kind, key = kinds[event.name]
        assert event.attributes is not None
        facts.append((kind, event.attributes[key]))
    return facts


def test_one_run_is_the_same_workflow_in_the_span_exporter_and_at_the_hub(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    log: tuple[logging.Logger, LoggerProvider],
) -> None:
    hub = otel_hub
    logger, log_provider = log
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(CoordinationSpanProcessor(otel_coordinator))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("etl")

    with workflow(
        "nightly-etl", action_id="act-etl", coordinator=otel_coordinator, tracer_provider=provider
    ) as wf:
        logger.info("starting", extra={"source": "s3://bucket/day"})
        with tracer.start_as_current_span("extract"):
            wf.progress(30, current_item=3, total_items=10)  # stage: the current action
            logger.info("extracted %d rows", 120)
        wf.checkpoint("cp-extract", "extracted", state={"rows": 120})
        with tracer.start_as_current_span("load"):
            wf.progress(60, message="loading")
        wf.error("3 rows skipped", recoverable=True)

        wait_phase(hub, wf.id, "execution")
        hub.pause(wf.id, "operator check")
        wait_phase(hub, wf.id, "pausing")
        resumer = threading.Thread(
            target=lambda: (wait_phase(hub, wf.id, "paused"), hub.resume(wf.id)), daemon=True
        )
        resumer.start()
        wf.safe_point()
        resumer.join(OTEL_TIMEOUT)
        assert wf.phase is Phase.EXECUTION
        wf.progress(100, "done")
        logger.warning("finished with skips")
    assert log_provider.force_flush(10_000)

    # ------------------------------------------------------------ the span exporter
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"nightly-etl", "extract", "load"}
    span = spans["nightly-etl"]
    context = span.get_span_context()
    assert context is not None
    attributes = span.attributes or {}
    assert attributes[attr.WORKFLOW_ID] == wf.id
    assert attributes[attr.WORKFLOW_ROOT_ID] == wf.id
    assert attributes[attr.ACTION_ID] == "act-etl"
    assert attributes[attr.ACTION_TYPE] == "nightly-etl"
    assert attributes[attr.PHASE] == "completed"
    assert attributes[attr.PROGRESS_PERCENT] == 100
    for child in ("extract", "load"):
        parent = spans[child].parent
        assert parent is not None
        assert parent.span_id == context.span_id

    # ------------------------------------------------------------ the hub
    state = wait_phase(hub, wf.id, "completed")
    messages = [r.message for r in hub.received if r.message.workflow_id == wf.id]
    assert messages[0].type == "workflow_created"
    assert messages[0].payload["action_id"] == "act-etl"
    hub_facts: list[tuple[str, object]] = []
    for message in messages[1:]:
        key = {
            "phase_changed": "to",
            "progress": "stage",
            "checkpoint": "checkpoint_id",
            "error": "error",
        }[str(message.type)]
        hub_facts.append((str(message.type), message.payload[key]))

    # Both saw the same facts in the same order: each progress here has a stage of its own.
    assert span_facts(span) == hub_facts
    assert hub_facts == [
        ("phase_changed", "pre-flight"),
        ("phase_changed", "planning"),
        ("phase_changed", "execution"),
        ("progress", "extract"),
        ("checkpoint", "cp-extract"),
        ("progress", "load"),
        ("error", "3 rows skipped"),
        ("phase_changed", "pausing"),
        ("phase_changed", "paused"),
        ("phase_changed", "resuming"),
        ("phase_changed", "execution"),
        ("progress", "done"),
        ("phase_changed", "completing"),
        ("phase_changed", "completed"),
    ]
    at_hub = [
        (
            "" if c.from_phase is None else c.from_phase.value,
            c.to_phase.value,
            c.reason,
            c.checkpoint_id,
        )
        for c in state.history
    ]
    in_span = [
        (
            e.attributes[attr.PHASE_FROM],
            e.attributes[attr.PHASE_TO],
            e.attributes[attr.PHASE_REASON],
            e.attributes[attr.PHASE_CHECKPOINT_ID],
        )
        for e in span.events
        if e.name == attr.PHASE_CHANGED_EVENT and e.attributes is not None
    ]
    assert in_span == at_hub
    assert state.history[5].checkpoint_id == "cp-extract"  # the pause kept the latest checkpoint
    assert state.checkpoints[0].state == {"rows": 120}
    assert (state.errors[0].error, state.errors[0].recoverable) == ("3 rows skipped", True)
    assert (state.progress, state.stage) == (100, "done")

    # ------------------------------------------------------------ logs, under the workflow
    def all_logs(h: ThreadedHub) -> bool:
        return len(h.logs_for(wf.id)) >= 3

    hub.wait_for(all_logs, OTEL_TIMEOUT)
    entries = [record.entry for record in hub.logs_for(wf.id)]
    assert [(e.level, e.message) for e in entries] == [
        ("info", "starting"),
        ("info", "extracted 120 rows"),
        ("warn", "finished with skips"),
    ]
    trace_id = format(context.trace_id, "032x")
    assert all(e.trace_id == trace_id for e in entries)
    extract = spans["extract"].get_span_context()
    assert extract is not None
    assert entries[1].span_id == format(extract.span_id, "016x")
    assert entries[0].span_id == format(context.span_id, "016x")
    assert entries[0].fields["source"] == "s3://bucket/day"
    assert entries[0].source_file == __file__
