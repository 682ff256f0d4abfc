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
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from when_coordinator._compat import otel as compat
from when_coordinator._compat.otel_trace import span_limits_of


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
