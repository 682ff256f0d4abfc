"""The ``logging`` side of the instrumentor: the handler that feeds Python log records into the
OpenTelemetry logs pipeline, and Python's last resort kept in place beside it.

The handler is ``opentelemetry-instrumentation-logging``'s ``LoggingHandler`` (the SDK's is
deprecated since SDK 1.40), attached only where no bridge handler (that one or the SDK's) is on
the root logger already.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.instrumentation.logging.handler import LoggingHandler

from .._compat.otel import SdkLoggingHandler, logger_provider_of
from ..client import CoordinatorLogHandler
from .log_exporter import is_telemetry_logger

__all__ = [
    "BRIDGE_HANDLERS",
    "CoordinatorRootHandler",
    "LastResortKeeper",
    "SkipOwnRecords",
    "attach_logging_handler",
]

BRIDGE_HANDLERS: tuple[type[logging.Handler], ...] = (LoggingHandler, SdkLoggingHandler)
"""The handler classes that feed ``logging`` into an OpenTelemetry logs pipeline."""


class SkipOwnRecords(logging.Filter):
    """Keep telemetry's records about itself (``is_telemetry_logger``), and anything the
    client thread logs, out of the logs pipeline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (is_telemetry_logger(record.name) or record.threadName == "when-coordinator")


class _KeepLastResort(logging.Handler):
    """A handler of ours on the root logger, which leaves Python's last resort in place.

    Python prints a warning that no handler takes (``logging.lastResort``, to stderr). Our
    handler feeds the logs pipeline, and being on the root logger it took every record: an
    application that configured no logging (or not yet) no longer saw any warning, ours such
    as "cannot connect to the hub" included. So a record that only our handlers (and other
    logs bridges) see still goes to the last resort, as it would without the instrumentor.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        handled = super().handle(record)
        last = logging.lastResort
        if (
            last is not None
            and record.levelno >= last.level
            and _last_resort_by(record.name) is self
        ):
            last.handle(record)
        return handled


def _last_resort_by(name: str) -> logging.Handler | None:
    """Which of our handlers passes a record of logger ``name`` to the last resort: the first
    one the record meets; none when a handler that writes somewhere takes the record."""
    first: logging.Handler | None = None
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        for handler in logger.handlers:
            if not isinstance(handler, (_KeepLastResort, *BRIDGE_HANDLERS)):
                return None
            if first is None and isinstance(handler, _KeepLastResort):
                first = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return first


class CoordinatorRootHandler(_KeepLastResort, CoordinatorLogHandler):
    """``CoordinatorLogHandler`` on the root logger (where the logs pipeline cannot be had)."""


class LastResortKeeper(_KeepLastResort):
    """On the root logger while instrumented, from the start: warnings ("cannot connect to
    the hub", the application's own) reach stderr until the application configures logging,
    whichever bridge handler is on the root logger, ours or the logging instrumentation's
    (which keeps no last resort). Emits nothing itself."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


class _WhenLoggingHandler(_KeepLastResort, LoggingHandler):
    """The handler the instrumentor adds, which steps aside while another bridge handler
    feeding the same provider is on the root logger.

    Attached only where none was (``attach_logging_handler``); but an application may call
    ``LoggingInstrumentor().instrument()`` after ours, which adds its handler whatever is
    there: each record must still enter the pipeline once.
    """

    def emit(self, record: logging.LogRecord) -> None:
        provider = logger_provider_of(self)
        for handler in logging.getLogger().handlers:
            if (
                handler is not self
                and isinstance(handler, BRIDGE_HANDLERS)
                and logger_provider_of(handler) is provider
            ):
                return
        super().emit(record)


def attach_logging_handler(provider: Any) -> logging.Handler | None:
    root = logging.getLogger()
    if any(isinstance(handler, BRIDGE_HANDLERS) for handler in root.handlers):
        return None  # the logging instrumentation (or the SDK's) already feeds the pipeline
    handler = _WhenLoggingHandler(
        level=logging.NOTSET, logger_provider=provider, log_code_attributes=True
    )
    handler.addFilter(SkipOwnRecords())
    root.addHandler(handler)
    return handler
