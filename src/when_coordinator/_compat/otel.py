"""The one place that uses OpenTelemetry names which are private or moved between releases.

- The logs API and SDK are still underscored (``opentelemetry._logs``,
  ``opentelemetry.sdk._logs``), and the SDK renamed its exporter classes in 1.39
  (``LogExporter`` became ``LogRecordExporter``, ``LogData`` became ``ReadableLogRecord``).
  Exported records are read only through the attributes every release has (``log_record``,
  ``instrumentation_scope``).
- The SDK's ``LoggingHandler`` is deprecated since 1.40 in favour of
  ``opentelemetry-instrumentation-logging``'s; the old class is only recognised (a root
  logger may already hold one), never made.
- Two reads the SDK has no public accessor for: the plain dict under a finished record's
  ``BoundedAttributes`` (read without its lock, per key), and the logger provider a logging
  bridge handler feeds.

The trace side is in ``otel_trace.py``: importing this module loads the SDK's logs modules,
which ``import when_coordinator`` must not (``tests/test_import_cost.py``).
``tests/otel/test_compat.py`` checks every name of both; ``scripts/test-otel-lowest`` runs it
against the lowest versions ``pyproject.toml`` declares.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import opentelemetry._logs._internal as _api_logs
import opentelemetry.sdk._logs as _sdk_logs
import opentelemetry.sdk._logs.export as _export
from opentelemetry._logs import (
    SeverityNumber,
    get_logger_provider,
    set_logger_provider,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter as LogExporterBase
    from opentelemetry.sdk._logs.export import LogRecordExportResult as ExportResult
else:  # the newer names, else the ones releases before 1.39 had
    LogExporterBase = getattr(_export, "LogRecordExporter", None) or _export.LogExporter
    ExportResult = getattr(_export, "LogRecordExportResult", None) or _export.LogExportResult

ApiProxyLoggerProvider: type[Any] = getattr(_api_logs, "ProxyLoggerProvider", type(None))
"""The API's stand-in while no logger provider is installed (never matched if it moved)."""


class _Removed(logging.Handler):
    """Stands for a class a release has removed: no handler is one."""


SdkLoggingHandler: type[logging.Handler] = getattr(_sdk_logs, "LoggingHandler", _Removed)
"""The SDK's deprecated handler (what its logging auto-instrumentation setting adds)."""

__all__ = [
    "ApiProxyLoggerProvider",
    "BatchLogRecordProcessor",
    "ExportResult",
    "LogExporterBase",
    "LoggerProvider",
    "SdkLoggingHandler",
    "SeverityNumber",
    "SimpleLogRecordProcessor",
    "attribute_items",
    "get_logger_provider",
    "logger_provider_of",
    "record_of",
    "scope_name_of",
    "set_logger_provider",
]


def record_of(item: Any) -> Any:
    """The log record inside an exported item (``ReadableLogRecord`` or ``LogData``)."""
    return getattr(item, "log_record", item)


def scope_name_of(item: Any) -> str:
    scope = getattr(item, "instrumentation_scope", None)
    name = getattr(scope, "name", "")
    return name if isinstance(name, str) else ""


def attribute_items(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """What to iterate for a finished record's attributes: the SDK's ``BoundedAttributes``
    takes its lock on every read, so its plain dict is read directly where it has one."""
    items = getattr(attributes, "_dict", None)
    return items if type(items) is dict else attributes


def logger_provider_of(handler: logging.Handler) -> Any:
    """The logger provider a ``logging`` bridge handler (the SDK's or
    ``opentelemetry-instrumentation-logging``'s) feeds, or None."""
    return getattr(handler, "_logger_provider", None)
