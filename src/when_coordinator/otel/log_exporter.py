"""``CoordinationLogExporter``: OpenTelemetry log records to the hub as ``log_batch``.

Put it behind a ``BatchLogRecordProcessor`` (the instrumentor does): export runs on the
processor's thread, maps records to protocol log entries and hands one ``log_batch`` per export
(split to a bounded size) to the coordinator's outbox. The same records can go to an OTLP
exporter at the same time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from ..client import Coordinator
from ..client._util import RateLimitedLog, jsonable
from ..protocol import LogEntry, LogLevel, format_timestamp
from . import attributes as attr
from ._sdk_logs import ExportResult, LogExporterBase, record_of, scope_name_of
from .tracking import get_coordinator, tracker_for

__all__ = ["CoordinationLogExporter", "level_for_severity"]

_log = logging.getLogger(__name__)

# Attributes that become the entry's own keys rather than ``fields``, by the key they fill.
# The first-listed spelling wins when a record carries several.
_ROLES: dict[str, tuple[str, int]] = {}
for _role, _keys in (
    ("workflow_id", (attr.WORKFLOW_ID, "workflow_id", "workflowID", "workflowId")),
    ("action_id", (attr.ACTION_ID, "action_id", "actionID", "actionId")),
    ("correlation_id", ("correlation_id", "correlationID", "correlationId")),
    ("source_file", ("code.file.path", "code.filepath")),
    ("source_line", ("code.line.number", "code.lineno")),
):
    for _rank, _key in enumerate(_keys):
        _ROLES[_key] = (_role, _rank)

_SEVERITY_TEXT = {
    "trace": LogLevel.DEBUG,
    "debug": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "information": LogLevel.INFO,
    "warn": LogLevel.WARN,
    "warning": LogLevel.WARN,
    "error": LogLevel.ERROR,
    "critical": LogLevel.FATAL,
    "fatal": LogLevel.FATAL,
}


def level_for_severity(number: int | None, text: str | None = None) -> LogLevel:
    """OpenTelemetry severity (1-24, or its text) to the protocol's five levels."""
    if number:
        if number <= 8:  # TRACE 1-4, DEBUG 5-8
            return LogLevel.DEBUG
        if number <= 12:
            return LogLevel.INFO
        if number <= 16:
            return LogLevel.WARN
        if number <= 20:
            return LogLevel.ERROR
        return LogLevel.FATAL
    return _SEVERITY_TEXT.get((text or "").lower(), LogLevel.INFO)


class CoordinationLogExporter(LogExporterBase):
    """A ``LogRecordExporter`` that sends to the hub; uses the default coordinator unless
    given one. Errors are counted in ``errors`` and never raised."""

    def __init__(self, coordinator: Coordinator | None = None, *, max_batch: int = 100) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._coordinator = coordinator
        self.max_batch = max_batch
        self.errors = 0
        self.exported = 0
        self._shutdown = False
        self.enabled = True
        """Off: batches are accepted and discarded (processors cannot leave a provider)."""
        self._warn = RateLimitedLog(_log)

    def use(self, coordinator: Coordinator) -> None:
        """Send to ``coordinator`` from now on, and switch on."""
        previous, self._coordinator = self._coordinator, coordinator
        if previous is not None and previous is not coordinator:
            previous.release(self)
        coordinator.retain(self)
        self.enabled = True

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            self._coordinator = get_coordinator()
            # The SDK's final export runs at exit, possibly after the coordinator's own exit
            # handler: keep it open until this exporter shuts down.
            self._coordinator.retain(self)
        return self._coordinator

    def export(self, batch: Sequence[Any]) -> ExportResult:
        if self._shutdown:
            return ExportResult.FAILURE
        if not self.enabled:
            return ExportResult.SUCCESS
        try:
            coordinator = self.coordinator
            tracker = tracker_for(coordinator)
            entries: list[LogEntry] = []
            for item in batch:
                if scope_name_of(item).startswith("when_coordinator"):
                    continue  # our own records: sending them could feed on itself
                try:
                    entries.append(self._entry(record_of(item), tracker.owner))
                except Exception:
                    self.errors += 1
                    self._warn.log(
                        logging.WARNING, "record", "unmappable log record", exc_info=True
                    )
            for start in range(0, len(entries), self.max_batch):
                coordinator.send_log_batch(entries[start : start + self.max_batch])
            self.exported += len(entries)
            return ExportResult.SUCCESS
        except Exception:
            self.errors += 1
            self._warn.log(logging.WARNING, "export", "log export failed", exc_info=True)
            return ExportResult.FAILURE

    @staticmethod
    def _entry(record: Any, owner_of: Any) -> LogEntry:
        """Map one record; one pass over its attributes (the SDK's mapping locks per read)."""
        own: dict[str, Any] = {}
        ranks: dict[str, int] = {}
        fields: dict[str, Any] = {}
        if record.attributes:
            for key, value in record.attributes.items():
                role = _ROLES.get(key)
                if role is None:
                    fields[key] = value
                elif value is not None and value != "" and role[1] < ranks.get(role[0], 99):
                    own[role[0]] = value
                    ranks[role[0]] = role[1]
        trace_id = record.trace_id or 0
        span_id = record.span_id or 0
        workflow_id = own.get("workflow_id")
        if workflow_id is None and span_id:
            owner = owner_of(span_id)
            if owner is not None:
                workflow_id = owner[0]
        body = record.body
        if isinstance(body, str):
            message = body
        elif body is None:
            message = ""
        else:
            message = json.dumps(jsonable(body), separators=(",", ":"))
        line = own.get("source_line", 0)
        timestamp = record.timestamp or record.observed_timestamp
        return LogEntry(
            format_timestamp(timestamp) if timestamp else format_timestamp(),
            level_for_severity(
                getattr(record.severity_number, "value", None), record.severity_text
            ),
            message,
            format(trace_id, "032x") if trace_id else "",
            format(span_id, "016x") if span_id else "",
            str(workflow_id or ""),
            str(own.get("action_id") or ""),
            str(own.get("correlation_id") or ""),
            fields,  # made JSON-safe by the client only if it does not encode as it is
            str(own.get("source_file") or ""),
            line if isinstance(line, int) and not isinstance(line, bool) else 0,
        )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Deliver what the coordinator holds; True when nothing is left undelivered."""
        try:
            coordinator = self.coordinator
            if not coordinator.config.enabled:
                return True
            return coordinator.flush(timeout_millis / 1000)
        except Exception:
            self.errors += 1
            return False

    def shutdown(self) -> None:
        """Stop exporting and deliver what was handed over (within the coordinator's
        ``close_timeout``); the coordinator is shared and stays open unless the process is
        exiting and this was its last user."""
        self._shutdown = True
        coordinator = self._coordinator
        if coordinator is None:
            return
        try:
            if coordinator.config.enabled:
                coordinator.flush(coordinator.config.close_timeout)
        except Exception:
            self.errors += 1
        finally:
            coordinator.release(self)
