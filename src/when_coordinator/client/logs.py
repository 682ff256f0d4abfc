"""Log forwarding to the hub (PROTOCOL.md section 7): a batching forwarder and a ``logging``
handler, the counterparts of the Go client's log forwarder and logrus hook."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace
from opentelemetry import trace

from .. import _workflow_context
from ..protocol import LogEntry, LogLevel, format_timestamp
from .logsending import log_entry

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["CoordinatorLogHandler", "LogForwarder", "level_for"]

_CLIENT_THREAD = "when-coordinator"


def level_for(levelno: int) -> LogLevel:
    """Python level to protocol level: trace/debug, info, warning to warn, error, critical to
    fatal."""
    if levelno <= logging.DEBUG:
        return LogLevel.DEBUG
    if levelno <= logging.INFO:
        return LogLevel.INFO
    if levelno <= logging.WARNING:
        return LogLevel.WARN
    if levelno <= logging.ERROR:
        return LogLevel.ERROR
    return LogLevel.FATAL


class LogForwarder:
    """Buffers entries and sends one ``log_batch`` per ``buffer_size`` entries, every
    ``flush_interval`` seconds, on ``flush()`` and on ``stop()``.

    Entries leave the buffer for the coordinator's outbox, which keeps them through
    disconnections within its bounds. After ``stop()`` entries are sent one by one. The
    forwarder is attached to its coordinator: ``close()`` and the exit handler stop it first, so
    nothing it buffered is left behind.
    """

    def __init__(
        self, coordinator: Coordinator, buffer_size: int = 100, flush_interval: float = 5.0
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if not flush_interval > 0:
            raise ValueError("flush_interval must be > 0")
        self.coordinator = coordinator
        self.buffer_size = buffer_size
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._buffer: list[LogEntry] = []
        self._stopped = threading.Event()
        self._timer: threading.Thread | None = None
        coordinator.attach_log_source(self)

    def add(self, entry: LogEntry) -> None:
        """Buffer one entry; a missing timestamp becomes the time of this call."""
        if not isinstance(entry, LogEntry):
            raise TypeError(f"add() takes a LogEntry, got {type(entry).__name__}")
        if not entry.timestamp:
            entry = replace(entry, timestamp=format_timestamp())
        batch = None
        with self._lock:
            # Checked under the lock: an entry added while stop() runs is either in the buffer
            # that stop() flushes or sent alone, never left behind in a buffer nobody flushes.
            stopped = self._stopped.is_set()
            if not stopped:
                self._buffer.append(entry)
                if len(self._buffer) >= self.buffer_size:
                    batch, self._buffer = self._buffer, []
                elif self._timer is None:
                    self._start_timer()
        if stopped:
            self.coordinator.send_log(entry)
        elif batch:
            self.coordinator.send_log_batch(batch)

    def log(
        self,
        level: LogLevel | str,
        message: str,
        *,
        workflow_id: str = "",
        action_id: str = "",
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        self.add(log_entry(level, message, workflow_id, action_id, fields))

    def flush(self) -> None:
        """Hand everything buffered to the coordinator now."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if batch:
            self.coordinator.send_log_batch(batch)

    def stop(self) -> None:
        """Flush and stop the timer; idempotent."""
        self._stopped.set()
        self.flush()
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join(5.0)

    def flush_to_coordinator(self, *, final: bool) -> None:
        """Called by the coordinator before it delivers for the last time (``final``: it is
        closing, so stop buffering; the timer thread ends on its own)."""
        if final:
            self._stopped.set()
        self.flush()

    def _start_timer(self) -> None:
        ref = weakref.ref(self)
        self._timer = threading.Thread(
            target=_timer_loop,
            args=(ref, self._stopped, self.flush_interval),
            name="when-log-forwarder",
            daemon=True,
        )
        self._timer.start()


def _timer_loop(ref: weakref.ref[LogForwarder], stopped: threading.Event, interval: float) -> None:
    while not stopped.wait(interval):
        forwarder = ref()
        if forwarder is None:
            return
        try:
            forwarder.flush()
        except Exception:
            logging.getLogger(__name__).exception("log forwarder flush failed")
        del forwarder


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

# Extra fields that become the entry's own keys when their value is a string.
_ID_KEYS = {
    "trace_id": "trace_id",
    "traceID": "trace_id",
    "traceId": "trace_id",
    "span_id": "span_id",
    "spanID": "span_id",
    "spanId": "span_id",
    "workflow_id": "workflow_id",
    "workflowID": "workflow_id",
    "workflowId": "workflow_id",
    "action_id": "action_id",
    "actionID": "action_id",
    "actionId": "action_id",
    "correlation_id": "correlation_id",
    "correlationID": "correlation_id",
    "correlationId": "correlation_id",
}
# Set by OpenTelemetry's logging instrumentation; ours already come from the span context.
_OTEL_KEYS = frozenset({"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"})


class CoordinatorLogHandler(logging.Handler):
    """A ``logging.Handler`` that sends records to the hub, directly or through a forwarder.

    Records made on the client's own thread or by this package are skipped: forwarding them
    could feed the client its own output.
    """

    def __init__(
        self, target: Coordinator | LogForwarder, level: int | str = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self.target = target
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("when_coordinator") or (
            threading.current_thread().name == _CLIENT_THREAD
        ):
            return
        try:
            entry = self.to_entry(record)
            if isinstance(self.target, LogForwarder):
                self.target.add(entry)
            else:
                self.target.send_log(entry)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Hand what a target forwarder buffers to the coordinator (``logging.shutdown()`` at
        exit calls this too)."""
        if isinstance(self.target, LogForwarder):
            self.target.flush()

    def to_entry(self, record: logging.LogRecord) -> LogEntry:
        """Map a record as PROTOCOL.md section 7 says, plus the current trace and workflow."""
        ids: dict[str, str] = {}
        fields: dict[str, Any] = {}
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in _OTEL_KEYS:
                continue
            target = _ID_KEYS.get(key)
            if target is not None and isinstance(value, str):
                ids[target] = value
            else:
                fields[key] = value
        if record.exc_info:
            fields["exception"] = self._formatter.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = record.stack_info
        if "trace_id" not in ids:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                ids["trace_id"] = format(context.trace_id, "032x")
                ids.setdefault("span_id", format(context.span_id, "016x"))
        if "workflow_id" not in ids:
            # The running workflow, from the OpenTelemetry context (``_workflow_context``).
            current = _workflow_context.current()
            if current is not None:
                ids["workflow_id"] = current.id
                if current.action_id:
                    ids.setdefault("action_id", current.action_id)
        return LogEntry(
            timestamp=format_timestamp(int(record.created * 1_000_000_000)),
            level=level_for(record.levelno),
            message=record.getMessage(),
            fields=fields,
            source_file=record.pathname or "",
            source_line=record.lineno or 0,
            **ids,
        )
