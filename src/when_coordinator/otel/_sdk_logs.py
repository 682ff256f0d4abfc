"""The one place that imports the OpenTelemetry SDK's logs modules.

The SDK's logs API is still underscored (``opentelemetry.sdk._logs``) and has renamed its
classes across releases (``LogExporter`` became ``LogRecordExporter``, ``LogData`` became
``ReadableLogRecord``). Everything version-dependent is resolved here; the rest of the package
reads exported records only through the attributes every release has (``log_record``,
``instrumentation_scope``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import opentelemetry.sdk._logs.export as _export

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter as LogExporterBase
    from opentelemetry.sdk._logs.export import LogRecordExportResult as ExportResult
else:  # the newer names, else the ones releases before 1.39 had
    LogExporterBase = getattr(_export, "LogRecordExporter", None) or _export.LogExporter
    ExportResult = getattr(_export, "LogRecordExportResult", None) or _export.LogExportResult
import opentelemetry._logs._internal as _api_logs
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor

ApiProxyLoggerProvider: type[Any] = getattr(_api_logs, "ProxyLoggerProvider", type(None))
"""The API's stand-in while no logger provider is installed (never matched if it moved)."""

__all__ = [
    "ApiProxyLoggerProvider",
    "BatchLogRecordProcessor",
    "ExportResult",
    "LogExporterBase",
    "LoggerProvider",
    "LoggingHandler",
    "SimpleLogRecordProcessor",
    "record_of",
    "scope_name_of",
]


def record_of(item: Any) -> Any:
    """The log record inside an exported item (``ReadableLogRecord`` or ``LogData``)."""
    return getattr(item, "log_record", item)


def scope_name_of(item: Any) -> str:
    scope = getattr(item, "instrumentation_scope", None)
    name = getattr(scope, "name", "")
    return name if isinstance(name, str) else ""
