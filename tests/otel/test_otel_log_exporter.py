"""``CoordinationLogExporter``: records from ``logging`` through the real SDK logs pipeline
(``LoggingHandler`` -> ``LoggerProvider`` -> processor -> our exporter) to the real hub."""

from __future__ import annotations

import inspect
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import OTEL_TIMEOUT
from when_coordinator import Config, Coordinator, LogEntry, workflow
from when_coordinator.client._util import log_size
from when_coordinator.hub import StoredLog, ThreadedHub
from when_coordinator.otel import CoordinationLogExporter, CoordinationSpanProcessor


class RecordingExporter(CoordinationLogExporter):
    """Our exporter, remembering the size of every batch it was handed."""

    def __init__(self, coordinator: Coordinator, **options: Any) -> None:
        super().__init__(coordinator, **options)
        self.batches: list[int] = []

    def export(self, batch: Sequence[Any]) -> Any:
        self.batches.append(len(batch))
        return super().export(batch)


class Pipeline:
    """``logging`` -> SDK ``LoggingHandler`` -> ``LoggerProvider`` -> processor -> exporter."""

    def __init__(self, exporter: CoordinationLogExporter, *, batch: bool = False, **options: Any):
        self.exporter = exporter
        self.provider = LoggerProvider()
        self.processor = (
            BatchLogRecordProcessor(exporter, **options)
            if batch
            else SimpleLogRecordProcessor(exporter)
        )
        self.provider.add_log_record_processor(self.processor)
        with warnings.catch_warnings():  # the SDK handler is deprecated in favour of contrib's
            warnings.simplefilter("ignore", DeprecationWarning)
            self.handler = LoggingHandler(logger_provider=self.provider)
        self.loggers: list[logging.Logger] = []

    def logger(self, name: str = "") -> logging.Logger:
        logger = logging.getLogger(name or f"app.{uuid.uuid4().hex[:8]}")
        logger.addHandler(self.handler)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        self.loggers.append(logger)
        return logger

    def close(self) -> None:
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        self.provider.shutdown()


@pytest.fixture
def pipelines() -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(exporter: CoordinationLogExporter, **options: Any) -> Pipeline:
        made.append(Pipeline(exporter, **options))
        return made[-1]

    yield make
    for pipeline in made:
        pipeline.close()


def hub_logs(hub: ThreadedHub, count: int, workflow_id: str | None = None) -> list[LogEntry]:
    """Wait until the hub holds ``count`` logs (of the workflow, if given); their entries."""

    def enough(h: ThreadedHub) -> tuple[StoredLog, ...] | None:
        logs = h.logs if workflow_id is None else h.logs_for(workflow_id)
        return logs if len(logs) >= count else None

    found = hub.wait_for(enough, OTEL_TIMEOUT)
    assert found is not None
    return [record.entry for record in found]


def here() -> int:
    """The line number of the caller's next line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


# ---------------------------------------------------------------------- mapping


def test_records_map_to_protocol_log_entries(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    pipelines: Callable[..., Pipeline],
) -> None:
    log = pipelines(CoordinationLogExporter(otel_coordinator)).logger()
    with workflow("logged", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
        context = wf.span.get_span_context()
        line = here()
        log.debug("loaded %d rows", 42, extra={"table": "orders", "rows": 42})
        log.info("info")
        log.warning("warning")
        log.error("error", extra={"action_id": "act-3", "correlation_id": "req-77"})
        log.critical("critical")
    entries = hub_logs(otel_hub, 5, wf.id)
    assert [(e.level, e.message) for e in entries] == [
        ("debug", "loaded 42 rows"),
        ("info", "info"),
        ("warn", "warning"),
        ("error", "error"),
        ("fatal", "critical"),
    ]
    first = entries[0]
    assert first.workflow_id == wf.id  # from the span the record was logged in
    assert first.trace_id == format(context.trace_id, "032x")
    assert first.span_id == format(context.span_id, "016x")
    assert first.source_file == __file__
    assert first.source_line == line
    assert first.fields["table"] == "orders"
    assert first.fields["rows"] == 42
    assert first.fields["code.function.name"] == "test_records_map_to_protocol_log_entries"
    assert not any(key.startswith(("code.file", "code.line")) for key in first.fields)
    assert (entries[3].action_id, entries[3].correlation_id) == ("act-3", "req-77")
    assert "action_id" not in entries[3].fields
    assert all(e.timestamp.endswith("Z") for e in entries)


def test_ids_are_omitted_outside_spans_and_attributes_name_the_workflow(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    log = pipelines(CoordinationLogExporter(otel_coordinator)).logger()
    log.info("no span here")
    log.info("filed by attribute", extra={"workflow_id": "wf-from-extra"})
    log.info("filed by our attribute", extra={"when.workflow.id": "wf-from-attr"})
    entries = {e.message: e for e in hub_logs(otel_hub, 3)}
    plain = entries["no span here"]
    assert (plain.trace_id, plain.span_id, plain.workflow_id) == ("", "", "")
    assert entries["filed by attribute"].workflow_id == "wf-from-extra"
    assert entries["filed by our attribute"].workflow_id == "wf-from-attr"
    assert "workflow_id" not in entries["filed by attribute"].fields
    # Empty keys are left out of the frame itself, not sent as "".
    (frame,) = [
        r.message.payload["logs"][0]
        for r in otel_hub.received
        if r.message.type == "log_batch"
        and r.message.payload["logs"][0]["message"] == "no span here"
    ]
    assert not {"trace_id", "span_id", "workflow_id", "action_id"} & set(frame)


def test_records_in_spans_nested_in_a_workflow_are_filed_under_it(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(CoordinationSpanProcessor(otel_coordinator))
    log = pipelines(CoordinationLogExporter(otel_coordinator)).logger()
    with (
        workflow("outer", coordinator=otel_coordinator, tracer_provider=provider) as wf,
        provider.get_tracer("app").start_as_current_span("step") as step,
    ):
        log.info("inside the step")
        step_id = format(step.get_span_context().span_id, "016x")
    (entry,) = hub_logs(otel_hub, 1, wf.id)
    assert entry.message == "inside the step"
    assert entry.span_id == step_id
    provider.shutdown()


class _Record:
    """What the exporter reads of an SDK log record, for mapping cases the SDK cannot make."""

    def __init__(self, attributes: dict[str, Any], **fields: Any) -> None:
        self.attributes = attributes
        self.body = fields.get("body", "m")
        self.timestamp = fields.get("timestamp", 1_700_000_000_123_456_789)
        self.observed_timestamp = 0
        self.severity_number = fields.get("severity_number")
        self.severity_text = fields.get("severity_text", "WARNING")
        self.trace_id = fields.get("trace_id", 0)
        self.span_id = fields.get("span_id", 0)


TS = "2023-11-14T22:13:20.123456789Z"
WIRE_CASES: dict[str, tuple[_Record, dict[str, Any]]] = {
    "bare": (_Record({}), {"timestamp": TS, "level": "warn", "message": "m"}),
    "everything": (
        _Record(
            {
                "rows": 3,
                "code.file.path": "etl/load.py",
                "code.line.number": 12,
                "workflow_id": "wf-1",
                "action_id": "act-1",
                "correlation_id": "req-1",
            },
            trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
            span_id=0xF067AA0BA902B7,
            body={"structured": [1, 2]},
            severity_number=SeverityNumber.ERROR2,
            severity_text="this text is not used when a number is set",
        ),
        {
            "timestamp": TS,
            "level": "error",
            "message": '{"structured":[1,2]}',
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "workflow_id": "wf-1",
            "action_id": "act-1",
            "correlation_id": "req-1",
            "fields": {"rows": 3},
            "source_file": "etl/load.py",
            "source_line": 12,
        },
    ),
    "non-text ids": (
        _Record({"action_id": 7, "correlationId": 8, "code.lineno": True}),
        {
            "timestamp": TS,
            "level": "warn",
            "message": "m",
            "action_id": "7",
            "correlation_id": "8",
        },
    ),
    "empty ids": (
        _Record({"workflow_id": "", "action_id": None, "code.line.number": 0}),
        {"timestamp": TS, "level": "warn", "message": "m"},
    ),
    "no body": (
        _Record({"x": (1.5, 2.5)}, body=None, severity_text="fatal"),
        {"timestamp": TS, "level": "fatal", "message": "", "fields": {"x": (1.5, 2.5)}},
    ),
    "nanoseconds with leading zeros": (
        _Record({}, timestamp=1_700_000_000_000_000_042),
        {"timestamp": "2023-11-14T22:13:20.000000042Z", "level": "warn", "message": "m"},
    ),
    "span owned by a workflow": (
        _Record({}, span_id=0xAB, severity_number=SeverityNumber.DEBUG),
        {
            "timestamp": TS,
            "level": "debug",
            "message": "m",
            "span_id": "00000000000000ab",
            "workflow_id": "wf-owner",
        },
    ),
}


@pytest.mark.parametrize(("record", "expected"), WIRE_CASES.values(), ids=WIRE_CASES.keys())
def test_wire_form_is_exactly_what_a_log_entry_would_send(
    record: _Record, expected: dict[str, Any]
) -> None:
    """The exporter builds wire entries itself (no LogEntry per record): the expected values,
    in the keys, order and omissions of the protocol's own ``LogEntry.to_dict()``, and the
    same bytes as that entry encoded."""
    owners = {0xAB: ("wf-owner", "")}
    wire, size = _alone(record, owners.get)
    as_dict = wire.to_dict()
    assert list(as_dict.items()) == list(msgspec.to_builtins(expected).items())
    entry = LogEntry.from_dict(as_dict)
    assert list(as_dict.items()) == list(entry.to_dict().items())
    assert msgspec.json.encode(wire) == msgspec.json.encode(entry)
    assert size == log_size(wire.message, wire.fields)  # the outbox's estimate


def test_a_batch_maps_each_record_as_it_would_alone() -> None:
    """``_wires`` keeps what consecutive records share (the second, the level, the ids and
    the span's workflow): a record must never inherit a neighbour's."""
    owners = {0xAB: ("wf-owner", ""), 0xCD: ("wf-other", "")}
    records = [
        *(case[0] for case in WIRE_CASES.values()),
        _Record({}, span_id=0xCD, severity_number=SeverityNumber.INFO),
        _Record({}, span_id=0xCD, severity_text="error", timestamp=1_800_000_000_000_000_000),
        _Record({"workflow_id": "wf-attr"}, span_id=0xCD, severity_text="debug"),
        _Record({}, span_id=0xAB, trace_id=0x1, severity_number=SeverityNumber.INFO),
        _Record({}, span_id=0xAB, trace_id=0x2, severity_number=SeverityNumber.UNSPECIFIED),
    ]
    alone = [_alone(record, owners.get) for record in records]
    wires, sizes = CoordinationLogExporter._wires(records * 2, owners.get, _never)
    assert [wire.to_dict() for wire in wires] == [wire.to_dict() for wire, _ in alone] * 2
    assert sizes == [size for _, size in alone] * 2


def _never() -> None:
    raise AssertionError("a record could not be mapped")


def _alone(record: _Record, owner_of: Any) -> tuple[Any, int]:
    """One record mapped as a batch of its own."""
    wires, sizes = CoordinationLogExporter._wires([record], owner_of, _never)
    return wires[0], sizes[0]


def test_fields_that_are_not_json_safe_still_arrive(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    log = pipelines(CoordinationLogExporter(otel_coordinator)).logger()
    log.info("odd", extra={"ratio": float("nan"), "sizes": (1.0, float("inf"))})
    (entry,) = hub_logs(otel_hub, 1)
    assert entry.message == "odd"
    assert entry.fields["ratio"] == "nan"
    assert entry.fields["sizes"] == [1.0, "inf"]
    assert otel_coordinator.stats().dropped == 0


def test_structured_bodies_become_json_messages(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    log = pipelines(CoordinationLogExporter(otel_coordinator)).logger()
    log.info({"event": "loaded", "rows": 3})
    (entry,) = hub_logs(otel_hub, 1)
    assert entry.message == '{"event":"loaded","rows":3}'


# ---------------------------------------------------------------------- batching


def test_one_log_batch_per_export_split_to_max_batch(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    exporter = RecordingExporter(otel_coordinator, max_batch=4)
    pipeline = pipelines(
        exporter, batch=True, max_export_batch_size=10, schedule_delay_millis=60_000
    )
    log = pipeline.logger()
    for i in range(25):
        log.info("record %d", i)
    assert pipeline.provider.force_flush(10_000)
    entries = hub_logs(otel_hub, 25)
    assert [e.message for e in entries] == [f"record {i}" for i in range(25)]
    assert sum(exporter.batches) == 25
    assert max(exporter.batches) <= 10
    expected = [size for n in exporter.batches for size in [4] * (n // 4) + [n % 4] if size]
    sizes = [
        len(r.message.payload["logs"]) for r in otel_hub.received if r.message.type == "log_batch"
    ]
    assert sizes == expected
    assert exporter.exported == 25
    assert exporter.errors == 0


def test_many_records_through_the_batch_processor_all_arrive(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    exporter = CoordinationLogExporter(otel_coordinator)
    pipeline = pipelines(exporter, batch=True, max_queue_size=4096)
    log = pipeline.logger()
    for i in range(2000):
        log.info("bulk %d", i, extra={"i": i})
    assert pipeline.provider.force_flush(10_000)
    entries = hub_logs(otel_hub, 2000)
    assert [e.fields["i"] for e in entries] == list(range(2000))
    assert otel_coordinator.stats().dropped == 0


# ---------------------------------------------------------------------- safety


def test_records_of_this_package_are_not_sent_back(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    exporter = RecordingExporter(otel_coordinator)
    pipeline = pipelines(exporter)
    pipeline.logger("when_coordinator.tests.loop").warning("would feed on itself")
    pipeline.logger().warning("sent")
    assert exporter.batches == [1, 1]
    assert exporter.exported == 1
    assert [e.message for e in hub_logs(otel_hub, 1)] == ["sent"]


class BrokenCoordinator(Coordinator):
    def _enqueue(self, *args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("outbox on fire")


def test_export_failures_are_counted_never_raised(pipelines: Callable[..., Pipeline]) -> None:
    coordinator = BrokenCoordinator(Config())
    try:
        exporter = CoordinationLogExporter(coordinator)
        log = pipelines(exporter).logger()
        log.error("goes nowhere")  # must not raise
        assert exporter.errors == 1
        assert exporter.exported == 0
        exporter.shutdown()
        log.error("after shutdown")
        assert exporter.errors == 1  # refused, not attempted
    finally:
        coordinator.close()


def test_max_batch_must_be_positive(otel_coordinator: Coordinator) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        CoordinationLogExporter(otel_coordinator, max_batch=0)


def test_records_of_opentelemetry_loggers_never_reach_the_hub(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, pipelines: Callable[..., Pipeline]
) -> None:
    """What the SDK and its exporters log about themselves (an OTLP exporter's "Failed to
    export", fed in by any bridge handler on the root logger) is telemetry about telemetry:
    sent on, an exporter that cannot reach its endpoint would keep exporting its failures."""
    pipeline = pipelines(CoordinationLogExporter(otel_coordinator))
    for name in ("opentelemetry", "opentelemetry.exporter.otlp.proto.http._log_exporter"):
        pipeline.logger(name).error("Failed to export logs batch")
    pipeline.logger("opentelemetry_app").warning("an application logger, not OpenTelemetry's")
    pipeline.logger().info("application record")
    (first, second) = hub_logs(otel_hub, 2)
    assert otel_coordinator.flush(OTEL_TIMEOUT)
    assert [first.message, second.message] == [
        "an application logger, not OpenTelemetry's",
        "application record",
    ]
    assert len(otel_hub.logs) == 2
