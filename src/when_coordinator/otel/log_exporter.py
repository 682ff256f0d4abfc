"""``CoordinationLogExporter``: OpenTelemetry log records to the hub as ``log_batch``.

Put it behind a ``BatchLogRecordProcessor`` (the instrumentor does): export runs on the
processor's thread, maps records to protocol log entries and hands one ``log_batch`` per export
(split to a bounded size) to the coordinator's outbox. The same records can go to an OTLP
exporter at the same time.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._compat.otel import (
    ExportResult,
    LogExporterBase,
    SeverityNumber,
    attribute_items,
    record_of,
    scope_name_of,
)
from ..client import Coordinator
from ..client._util import RateLimitedLog, WireLog, WireLogBatch, jsonable, log_size
from ..protocol import LogLevel, format_timestamp
from . import attributes as attr
from .tracking import get_coordinator, tracker_for

__all__ = [
    "CoordinationLogExporter",
    "bind_unbound_exporters",
    "is_telemetry_logger",
    "level_for_severity",
]

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

_ROLE_KEYS = frozenset(_ROLES)

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


_LEVEL_NAMES = tuple(level_for_severity(number).value if number else "" for number in range(25))


def _split(items: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Attributes that fill the entry's own keys (by role, the first-listed spelling winning
    when a record carries several, empty values skipped), and the rest: its ``fields``."""
    own: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    for key, value in items.items():
        role = _ROLES.get(key)
        if role is None:
            fields[key] = value
        elif value is not None and value != "" and role[1] < ranks.get(role[0], 99):
            own[role[0]] = value
            ranks[role[0]] = role[1]
    return own, fields


def _own_keys(own: Mapping[str, Any]) -> tuple[str, str, str, str, int]:
    """The entry's workflow, action and correlation ids, source file and line from the
    attributes ``_split`` found for them; a key with no usable value is empty (omitted)."""
    workflow_id = own.get("workflow_id")
    action_id = own.get("action_id")
    correlation_id = own.get("correlation_id")
    source_file = own.get("source_file")
    line = own.get("source_line")
    return (
        str(workflow_id) if workflow_id else "",
        str(action_id) if action_id else "",
        str(correlation_id) if correlation_id else "",
        str(source_file) if source_file else "",
        line if line and isinstance(line, int) and not isinstance(line, bool) else 0,
    )


def _level_name(severity: Any, text: str | None) -> str:
    # The SDK's severities are SeverityNumber members; hashing an Enum runs Python code, so
    # the level is found by the member's value instead.
    if severity.__class__ is SeverityNumber:
        number = severity.value
        if number:
            return _LEVEL_NAMES[number]
    return level_for_severity(getattr(severity, "value", None), text).value


_NO_SCOPE = object()


_unbound: weakref.WeakSet[CoordinationLogExporter] = weakref.WeakSet()
"""Exporters made without a coordinator that have not looked up the default one yet."""


def bind_unbound_exporters(coordinator: Coordinator) -> list[CoordinationLogExporter]:
    """Point the exporters made without a coordinator (the SDK configuration's, from
    ``OTEL_LOGS_EXPORTER=when``, made before any coordinator existed) at ``coordinator`` now.

    Bound, they keep it open at exit until their provider's final export has run through
    them (``Coordinator.retain``); left to find it at their first export, a process that
    exits sooner closed it first and lost what they held.
    """
    bound = list(_unbound)
    for exporter in bound:
        exporter.use(coordinator)
    return bound


def is_telemetry_logger(name: str) -> bool:
    """Whether records of the logger (or instrumentation scope) ``name`` are telemetry
    reporting on itself: this package's and OpenTelemetry's (the SDK, its exporters).

    Fed back into a logs pipeline they loop: an OTLP exporter that cannot reach its endpoint
    logs each failure, the record is exported, fails and is logged again, and a flush of that
    pipeline never ends.
    """
    return name.startswith(("when_coordinator", "opentelemetry.")) or name == "opentelemetry"


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
        if coordinator is None:
            _unbound.add(self)

    def use(self, coordinator: Coordinator) -> None:
        """Send to ``coordinator`` from now on, and switch on."""
        previous, self._coordinator = self._coordinator, coordinator
        if previous is not None and previous is not coordinator:
            previous.release(self)
        coordinator.retain(self)
        _unbound.discard(self)
        self.enabled = True

    def unbind(self) -> None:
        """Forget the coordinator (released): the default one is looked up at the next export."""
        previous, self._coordinator = self._coordinator, None
        if previous is not None:
            previous.release(self)
        _unbound.add(self)

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
            wires, sizes = self._wires(batch, tracker_for(coordinator).owner, self._unmappable)
            if wires:  # ``max_batch`` entries a message, queued with one wake-up of the client
                coordinator.send_wire_log_batch(WireLogBatch(wires, self.max_batch), sizes)
            self.exported += len(wires)
            return ExportResult.SUCCESS
        except Exception:
            self.errors += 1
            self._warn.log(logging.WARNING, "export", "log export failed", exc_info=True)
            return ExportResult.FAILURE

    def _unmappable(self) -> None:
        """Count the record being mapped as an error (called while its exception is handled)."""
        self.errors += 1
        self._warn.log(logging.WARNING, "record", "unmappable log record", exc_info=True)

    @staticmethod
    def _wires(
        batch: Sequence[Any],
        owner_of: Callable[[int], tuple[str, str] | None],
        unmappable: Callable[[], None],
    ) -> tuple[list[WireLog], list[int]]:
        """Map a batch of records straight to their wire form (``LogEntry``'s keys, order and
        omissions) and the outbox's size estimate of each (``log_size``).

        This runs for every record, on a thread that shares the GIL with the application's
        logging, so it is one loop with what records of a batch share kept from one record to
        the next rather than computed again: the scope's verdict, the level of the severity,
        the hex of the trace and span ids and the workflow that owns the span (the second of
        the timestamp is ``format_timestamp``'s own cache). Records without the attributes
        that fill an entry's own keys (most) take their ``fields`` in one copy. A record that
        cannot be mapped is left out and reported to ``unmappable``.
        """
        wires: list[WireLog] = []
        sizes: list[int] = []
        scope: Any = _NO_SCOPE
        ours = False
        severity_seen: Any = _NO_SCOPE
        level = ""
        trace_seen, trace_hex = 0, ""
        span_seen, span_hex = 0, ""
        owned_span, owner = 0, ""
        for item in batch:
            if getattr(item, "instrumentation_scope", None) is not scope:  # few per batch
                scope = getattr(item, "instrumentation_scope", None)
                ours = is_telemetry_logger(scope_name_of(item))
            if ours:
                continue  # telemetry about itself: sending it could feed on itself
            try:
                record = record_of(item)
                attributes = record.attributes
                own: dict[str, Any] | None = None
                # The record is finished by the time it is exported: read without the lock.
                items = attribute_items(attributes) if attributes is not None else None
                if not items:
                    fields: dict[str, Any] = {}
                elif not _ROLE_KEYS.isdisjoint(items):
                    own, fields = _split(items)
                elif type(items) is dict:
                    fields = items.copy()
                else:
                    fields = dict(items)
                body = record.body
                if isinstance(body, str):
                    message = body
                elif body is None:
                    message = ""
                else:
                    message = json.dumps(jsonable(body), separators=(",", ":"))
                timestamp = format_timestamp(record.timestamp or record.observed_timestamp or None)
                severity = record.severity_number
                if severity is not severity_seen:
                    level = _level_name(severity, record.severity_text)
                    # Only a number decides alone; the text may differ from record to record.
                    cacheable = severity.__class__ is SeverityNumber and severity.value
                    severity_seen = severity if cacheable else _NO_SCOPE
                trace_id = record.trace_id
                if trace_id != trace_seen:
                    trace_seen = trace_id
                    trace_hex = format(trace_id, "032x") if trace_id else ""
                span_id = record.span_id
                if span_id != span_seen:
                    span_seen = span_id
                    span_hex = format(span_id, "016x") if span_id else ""
                workflow_id = action_id = correlation_id = source_file = ""
                source_line = 0
                if own is not None:
                    workflow_id, action_id, correlation_id, source_file, source_line = _own_keys(
                        own
                    )
                if not workflow_id and span_id and (own is None or "workflow_id" not in own):
                    if span_id != owned_span:
                        owned_span = span_id
                        found = owner_of(span_id)
                        owner = str(found[0]) if found is not None and found[0] else ""
                    workflow_id = owner
                wires.append(
                    WireLog(
                        timestamp,
                        level,
                        message,
                        trace_hex,
                        span_hex,
                        workflow_id,
                        action_id,
                        correlation_id,
                        fields,  # made JSON-safe by the client only if it does not encode
                        source_file,
                        source_line,
                    )
                )
                sizes.append(log_size(message, fields))
            except Exception:
                unmappable()
        return wires, sizes

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
        ``close_timeout``, or what is left of it at exit); the coordinator is shared and stays
        open unless the process is exiting and this was its last user."""
        self._shutdown = True
        coordinator = self._coordinator
        if coordinator is None:
            return
        try:
            if coordinator.config.enabled:
                coordinator.flush_final()
        except Exception:
            self.errors += 1
        finally:
            coordinator.release(self)
