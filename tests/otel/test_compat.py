"""``when_coordinator._compat.otel`` and ``otel_trace``: every private or moved OpenTelemetry
name the package uses, checked against the installed releases. ``scripts/test-otel-lowest``
runs this module against the lowest releases ``pyproject.toml`` declares; the development
environment has the highest."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from when_coordinator._compat import otel as compat
from when_coordinator._compat.otel_trace import add_text_event, span_limits_of


class Capture(compat.LogExporterBase):
    """An exporter built on the compat base class, keeping what it is given."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def export(self, batch: Sequence[Any]) -> Any:
        self.items.extend(batch)
        return compat.ExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def test_exported_records_are_read_through_the_compat_names() -> None:
    exporter = Capture()
    provider = compat.LoggerProvider()
    provider.add_log_record_processor(compat.SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("compat.records")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("hello %s", "compat", extra={"rows": 3})
    finally:
        logger.removeHandler(handler)
    (item,) = exporter.items
    record = compat.record_of(item)
    assert record.body == "hello compat"
    assert record.severity_number is compat.SeverityNumber.WARN
    assert compat.scope_name_of(item) == "compat.records"
    items = compat.attribute_items(record.attributes)
    assert type(items) is dict, "the SDK's attributes no longer keep a plain dict"
    assert items["rows"] == 3
    assert dict(items) == dict(record.attributes)
    plain = {"a": 1}
    assert compat.attribute_items(plain) is plain
    provider.shutdown()


def test_the_logger_provider_of_either_bridge_handler() -> None:
    provider = compat.LoggerProvider()
    assert compat.logger_provider_of(LoggingHandler(logger_provider=provider)) is provider
    assert compat.logger_provider_of(logging.StreamHandler()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's is deprecated
        sdk_handler = compat.SdkLoggingHandler(logger_provider=provider)  # type: ignore[call-arg]
    assert compat.logger_provider_of(sdk_handler) is provider
    provider.shutdown()


def test_the_span_limits_of_an_sdk_span_are_its_providers() -> None:
    provider = TracerProvider(span_limits=SpanLimits(max_events=7))
    span = provider.get_tracer("compat").start_span("limited")
    limits = span_limits_of(span)
    assert limits is not None
    assert limits.max_events == 7
    span.end()
    assert span_limits_of(trace.INVALID_SPAN) is None
    provider.shutdown()


def _exported(limits: SpanLimits | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(span_limits=limits)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_text_event_reaches_an_sdk_span_without_being_cleaned_again() -> None:
    provider, exporter = _exported(SpanLimits(max_events=2))
    span = provider.get_tracer("compat").start_span("events")
    for n in range(3):
        add_text_event(span, "when.phase_changed", {"when.phase.to": f"p{n}", "empty": ""})
    span.end()
    add_text_event(span, "late", {"a": "b"})  # the SDK's own check: not added once ended
    (exported,) = exporter.get_finished_spans()
    assert [dict(e.attributes or {}) for e in exported.events] == [
        {"when.phase.to": "p1", "empty": ""},  # the span's event limit, as add_event keeps it
        {"when.phase.to": "p2", "empty": ""},
    ]
    event = exported.events[0]
    # Taken through ``Span._add_event``: a private name this path depends on.
    assert type(event.attributes).__name__ == "mappingproxy", "the SDK path was not taken"
    assert event.dropped_attributes == 0
    assert event.timestamp is not None
    assert event.timestamp >= (exported.start_time or 0)
    with pytest.raises(TypeError):
        event.attributes["when.phase.to"] = "changed"  # type: ignore[index]
    provider.shutdown()


def test_a_text_event_the_limits_would_cut_is_cut_by_the_sdk() -> None:
    provider, exporter = _exported(SpanLimits(max_attribute_length=4, max_event_attributes=1))
    span = provider.get_tracer("compat").start_span("cut")
    add_text_event(span, "long", {"reason": "longer than four"})
    add_text_event(span, "many", {"a": "1", "b": "2"})
    span.end()
    (exported,) = exporter.get_finished_spans()
    long, many = exported.events
    assert dict(long.attributes or {}) == {"reason": "long"}
    assert len(many.attributes or {}) == 1
    assert many.dropped_attributes == 1
    provider.shutdown()


def test_a_span_type_with_its_own_add_event_and_other_spans_get_add_event() -> None:
    class Recording(SdkSpan):
        seen: ClassVar[list[str]] = []

        def add_event(self, name: str, *args: Any, **kwargs: Any) -> None:
            self.seen.append(name)
            super().add_event(name, *args, **kwargs)

    span = Recording("own", context=trace.INVALID_SPAN_CONTEXT)
    span.start()
    add_text_event(span, "mine", {"a": "b"})
    assert Recording.seen == ["mine"]
    assert [e.name for e in span.events] == ["mine"]
    add_text_event(trace.INVALID_SPAN, "nowhere", {"a": "b"})  # a no-op, not an error
    add_text_event(trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT), "nowhere", {"a": "b"})


def test_the_api_proxy_logger_provider_is_recognised_in_a_fresh_process() -> None:
    """Only a process where nobody set a logger provider still has the API's proxy."""
    code = (
        "from opentelemetry._logs import get_logger_provider\n"
        "from when_coordinator._compat.otel import ApiProxyLoggerProvider\n"
        "assert ApiProxyLoggerProvider is not type(None), 'the proxy class moved'\n"
        "assert isinstance(get_logger_provider(), ApiProxyLoggerProvider)\n"
        "print('proxy')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "proxy"


def test_the_compat_module_names_only_what_exists() -> None:
    for name in compat.__all__:
        assert getattr(compat, name) is not None, name
    # The SDK's handler, while a release still has it, is the real class (deprecated, kept
    # for recognising a root logger's handler only).
    from opentelemetry.sdk import _logs as sdk_logs  # noqa: PLC0415

    if hasattr(sdk_logs, "LoggingHandler"):
        assert compat.SdkLoggingHandler is sdk_logs.LoggingHandler
