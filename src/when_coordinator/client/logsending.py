"""The ``Coordinator``'s log API: ``log`` and ``log_batch`` messages, and the ``log_*``
helpers that file a message under a workflow.

A mixin of ``coordinator.Coordinator``, which queues what these build (``_enqueue``): like
every sending method, they never block and count what is shed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..protocol import LogEntry, LogLevel, MessageType
from ._checks import check_text
from ._util import WireLogBatch
from .encoding import log_entry_size, split_log_batch

if TYPE_CHECKING:
    from .core import ClientCore
    from .outbox import QueuedBody

__all__ = ["LogSending", "log_entry"]


def log_entry(
    level: LogLevel | str,
    message: str,
    workflow_id: str = "",
    action_id: str = "",
    fields: Mapping[str, Any] | None = None,
    *,
    correlation_id: str = "",
    trace_id: str = "",
    span_id: str = "",
) -> LogEntry:
    """A ``LogEntry`` from a caller's arguments, each checked (a clear error now rather than a
    record dropped when it is encoded); ``fields`` copied."""
    return LogEntry(
        level=LogLevel(level),
        message=check_text("message", message),
        workflow_id=check_text("workflow_id", workflow_id),
        action_id=check_text("action_id", action_id),
        correlation_id=check_text("correlation_id", correlation_id),
        trace_id=check_text("trace_id", trace_id),
        span_id=check_text("span_id", span_id),
        fields=dict(fields) if fields else {},
    )


class LogSending:
    """See the module docstring."""

    if TYPE_CHECKING:
        _core: ClientCore
        _enqueue: Callable[[MessageType | str, str, QueuedBody | None, int], bool]
        """``Coordinator._enqueue``: (type, workflow id, body, size estimate) queued."""

    def send_log(self, entry: LogEntry) -> bool:
        """Send one entry as a ``log`` message; a missing timestamp becomes now."""
        if not isinstance(entry, LogEntry):
            raise TypeError(f"send_log() takes a LogEntry, got {type(entry).__name__}")
        return self._enqueue(MessageType.LOG, "", entry, log_entry_size(entry))

    def send_log_batch(self, entries: Sequence[LogEntry]) -> bool:
        """Send entries as one ``log_batch``; missing timestamps become now."""
        batch = tuple(entries)
        for entry in batch:
            if not isinstance(entry, LogEntry):
                raise TypeError(
                    f"send_log_batch() takes LogEntry items, got {type(entry).__name__}"
                )
        if not batch:
            return True
        return self._enqueue_log_batches(batch, [log_entry_size(entry) for entry in batch])

    def send_wire_log_batch(self, batch: WireLogBatch, sizes: Sequence[int]) -> bool:
        """``send_log_batch`` for entries built in wire form (the log exporter's ``WireLog``),
        with their ``log_size`` estimates; split by frame size and the batch's ``max_entries``."""
        if type(batch) is not WireLogBatch:
            raise TypeError(
                f"send_wire_log_batch() takes a WireLogBatch, got {type(batch).__name__}"
            )
        if len(sizes) != len(batch):
            raise ValueError("send_wire_log_batch() needs one size per entry")
        if not batch:
            return True
        return self._enqueue_log_batches(batch, sizes)

    def _enqueue_log_batches(
        self, batch: tuple[LogEntry, ...] | WireLogBatch, sizes: Sequence[int]
    ) -> bool:
        """One ``log_batch``, or several when the entries would make a frame near the frame
        limit (half of it, by estimate; a frame over it is dropped), with one wake-up."""
        accepted = True
        with self._core.outbox.wakeups_held():
            for part, size in split_log_batch(batch, sizes, self._core.frame_limit // 2):
                accepted = self._enqueue(MessageType.LOG_BATCH, "", part, 80 + size) and accepted
        return accepted

    def log_with_context(
        self,
        level: LogLevel | str,
        message: str,
        workflow_id: str = "",
        action_id: str = "",
        fields: Mapping[str, Any] | None = None,
        *,
        correlation_id: str = "",
        trace_id: str = "",
        span_id: str = "",
    ) -> bool:
        """Send one ``log`` with the workflow context the hub files it under."""
        entry = log_entry(
            level,
            message,
            workflow_id,
            action_id,
            fields,
            correlation_id=correlation_id,
            trace_id=trace_id,
            span_id=span_id,
        )
        return self._enqueue(MessageType.LOG, "", entry, log_entry_size(entry))

    def log_debug(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.DEBUG, message, fields=fields)

    def log_info(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.INFO, message, fields=fields)

    def log_warn(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.WARN, message, fields=fields)

    def log_error(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.ERROR, message, fields=fields)
