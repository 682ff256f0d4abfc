"""What the reference hub knows: connections, services, workflows and logs, without any I/O.

``HubState`` is the hub's bookkeeping as a plain object driven by method calls that take the
current time as an argument, so every rule here (registration, version negotiation, phase
history, anomaly detection, health, bounded buffers) is unit-testable without sockets or
clocks. The server (``server.py``) feeds it decoded messages and reads back what changed.

Records are mutable dataclasses updated in place, because the hub applies one change per
received message and copying a record for each would cost more than the networking. Sequences
inside a record (history, checkpoints, errors, anomalies, children) are tuples that are
replaced, never mutated, so a shallow ``copy()`` of a record is a consistent snapshot.

The hub mirrors what services report and trusts them: a ``phase_changed`` is applied even when
the transition table does not allow it, but anything unexpected (duplicates, skipped
transitions, forbidden transitions, traffic before ``register``, stray pongs) is recorded as an
anomaly on the workflow or service, counted, and never fatal. The reference Go client produces
all of these (PROTOCOL.md section 5).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar

from ..protocol import (
    CheckpointPayload,
    ErrorPayload,
    LogBatchPayload,
    LogEntry,
    LogLevel,
    LogPayload,
    Message,
    MessageType,
    Phase,
    PhaseChangedPayload,
    ProgressPayload,
    ProtocolError,
    RegisterPayload,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    can_transition,
)
from .bounds import ITEM_OVERHEAD, HubLimits, cut, json_size

__all__ = [
    "HUB_PROTOCOL_VERSION",
    "Anomaly",
    "Changes",
    "CheckpointEvent",
    "CheckpointRecord",
    "ConnectionState",
    "ErrorEvent",
    "ErrorRecord",
    "Event",
    "Health",
    "HubState",
    "LogBuffer",
    "LogEvent",
    "LogRecord",
    "PhaseChange",
    "PhaseEvent",
    "Registration",
    "ServiceState",
    "Snapshot",
    "VersionRefused",
    "WorkflowState",
    "negotiate_version",
]

HUB_PROTOCOL_VERSION = "1.1"
"""The protocol version this hub speaks; clients with the same major version are accepted."""

_SERVICE_TO_HUB = frozenset(
    {
        MessageType.WORKFLOW_CREATED,
        MessageType.PHASE_CHANGED,
        MessageType.CHECKPOINT,
        MessageType.ERROR,
        MessageType.PROGRESS,
        MessageType.STATUS_RESPONSE,
        MessageType.PONG,
        MessageType.LOG,
        MessageType.LOG_BATCH,
    }
)


class Health(str, Enum):
    """A service's liveness as the hub sees it."""

    HEALTHY = "healthy"
    """Connected, and every ping older than the pong timeout has been answered."""
    LATE = "late"
    """Connected, but a ping has waited longer than the pong timeout."""
    DISCONNECTED = "disconnected"

    def __str__(self) -> str:
        return self.value


class VersionRefused(ProtocolError):
    """A ``register`` whose protocol version this hub cannot speak; the text is the close reason."""


_VERSION_RE = re.compile(r"(\d{1,6})(?:\.(\d{1,6}))?")


def _parse_version(text: str) -> tuple[int, int] | None:
    match = _VERSION_RE.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def negotiate_version(client: str, hub: str = HUB_PROTOCOL_VERSION) -> str:
    """The version both sides speak: same major, the lower minor. Raises ``VersionRefused``.

    An empty client version means the protocol default, ``1.0``.
    """
    hub_version = _parse_version(hub)
    if hub_version is None:
        raise ValueError(f"hub protocol version {hub!r} is not MAJOR.MINOR")
    client_version = _parse_version(client or "1.0")
    if client_version is None:
        raise VersionRefused(f"protocol version {client[:20]!r} is not MAJOR.MINOR")
    if client_version[0] != hub_version[0]:
        raise VersionRefused(
            f"protocol version {client_version[0]}.{client_version[1]} not supported: "
            f"this hub speaks {hub_version[0]}.x (up to {hub})"
        )
    return f"{hub_version[0]}.{min(client_version[1], hub_version[1])}"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class PhaseChange:
    """One ``phase_changed`` as applied: ``from_phase`` as the service reported it.

    ``at`` is the hub's receive time (epoch seconds); ``timestamp`` the message's own.
    """

    from_phase: Phase | None
    to_phase: Phase
    reason: str = ""
    checkpoint_id: str = ""
    at: float = 0.0
    timestamp: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": "" if self.from_phase is None else self.from_phase.value,
            "to": self.to_phase.value,
            "reason": self.reason,
            "checkpoint_id": self.checkpoint_id,
            "at": self.at,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseChange:
        source = data.get("from") or ""
        return cls(
            from_phase=Phase(source) if source else None,
            to_phase=Phase(data["to"]),
            reason=str(data.get("reason", "")),
            checkpoint_id=str(data.get("checkpoint_id", "")),
            at=float(data.get("at", 0.0)),
            timestamp=str(data.get("timestamp", "")),
        )


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A checkpoint a workflow reported, by a ``checkpoint`` message or on a ``phase_changed``."""

    checkpoint_id: str
    reason: str = ""
    at: float = 0.0
    timestamp: str = ""
    state: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checkpoint_id": self.checkpoint_id,
            "reason": self.reason,
            "at": self.at,
            "timestamp": self.timestamp,
        }
        if self.state is not None:
            out["state"] = dict(self.state)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointRecord:
        state = data.get("state")
        return cls(
            checkpoint_id=str(data["checkpoint_id"]),
            reason=str(data.get("reason", "")),
            at=float(data.get("at", 0.0)),
            timestamp=str(data.get("timestamp", "")),
            state=dict(state) if isinstance(state, dict) else None,
        )


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An ``error`` message a workflow reported."""

    error: str
    recoverable: bool = False
    action_id: str = ""
    at: float = 0.0
    timestamp: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "recoverable": self.recoverable,
            "action_id": self.action_id,
            "at": self.at,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorRecord:
        return cls(
            error=str(data.get("error", "")),
            recoverable=bool(data.get("recoverable", False)),
            action_id=str(data.get("action_id", "")),
            at=float(data.get("at", 0.0)),
            timestamp=str(data.get("timestamp", "")),
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A log entry as received, with the service that sent it and the hub's receive time."""

    entry: LogEntry
    service_id: str = ""
    at: float = 0.0

    @property
    def workflow_id(self) -> str:
        return self.entry.workflow_id

    @property
    def level(self) -> str:
        return str(self.entry.level)

    @property
    def message(self) -> str:
        return self.entry.message

    def as_dict(self) -> dict[str, Any]:
        return {"service_id": self.service_id, "at": self.at, **self.entry.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogRecord:
        entry = {k: v for k, v in data.items() if k not in ("service_id", "at")}
        return cls(
            entry=LogEntry.from_dict(entry),
            service_id=str(data.get("service_id", "")),
            at=float(data.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something a service did that the protocol does not expect; recorded, never fatal."""

    text: str
    service_id: str = ""
    workflow_id: str = ""
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "service_id": self.service_id,
            "workflow_id": self.workflow_id,
            "at": self.at,
        }


_R = TypeVar("_R")


_RESENT_WINDOW = 64
"""How far back a workflow's history, checkpoints and errors are searched for a resend."""


class _Stamped(Protocol):
    @property
    def timestamp(self) -> str: ...


_S = TypeVar("_S", bound=_Stamped)


def _resent(records: tuple[_S, ...], timestamp: str, same: Callable[[_S], bool]) -> bool:
    """Whether the message is one already applied, sent again.

    After a lost connection a client sends what the hub had not acknowledged again, frame
    for frame; its timestamp (to the nanosecond) and content then equal a recent record's.
    Applied twice, a resent ``phase_changed`` would move the workflow back to an older phase.
    """
    if not timestamp:
        return False
    for index in range(len(records) - 1, max(-1, len(records) - 1 - _RESENT_WINDOW), -1):
        record = records[index]
        if record.timestamp == timestamp and same(record):
            return True
    return False


def _append(items: tuple[_R, ...], item: _R, limit: int) -> tuple[_R, ...]:
    """A new tuple with ``item`` appended, keeping the newest ``limit``."""
    if len(items) >= limit:
        return (*items[len(items) - limit + 1 :], item) if limit > 0 else ()
    return (*items, item)


_LISTS = ("history", "checkpoints", "errors")
_MAX_CAPABILITIES = 64
"""Capabilities kept of one ``register`` (each cut at 256 characters)."""
_LISTED = ITEM_OVERHEAD + 300
"""Bytes counted per child id and per anomaly text of a workflow (anomaly texts are cut at
600 characters, most are far shorter)."""
_WORKFLOW_OVERHEAD = 1_000 + 6 * 1_024
"""Bytes counted for a workflow's record itself, its six ids counted at ``max_id``'s default."""

_Record = Any  # PhaseChange | CheckpointRecord | ErrorRecord


def _record_size(record: _Record) -> int:
    """Estimated bytes of a history, checkpoint or error record (a checkpoint's ``state``
    is counted apart, against ``HubLimits.checkpoint_state_bytes``)."""
    if isinstance(record, PhaseChange):
        text = len(record.reason) + len(record.checkpoint_id)
    elif isinstance(record, CheckpointRecord):
        text = len(record.checkpoint_id) + len(record.reason)
    else:
        text = len(record.error) + len(record.action_id)
    return 3 * ITEM_OVERHEAD + text + len(record.timestamp)


@dataclass(slots=True)
class WorkflowState:
    """One workflow as the hub knows it: tree position, phase, progress and what happened.

    ``announced`` is False while the hub has seen traffic for the workflow but no
    ``workflow_created`` (normal after a hub restart: clients replay phases only).
    ``connection_id`` is the connection that last spoke about the workflow; commands go there.
    """

    workflow_id: str
    service_id: str = ""
    connection_id: str = ""
    parent_workflow_id: str = ""
    root_workflow_id: str = ""
    children: tuple[str, ...] = ()
    action_id: str = ""
    action_type: str = ""
    phase: Phase = Phase.PENDING
    previous_phase: Phase | None = None
    reason: str = ""
    checkpoint_id: str = ""
    progress: float = 0.0
    stage: str = ""
    message: str = ""
    current_item: int = 0
    total_items: int = 0
    current_action: str = ""
    history: tuple[PhaseChange, ...] = ()
    checkpoints: tuple[CheckpointRecord, ...] = ()
    errors: tuple[ErrorRecord, ...] = ()
    anomalies: tuple[str, ...] = ()
    anomaly_count: int = 0
    log_count: int = 0
    announced: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def is_terminal(self) -> bool:
        return self.phase.is_terminal

    def copy(self) -> WorkflowState:
        """A snapshot that later changes to this record do not affect."""
        return dataclasses.replace(self)

    def as_dict(self, *, full: bool = True) -> dict[str, Any]:
        """JSON-ready; ``full=False`` leaves out the lists and gives their sizes instead."""
        out: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "service_id": self.service_id,
            "parent_workflow_id": self.parent_workflow_id,
            "root_workflow_id": self.root_workflow_id,
            "children": list(self.children),
            "action_id": self.action_id,
            "action_type": self.action_type,
            "phase": self.phase.value,
            "previous_phase": "" if self.previous_phase is None else self.previous_phase.value,
            "reason": self.reason,
            "checkpoint_id": self.checkpoint_id,
            "progress": self.progress,
            "stage": self.stage,
            "message": self.message,
            "current_item": self.current_item,
            "total_items": self.total_items,
            "current_action": self.current_action,
            "anomaly_count": self.anomaly_count,
            "log_count": self.log_count,
            "error_count": len(self.errors),
            "last_error": self.errors[-1].error if self.errors else "",
            "announced": self.announced,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if full:
            out["history"] = [change.as_dict() for change in self.history]
            out["checkpoints"] = [record.as_dict() for record in self.checkpoints]
            out["errors"] = [record.as_dict() for record in self.errors]
            out["anomalies"] = list(self.anomalies)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowState:
        """Rebuild from ``as_dict(full=True)``; raises ``KeyError``/``ValueError`` on bad data."""
        previous = data.get("previous_phase") or ""
        return cls(
            workflow_id=str(data["workflow_id"]),
            service_id=str(data.get("service_id", "")),
            parent_workflow_id=str(data.get("parent_workflow_id", "")),
            root_workflow_id=str(data.get("root_workflow_id", "")),
            children=tuple(str(c) for c in data.get("children", ())),
            action_id=str(data.get("action_id", "")),
            action_type=str(data.get("action_type", "")),
            phase=Phase(data.get("phase", "pending")),
            previous_phase=Phase(previous) if previous else None,
            reason=str(data.get("reason", "")),
            checkpoint_id=str(data.get("checkpoint_id", "")),
            progress=float(data.get("progress", 0.0)),
            stage=str(data.get("stage", "")),
            message=str(data.get("message", "")),
            current_item=int(data.get("current_item", 0)),
            total_items=int(data.get("total_items", 0)),
            current_action=str(data.get("current_action", "")),
            history=tuple(PhaseChange.from_dict(c) for c in data.get("history", ())),
            checkpoints=tuple(CheckpointRecord.from_dict(c) for c in data.get("checkpoints", ())),
            errors=tuple(ErrorRecord.from_dict(e) for e in data.get("errors", ())),
            anomalies=tuple(str(a) for a in data.get("anomalies", ())),
            anomaly_count=int(data.get("anomaly_count", 0)),
            log_count=int(data.get("log_count", 0)),
            announced=bool(data.get("announced", False)),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
        )


@dataclass(slots=True)
class ServiceState:
    """A service (by service id) and its current or last connection."""

    service_id: str
    service_name: str = ""
    instance_id: str = ""
    version: str = ""
    capabilities: tuple[str, ...] = ()
    protocol_version: str = ""
    schema_version: int = 0
    header_service_name: str = ""
    header_service_id: str = ""
    registered: bool = False
    connected: bool = False
    health: Health = Health.DISCONNECTED
    connection_id: str = ""
    remote: str = ""
    connections: int = 0
    messages: int = 0
    first_seen: float = 0.0
    connected_at: float = 0.0
    disconnected_at: float = 0.0
    last_seen: float = 0.0
    last_ping_at: float = 0.0
    last_pong_at: float = 0.0
    rtt: float | None = None
    pending_pings: tuple[tuple[str, float], ...] = ()
    close_code: int | None = None
    close_reason: str = ""
    anomalies: tuple[str, ...] = ()
    anomaly_count: int = 0

    def copy(self) -> ServiceState:
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service_id": self.service_id,
            "service_name": self.service_name,
            "instance_id": self.instance_id,
            "version": self.version,
            "capabilities": list(self.capabilities),
            "protocol_version": self.protocol_version,
            "schema_version": self.schema_version,
            "header_service_name": self.header_service_name,
            "header_service_id": self.header_service_id,
            "registered": self.registered,
            "connected": self.connected,
            "health": self.health.value,
            "connection_id": self.connection_id,
            "remote": self.remote,
            "connections": self.connections,
            "messages": self.messages,
            "first_seen": self.first_seen,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "last_seen": self.last_seen,
            "last_ping_at": self.last_ping_at,
            "last_pong_at": self.last_pong_at,
            "rtt": self.rtt,
            "pending_pings": len(self.pending_pings),
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "anomalies": list(self.anomalies),
            "anomaly_count": self.anomaly_count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceState:
        """Rebuild a persisted service; it is disconnected until it connects again."""
        code = data.get("close_code")
        rtt = data.get("rtt")
        return cls(
            service_id=str(data["service_id"]),
            service_name=str(data.get("service_name", "")),
            instance_id=str(data.get("instance_id", "")),
            version=str(data.get("version", "")),
            capabilities=tuple(str(c) for c in data.get("capabilities", ())),
            protocol_version=str(data.get("protocol_version", "")),
            schema_version=int(data.get("schema_version", 0)),
            header_service_name=str(data.get("header_service_name", "")),
            header_service_id=str(data.get("header_service_id", "")),
            registered=bool(data.get("registered", False)),
            remote=str(data.get("remote", "")),
            connections=int(data.get("connections", 0)),
            messages=int(data.get("messages", 0)),
            first_seen=float(data.get("first_seen", 0.0)),
            connected_at=float(data.get("connected_at", 0.0)),
            disconnected_at=float(data.get("disconnected_at", 0.0)),
            last_seen=float(data.get("last_seen", 0.0)),
            last_ping_at=float(data.get("last_ping_at", 0.0)),
            last_pong_at=float(data.get("last_pong_at", 0.0)),
            rtt=float(rtt) if isinstance(rtt, (int, float)) else None,
            close_code=int(code) if isinstance(code, int) else None,
            close_reason=str(data.get("close_reason", "")),
            anomalies=tuple(str(a) for a in data.get("anomalies", ())),
            anomaly_count=int(data.get("anomaly_count", 0)),
        )


@dataclass(slots=True)
class ConnectionState:
    """One WebSocket connection on the coordination path, open or recently closed.

    The counters are per connection so that a misbehaving client is visible as itself:
    ``invalid_frames`` (not JSON, wrong types, binary), ``throttled`` (dropped by the rate
    limit) and ``ignored`` (unknown or hub-to-service message types).
    """

    connection_id: str
    path: str = ""
    remote: str = ""
    header_service_name: str = ""
    header_service_id: str = ""
    service_id: str = ""
    registered: bool = False
    opened_at: float = 0.0
    closed_at: float | None = None
    messages: int = 0
    invalid_frames: int = 0
    invalid_reasons: tuple[str, ...] = ()
    throttled: int = 0
    ignored: int = 0
    close_code: int | None = None
    close_reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def copy(self) -> ConnectionState:
        return dataclasses.replace(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id,
            "path": self.path,
            "remote": self.remote,
            "header_service_name": self.header_service_name,
            "header_service_id": self.header_service_id,
            "service_id": self.service_id,
            "registered": self.registered,
            "open": self.is_open,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "messages": self.messages,
            "invalid_frames": self.invalid_frames,
            "invalid_reasons": list(self.invalid_reasons),
            "throttled": self.throttled,
            "ignored": self.ignored,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
        }


_PackedLog = tuple[Any, ...]


def _pack(record: LogRecord) -> _PackedLog:
    """A record as one flat tuple of strings and numbers, its fields as key, value, ...

    The garbage collector stops tracking a tuple of such values the first time it sees it,
    whereas every ``LogRecord`` and ``LogEntry`` object stays tracked: a hub holding a hundred
    thousand records as objects pays for scanning them all in every full collection (pauses of
    a hundred milliseconds and more under load), and nothing for them as tuples. Nesting (a
    dict, or a tuple of pairs) would keep the record tracked for several collections more.
    """
    e = record.entry
    level = e.level.value if isinstance(e.level, LogLevel) else e.level
    head = (
        record.service_id,
        record.at,
        e.timestamp,
        level,
        e.message,
        e.trace_id,
        e.span_id,
        e.workflow_id,
        e.action_id,
        e.correlation_id,
        e.source_file,
        e.source_line,
    )
    return head + tuple(itertools.chain.from_iterable(e.fields.items())) if e.fields else head


def _unpack(packed: _PackedLog) -> LogRecord:
    service_id, at, timestamp, level, message, trace_id, span_id, *rest = packed
    workflow_id, action_id, correlation_id, source_file, source_line, *fields = rest
    entry = LogEntry(
        timestamp=timestamp,
        level=level,
        message=message,
        trace_id=trace_id,
        span_id=span_id,
        workflow_id=workflow_id,
        action_id=action_id,
        correlation_id=correlation_id,
        fields=dict(zip(fields[::2], fields[1::2], strict=True)),
        source_file=source_file,
        source_line=source_line,
    )
    return LogRecord(entry, service_id, at)


def _packed_size(packed: _PackedLog) -> int:
    """Estimated bytes of a packed record: its strings by length, nested field values by
    their JSON length, and a fixed overhead per value."""
    size = ITEM_OVERHEAD
    for value in packed:
        if isinstance(value, str):
            size += len(value) + 16
        elif isinstance(value, (int, float)) or value is None:
            size += 16
        else:
            size += json_size(value) + 16
    return size


class LogBuffer:
    """A buffer of log records bounded by count and by bytes that counts what it evicted.

    Records are kept packed (see ``_pack``) and rebuilt as ``LogRecord`` when read, so reads
    give equal records, not the same objects. ``max_bytes`` bounds the estimated size
    (``_packed_size``); one record larger than the bound is kept alone.
    """

    __slots__ = ("bytes", "entries", "evicted", "max_bytes", "maxlen", "sizes", "total")

    def __init__(self, maxlen: int, max_bytes: int | None = None) -> None:
        self.entries: deque[_PackedLog] = deque()
        self.sizes: deque[int] = deque()
        self.maxlen = max(0, maxlen)
        self.max_bytes = max_bytes
        self.bytes = 0
        """Estimated bytes held."""
        self.evicted = 0
        """Records pushed out by newer ones."""
        self.total = 0
        """Records ever appended."""

    def append(self, record: LogRecord) -> None:
        packed = _pack(record)
        self._append(packed, _packed_size(packed))

    def _append(self, packed: _PackedLog, size: int) -> int:
        """Append; returns the bytes evicted to make room."""
        self.total += 1
        if self.maxlen == 0:
            self.evicted += 1
            return size
        self.entries.append(packed)
        self.sizes.append(size)
        self.bytes += size
        freed = 0
        limit = self.max_bytes
        while len(self.entries) > self.maxlen or (
            limit is not None and self.bytes > limit and len(self.entries) > 1
        ):
            freed += self._pop()
        return freed

    def _pop(self) -> int:
        """Evict the oldest record; returns its size."""
        self.entries.popleft()
        size = self.sizes.popleft()
        self.bytes -= size
        self.evicted += 1
        return size

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LogRecord]:
        return map(_unpack, self.entries)


# --------------------------------------------------------------------------- change tracking


@dataclass(frozen=True, slots=True)
class PhaseEvent:
    workflow_id: str
    service_id: str
    change: PhaseChange


@dataclass(frozen=True, slots=True)
class CheckpointEvent:
    workflow_id: str
    service_id: str
    record: CheckpointRecord


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    workflow_id: str
    service_id: str
    record: ErrorRecord


@dataclass(frozen=True, slots=True)
class LogEvent:
    record: LogRecord


Event = PhaseEvent | CheckpointEvent | ErrorEvent | LogEvent | Anomaly
"""A discrete fact worth streaming to watchers (record changes are tracked by id instead)."""


@dataclass(slots=True)
class Changes:
    """What changed since the owner last called ``HubState.take_changes()``.

    Record changes are ids (a watcher or the store reads the record's latest state, so many
    progress updates coalesce into one); discrete facts are ``events``, in order.
    """

    services: set[str] = field(default_factory=set)
    workflows: set[str] = field(default_factory=set)
    connections: set[str] = field(default_factory=set)
    removed_workflows: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.services
            or self.workflows
            or self.connections
            or self.removed_workflows
            or self.events
        )

    def merge_ids(self, other: Changes) -> None:
        """Take ``other``'s record ids (not its events)."""
        self.services |= other.services
        self.workflows |= other.workflows
        self.connections |= other.connections
        self.workflows -= other.removed_workflows
        self.removed_workflows |= other.removed_workflows

    def merge(self, other: Changes) -> None:
        self.services |= other.services
        self.workflows |= other.workflows
        self.connections |= other.connections
        self.workflows -= other.removed_workflows
        self.removed_workflows |= other.removed_workflows
        self.events.extend(other.events)


@dataclass(frozen=True, slots=True)
class Registration:
    """The outcome of a ``register``: what the hub answers in ``registered``."""

    service_id: str
    instance_id: str
    protocol_version: str
    message: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a restarted hub restores (from the SQLite store)."""

    services: Sequence[ServiceState] = ()
    workflows: Sequence[WorkflowState] = ()
    logs: Sequence[LogRecord] = ()


# --------------------------------------------------------------------------- the state


class _NotOwner(Exception):
    """A message about a workflow that belongs to another service (caught in ``receive``)."""

    def __init__(self, workflow: WorkflowState) -> None:
        super().__init__(workflow.workflow_id)
        self.workflow = workflow


class HubState:
    """The hub's whole state, changed only through its methods (no I/O, no clock).

    Bounds: ``log_buffer`` entries for the whole hub and ``workflow_log_buffer`` per workflow
    (evictions counted), ``max_workflows`` workflows (finished ones are forgotten first, see
    ``_evict``),
    ``max_history`` phase changes and ``max_records`` checkpoints and errors per workflow,
    ``max_anomalies`` anomaly texts per record (the count keeps going), ``max_closed``
    closed connections, ``max_services`` services (those disconnected longest ago are
    forgotten first); and every one of these by bytes too (``limits``, see ``HubLimits``),
    with what a bound pushes out counted in ``evicted`` (see ``memory()``).
    """

    def __init__(
        self,
        *,
        hub_protocol_version: str = HUB_PROTOCOL_VERSION,
        log_buffer: int = 10_000,
        workflow_log_buffer: int = 1_000,
        max_workflows: int = 10_000,
        max_history: int = 1_000,
        max_records: int = 1_000,
        max_anomalies: int = 100,
        max_closed: int = 100,
        max_services: int = 10_000,
        limits: HubLimits | None = None,
    ) -> None:
        negotiate_version(hub_protocol_version, hub_protocol_version)  # validates the format
        self.hub_protocol_version = hub_protocol_version
        self.services: dict[str, ServiceState] = {}
        self.workflows: dict[str, WorkflowState] = {}
        self.connections: dict[str, ConnectionState] = {}
        self.limits = limits if limits is not None else HubLimits()
        self.logs = LogBuffer(log_buffer, self.limits.log_buffer_bytes)
        self.workflow_logs: dict[str, LogBuffer] = {}
        self.workflow_log_bytes = 0
        """Estimated bytes of all workflow log buffers together."""
        self.workflows_bytes = 0
        """Estimated bytes of all workflows (records and text fields, checkpoint states apart)."""
        self.checkpoint_state_bytes = 0
        """Estimated bytes of all checkpoint ``state`` objects."""
        self.evicted: dict[str, int] = {
            "workflow_logs": 0,
            "workflow_records": 0,
            "checkpoint_states": 0,
            "texts_truncated": 0,
        }
        """What the byte bounds pushed out (besides ``logs.evicted`` and ``workflows_evicted``)."""
        self._log_lru: OrderedDict[str, None] = OrderedDict()
        """Workflows with logs, the one that logged least recently first."""
        self._sizes: dict[str, list[int]] = {}
        """Per workflow: bytes of history, checkpoints, errors, the rest, and the total."""
        self._state_sizes: dict[int, int] = {}
        """Bytes of each retained checkpoint ``state``, by ``id()`` of its (live) record."""
        self._stateful: OrderedDict[str, None] = OrderedDict()
        """Workflows holding checkpoint states, the longest holder first."""
        self._touched: WorkflowState | None = None
        self._progressed: set[str] = set()
        """Workflows that sent a ``progress`` (a completed one keeps what it reported)."""
        self.anomalies: deque[Anomaly] = deque(maxlen=max(1, max_anomalies) * 10)
        """The most recent anomalies of the whole hub."""
        self.anomaly_count = 0
        self.workflows_evicted = 0
        self.services_evicted = 0
        self._max_services = max(1, max_services)
        self.messages_applied: Counter[str] = Counter()
        """Messages from services applied, by type (``register`` included): for metrics."""
        self._workflow_log_buffer = workflow_log_buffer
        self._max_workflows = max(1, max_workflows)
        self._max_history = max(1, max_history)
        self._max_records = max(1, max_records)
        self._max_anomalies = max(1, max_anomalies)
        self._max_closed = max(0, max_closed)
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._orphans: dict[str, dict[str, None]] = {}
        """Workflows by the id of a parent the hub does not know (yet): a parent announced
        after its children links them without looking at every workflow."""
        self._closed: deque[str] = deque()
        self._next_service = itertools.count(1)
        self._changes = Changes()

    # ------------------------------------------------------------------ change tracking

    def take_changes(self) -> Changes:
        """Return what changed since the last call and start a new record of changes."""
        changes = self._changes
        if changes:
            self._changes = Changes()
        return changes

    def discard_changes(self) -> None:
        """Forget what changed (when nobody watches or stores it): cheaper than taking it."""
        changes = self._changes
        if changes.events:
            changes.events.clear()
        if changes.workflows:
            changes.workflows.clear()
        if changes.services:
            changes.services.clear()
        if changes.connections:
            changes.connections.clear()
        if changes.removed_workflows:
            changes.removed_workflows.clear()

    def _anomaly(
        self,
        text: str,
        now: float,
        *,
        service: ServiceState | None = None,
        workflow: WorkflowState | None = None,
        workflow_id: str = "",
    ) -> None:
        self.anomaly_count += 1
        text = cut(text, 600)
        anomaly = Anomaly(
            text,
            service.service_id if service is not None else "",
            workflow.workflow_id if workflow is not None else workflow_id,
            now,
        )
        self.anomalies.append(anomaly)
        self._changes.events.append(anomaly)
        if workflow is not None:
            workflow.anomalies = _append(workflow.anomalies, text, self._max_anomalies)
            workflow.anomaly_count += 1
            self._changes.workflows.add(workflow.workflow_id)
        elif service is not None:
            service.anomalies = _append(service.anomalies, text, self._max_anomalies)
            service.anomaly_count += 1
            self._changes.services.add(service.service_id)

    # ------------------------------------------------------------------ connections

    def open_connection(
        self,
        connection_id: str,
        *,
        now: float,
        path: str = "",
        remote: str = "",
        service_name: str = "",
        service_id: str = "",
    ) -> ConnectionState:
        """A client completed the WebSocket handshake; headers are kept as sent."""
        conn = ConnectionState(
            connection_id=connection_id,
            path=path,
            remote=remote,
            header_service_name=service_name,
            header_service_id=service_id,
            opened_at=now,
        )
        self.connections[connection_id] = conn
        self._changes.connections.add(connection_id)
        return conn

    def close_connection(
        self, connection_id: str, *, now: float, code: int | None = None, reason: str = ""
    ) -> None:
        """The connection ended; its service is disconnected unless a newer connection owns it."""
        conn = self.connections.get(connection_id)
        if conn is None or conn.closed_at is not None:
            return
        conn.closed_at = now
        conn.close_code = code
        conn.close_reason = reason
        self._changes.connections.add(connection_id)
        service = self.services.get(conn.service_id)
        if service is not None and service.connection_id == connection_id:
            service.connected = False
            service.health = Health.DISCONNECTED
            service.disconnected_at = now
            service.pending_pings = ()
            service.close_code = code
            service.close_reason = reason
            self._changes.services.add(service.service_id)
        self._closed.append(connection_id)
        while len(self._closed) > self._max_closed:
            self.connections.pop(self._closed.popleft(), None)

    def invalid_frame(self, connection_id: str, reason: str) -> None:
        """Count a dropped frame (not JSON, wrong types, binary) with its reason."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        conn.invalid_frames += 1
        conn.invalid_reasons = _append(conn.invalid_reasons, reason[:200], 10)
        self._changes.connections.add(connection_id)

    def throttled(self, connection_id: str, count: int = 1) -> None:
        """Count frames dropped by the rate limit."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.throttled += count
            self._changes.connections.add(connection_id)

    # ------------------------------------------------------------------ services

    def _assign_service_id(self) -> str:
        while True:
            candidate = f"svc-{next(self._next_service)}"
            if candidate not in self.services:
                return candidate

    def _known_service(self, name: str, instance_id: str) -> str:
        """The id of a registered, disconnected service called ``name`` on ``instance_id``."""
        if not name:
            return ""
        for service in self.services.values():
            if (
                service.registered
                and not service.connected
                and service.service_name == name
                and service.instance_id == instance_id
            ):
                return service.service_id
        return ""

    def _attach(self, conn: ConnectionState, service_id: str, now: float) -> ServiceState:
        """Make ``service_id`` the service of ``conn`` (and ``conn`` its current connection)."""
        service = self.services.get(service_id)
        if service is None:
            service = ServiceState(service_id=service_id, first_seen=now)
            self.services[service_id] = service
            if len(self.services) > self._max_services:
                self._evict_services(keep=service_id)
        elif service.connected and service.connection_id not in ("", conn.connection_id):
            self._anomaly(
                f"service id reused by connection {conn.connection_id} while "
                f"{service.connection_id} is still open; the newer one receives commands",
                now,
                service=service,
            )
        if service.connection_id != conn.connection_id:
            service.connections += 1
        conn.service_id = service_id
        service.connection_id = conn.connection_id
        service.header_service_name = conn.header_service_name
        service.header_service_id = conn.header_service_id
        service.remote = conn.remote
        service.connected = True
        service.health = Health.HEALTHY
        service.connected_at = conn.opened_at
        service.last_seen = now
        service.pending_pings = ()
        service.close_code = None
        service.close_reason = ""
        if not service.service_name:
            service.service_name = conn.header_service_name
        self._changes.services.add(service_id)
        self._changes.connections.add(conn.connection_id)
        return service

    def _evict_services(self, keep: str) -> None:
        """Beyond ``max_services``, forget the services disconnected longest ago (their
        workflows keep their owner's id: the service is known again when it registers)."""
        gone = sorted(
            (s.disconnected_at, s.service_id)
            for s in self.services.values()
            if not s.connected and s.service_id != keep
        )
        for _, service_id in gone[: len(self.services) - self._max_services]:
            del self.services[service_id]
            self.services_evicted += 1
            self._changes.services.add(service_id)

    def _rename(self, conn: ConnectionState, new_id: str) -> None:
        """A connection that spoke before ``register`` registers under another id.

        The provisional service record is dropped and its workflows move to the new id.
        """
        old = self.services.get(conn.service_id)
        if old is None or old.connection_id != conn.connection_id or old.registered:
            return
        del self.services[old.service_id]
        self._changes.services.add(old.service_id)
        for workflow in self.workflows.values():
            if workflow.service_id == old.service_id:
                workflow.service_id = new_id
                self._changes.workflows.add(workflow.workflow_id)

    def register(self, connection_id: str, payload: RegisterPayload, *, now: float) -> Registration:
        """Apply a ``register``: negotiate the version, keep or assign the service id.

        The id is the payload's ``service_id``, else the ``X-Service-ID`` header, else the id
        this connection already uses, else the id of a disconnected service with the same name
        and instance (a restart keeps its identity), else a new ``svc-<n>``. Raises
        ``VersionRefused``.
        """
        conn = self.connections[connection_id]
        negotiated = negotiate_version(payload.protocol_version, self.hub_protocol_version)
        self.messages_applied[MessageType.REGISTER] += 1
        service_id = payload.service_id or conn.header_service_id or conn.service_id
        if not service_id:
            # Compared as kept: an over-long name or instance is stored cut.
            limit = self.limits.max_text
            name = cut(payload.service_name, limit) or conn.header_service_name
            service_id = self._known_service(name, cut(payload.instance_id, limit)) or (
                self._assign_service_id()
            )
        self._check_id(service_id, "service_id")
        if conn.registered:
            existing = self.services.get(conn.service_id)
            if existing is not None:
                self._anomaly("register sent twice on one connection", now, service=existing)
        if conn.service_id and conn.service_id != service_id:
            self._rename(conn, service_id)
        service = self._attach(conn, service_id, now)
        conn.registered = True
        conn.messages += 1
        service.registered = True
        service.messages += 1
        service.service_name = self._text(payload.service_name) or conn.header_service_name
        service.instance_id = self._text(payload.instance_id)
        service.version = self._text(payload.version)
        capabilities = payload.capabilities or ()
        if len(capabilities) > _MAX_CAPABILITIES:
            self.evicted["texts_truncated"] += 1
        service.capabilities = tuple(
            cut(str(c), 256) for c in itertools.islice(capabilities, _MAX_CAPABILITIES)
        )
        service.protocol_version = negotiated
        service.schema_version = payload.schema_version
        if conn.header_service_id and conn.header_service_id != service_id:
            self._anomaly(
                f"X-Service-ID header {conn.header_service_id!r} differs from the registered "
                f"service id {service_id!r}",
                now,
                service=service,
            )
        name = service.service_name or service_id
        return Registration(
            service_id=service_id,
            instance_id=service.instance_id,
            protocol_version=negotiated,
            message=f"welcome {name}: registered as {service_id}",
        )

    def _service_of(
        self, conn: ConnectionState, what: MessageType | str, now: float
    ) -> ServiceState:
        """The connection's service; traffic before ``register`` creates one provisionally."""
        service = self.services.get(conn.service_id) if conn.service_id else None
        if service is not None:
            return service
        service_id = conn.header_service_id or self._assign_service_id()
        service = self._attach(conn, service_id, now)
        self._anomaly(f"{str(what)!r} received before register", now, service=service)
        return service

    def ping_sent(self, connection_id: str, ping_id: str, *, now: float) -> None:
        """Remember an outstanding ``ping`` (at most 16 per service)."""
        conn = self.connections.get(connection_id)
        service = self.services.get(conn.service_id) if conn is not None else None
        if service is None or service.connection_id != connection_id:
            return
        service.pending_pings = _append(service.pending_pings, (ping_id, now), 16)
        service.last_ping_at = now

    def check_health(self, *, now: float, pong_timeout: float) -> None:
        """Mark connected services late when a ping waited longer than ``pong_timeout``."""
        for service in self.services.values():
            if not service.connected:
                continue
            overdue = bool(service.pending_pings) and (
                now - service.pending_pings[0][1] > pong_timeout
            )
            health = Health.LATE if overdue else Health.HEALTHY
            if health is not service.health:
                service.health = health
                self._changes.services.add(service.service_id)

    # ------------------------------------------------------------------ workflows

    def _workflow(
        self, workflow_id: str, service: ServiceState, conn: ConnectionState, now: float
    ) -> WorkflowState:
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            workflow = WorkflowState(
                workflow_id=workflow_id,
                root_workflow_id=workflow_id,
                created_at=now,
                updated_at=now,
            )
            self.workflows[workflow_id] = workflow
            self.workflow_logs[workflow_id] = self._log_buffer()
            self._link_orphans(workflow)
            self._evict(service.service_id)
        elif workflow.service_id and workflow.service_id != service.service_id:
            raise _NotOwner(workflow)
        workflow.service_id = service.service_id
        workflow.connection_id = conn.connection_id
        workflow.updated_at = now
        self._changes.workflows.add(workflow_id)
        self._touched = workflow
        return workflow

    def _link_orphans(self, parent: WorkflowState) -> None:
        waiting = self._orphans.pop(parent.workflow_id, None)
        if not waiting:
            return
        workflows = self.workflows
        children = tuple(
            child
            for child in waiting
            if (w := workflows.get(child)) is not None
            and w is not parent
            and w.parent_workflow_id == parent.workflow_id
        )
        if children:
            parent.children = tuple(dict.fromkeys((*parent.children, *children)))

    def _wait_for_parent(self, workflow: WorkflowState) -> None:
        parent_id = workflow.parent_workflow_id
        if parent_id and parent_id not in self.workflows:
            self._orphans.setdefault(parent_id, {})[workflow.workflow_id] = None

    def _forget_orphan(self, workflow: WorkflowState) -> None:
        waiting = self._orphans.get(workflow.parent_workflow_id)
        if waiting is not None:
            waiting.pop(workflow.workflow_id, None)
            if not waiting:
                del self._orphans[workflow.parent_workflow_id]

    def _evict(self, service_id: str = "", keep: str = "", own_first: bool = False) -> None:
        """Beyond ``max_workflows`` (or ``limits.workflows_bytes``), forget the oldest finished
        workflow (the newcomer's service's own first), else the oldest running one of the
        newcomer's service, and only then anyone's: a service flooding the hub with new
        workflows pushes out its own, not the running workflows of others. ``own_first`` (for
        the byte bound: one service's large records) takes all of the service's own workflows
        before anyone else's. ``keep`` (the workflow being updated) is never chosen."""
        budget = self.limits.workflows_bytes
        while len(self.workflows) > self._max_workflows or (
            self.workflows_bytes > budget and len(self.workflows) > 1
        ):
            victim = self._victim(service_id, keep, own_first)
            if victim is None:
                return
            self._forget(victim)

    def _victim(self, service_id: str, keep: str, own_first: bool) -> str | None:
        workflows = self.workflows
        if service_id:
            for wf in self._finished:
                if wf != keep and workflows[wf].service_id == service_id:
                    return wf
            if own_first:
                for workflow in workflows.values():
                    if workflow.service_id == service_id and workflow.workflow_id != keep:
                        return workflow.workflow_id
        for wf in self._finished:
            if wf != keep:
                return wf
        if service_id:
            for workflow in workflows.values():
                if workflow.service_id == service_id and workflow.workflow_id != keep:
                    return workflow.workflow_id
        return next((wf for wf in workflows if wf != keep), None)

    def _forget(self, victim: str) -> None:
        """Remove a workflow and everything the hub holds for it, keeping the byte totals."""
        gone = self.workflows.pop(victim, None)
        self._finished.pop(victim, None)
        if gone is not None:
            parent_id = gone.parent_workflow_id
            if parent_id:
                self._forget_orphan(gone)
                parent = self.workflows.get(parent_id)
                if parent is not None and victim in parent.children:
                    parent.children = tuple(c for c in parent.children if c != victim)
            for record in gone.checkpoints:
                self._drop_state(record)
        self._stateful.pop(victim, None)
        sizes = self._sizes.pop(victim, None)
        if sizes is not None:
            self.workflows_bytes -= sizes[4]
        buffer = self.workflow_logs.pop(victim, None)
        if buffer is not None:
            self.workflow_log_bytes -= buffer.bytes
        self._log_lru.pop(victim, None)
        self._progressed.discard(victim)
        self.workflows_evicted += 1
        self._changes.workflows.discard(victim)
        self._changes.removed_workflows.add(victim)

    # ------------------------------------------------------------------ byte bounds

    def _log_buffer(self) -> LogBuffer:
        return LogBuffer(self._workflow_log_buffer, self.limits.workflow_log_buffer_bytes)

    def _text(self, text: str) -> str:
        """A reported free-text field as kept: cut at ``limits.max_text`` (counted)."""
        if len(text) <= self.limits.max_text:
            return text
        self.evicted["texts_truncated"] += 1
        return cut(text, self.limits.max_text)

    def _check_id(self, value: str, what: str) -> None:
        if len(value) > self.limits.max_id:
            raise ProtocolError(f"{what} of {len(value)} characters (at most {self.limits.max_id})")

    def _sizes_of(self, workflow: WorkflowState) -> list[int]:
        sizes = self._sizes.get(workflow.workflow_id)
        if sizes is None:
            sizes = self._sizes[workflow.workflow_id] = [0, 0, 0, 0, 0]
        return sizes

    def _push(self, workflow: WorkflowState, index: int, item: _Record, limit: int) -> None:
        """Append to history (0), checkpoints (1) or errors (2) within ``limit`` records."""
        name = _LISTS[index]
        items: tuple[_Record, ...] = (*getattr(workflow, name), item)
        sizes = self._sizes_of(workflow)
        sizes[index] += _record_size(item)
        if len(items) > limit:
            for dropped in items[: len(items) - limit]:
                sizes[index] -= _record_size(dropped)
                self._drop_state(dropped)
            items = items[len(items) - limit :]
        setattr(workflow, name, items)
        if sizes[0] + sizes[1] + sizes[2] > self.limits.workflow_bytes:
            self._trim_records(workflow, sizes)

    def _trim_records(self, workflow: WorkflowState, sizes: list[int]) -> None:
        """Within ``limits.workflow_bytes``: the largest list loses its oldest records (each
        list keeps its newest)."""
        budget = self.limits.workflow_bytes
        while sizes[0] + sizes[1] + sizes[2] > budget:
            candidates = [i for i in range(3) if len(getattr(workflow, _LISTS[i])) > 1]
            if not candidates:
                return
            index = max(candidates, key=lambda i: sizes[i])
            items = getattr(workflow, _LISTS[index])
            setattr(workflow, _LISTS[index], items[1:])
            sizes[index] -= _record_size(items[0])
            self._drop_state(items[0])
            self.evicted["workflow_records"] += 1

    def _account(self, workflow: WorkflowState) -> None:
        """Refresh a workflow's byte estimate after a change, then hold the hub-wide bound.

        On every message: kept to a few dozen operations (ids are bounded by ``max_id``, so
        they are counted at that bound rather than measured)."""
        workflow_id = workflow.workflow_id
        sizes = self._sizes.get(workflow_id)
        if self.workflows.get(workflow_id) is not workflow:
            self._sizes.pop(workflow_id, None)  # forgotten while being updated
            return
        if sizes is None:
            sizes = self._sizes[workflow_id] = [0, 0, 0, 0, 0]
        w = workflow
        total = (
            sizes[0]
            + sizes[1]
            + sizes[2]
            + len(w.message)
            + len(w.stage)
            + len(w.current_action)
            + len(w.reason)
            + len(w.action_type)
            + len(w.action_id)
            + (len(w.children) + len(w.anomalies)) * _LISTED
            + _WORKFLOW_OVERHEAD
        )
        if total != sizes[4]:
            self.workflows_bytes += total - sizes[4]
            sizes[4] = total
            if self.workflows_bytes > self.limits.workflows_bytes:
                self._evict(workflow.service_id, keep=workflow_id, own_first=True)

    def _add_state(self, workflow: WorkflowState, record: CheckpointRecord) -> None:
        """Count a new checkpoint's ``state``; past ``limits.checkpoint_state_bytes`` drop the
        oldest states of the longest holders (the records stay, without ``state``)."""
        if (
            record.state is None
            or self.workflows.get(workflow.workflow_id) is not workflow
            or not any(r is record for r in reversed(workflow.checkpoints))
        ):
            return
        size = json_size(record.state) + ITEM_OVERHEAD
        self._state_sizes[id(record)] = size
        self.checkpoint_state_bytes += size
        self._stateful.setdefault(workflow.workflow_id, None)
        while self.checkpoint_state_bytes > self.limits.checkpoint_state_bytes and self._stateful:
            holder_id = next(iter(self._stateful))
            holder = self.workflows.get(holder_id)
            if holder is None or not self._strip_oldest_state(holder):
                del self._stateful[holder_id]

    def _strip_oldest_state(self, workflow: WorkflowState) -> bool:
        """Drop the oldest retained ``state``; False when the workflow holds none."""
        records = workflow.checkpoints
        for index, record in enumerate(records):
            if id(record) in self._state_sizes and record.state is not None:
                self._drop_state(record)
                bare = dataclasses.replace(record, state=None)
                workflow.checkpoints = (*records[:index], bare, *records[index + 1 :])
                self.evicted["checkpoint_states"] += 1
                self._changes.workflows.add(workflow.workflow_id)
                return True
        return False

    def _drop_state(self, record: object) -> None:
        size = self._state_sizes.pop(id(record), None)
        if size is not None:
            self.checkpoint_state_bytes -= size

    def _keep_log(self, packed: _PackedLog, size: int, workflow_id: str) -> bool:
        """Add a packed record to the workflow's buffer within every log bound."""
        buffer = self.workflow_logs.get(workflow_id)
        if buffer is None:
            return False
        evicted = buffer.evicted
        self.workflow_log_bytes += size - buffer._append(packed, size)
        self.evicted["workflow_logs"] += buffer.evicted - evicted
        lru = self._log_lru
        if workflow_id in lru:
            lru.move_to_end(workflow_id)
        else:
            lru[workflow_id] = None
        budget = self.limits.workflow_logs_bytes
        while self.workflow_log_bytes > budget and lru:
            oldest = next(iter(lru))
            victim = self.workflow_logs.get(oldest)
            if victim is None or not victim.entries:
                del lru[oldest]
                continue
            self.workflow_log_bytes -= victim._pop()
            self.evicted["workflow_logs"] += 1
        return True

    def record_bytes(self, record: _Record) -> int:
        """Estimated bytes of a history, checkpoint or error record, its ``state`` included."""
        return _record_size(record) + self._state_sizes.get(id(record), 0)

    def memory(self) -> dict[str, dict[str, int]]:
        """What the hub holds against each byte bound, and what the bounds pushed out."""
        limits = self.limits
        return {
            "logs": {
                "bytes": self.logs.bytes,
                "limit": limits.log_buffer_bytes,
                "count": len(self.logs),
                "evicted": self.logs.evicted,
            },
            "workflow_logs": {
                "bytes": self.workflow_log_bytes,
                "limit": limits.workflow_logs_bytes,
                "count": sum(len(b) for b in self.workflow_logs.values()),
                "evicted": self.evicted["workflow_logs"],
            },
            "workflows": {
                "bytes": self.workflows_bytes,
                "limit": limits.workflows_bytes,
                "count": len(self.workflows),
                "evicted": self.workflows_evicted,
                "records_evicted": self.evicted["workflow_records"],
                "texts_truncated": self.evicted["texts_truncated"],
            },
            "services": {
                "count": len(self.services),
                "limit": self._max_services,
                "evicted": self.services_evicted,
            },
            "checkpoint_states": {
                "bytes": self.checkpoint_state_bytes,
                "limit": limits.checkpoint_state_bytes,
                "count": len(self._state_sizes),
                "evicted": self.evicted["checkpoint_states"],
            },
        }

    def _settle(self, workflow: WorkflowState) -> None:
        if workflow.phase.is_terminal:
            self._finished[workflow.workflow_id] = None
        else:
            self._finished.pop(workflow.workflow_id, None)

    def _complete(self, workflow: WorkflowState) -> None:
        """A workflow that reaches ``completed`` without ever reporting progress has done all
        its work: 100%. One that reported progress shows what it reported."""
        if (
            workflow.phase is Phase.COMPLETED
            and workflow.progress == 0.0
            and workflow.workflow_id not in self._progressed
        ):
            workflow.progress = 100.0

    def _workflow_id_of(self, message: Message, payload_id: str, what: str) -> str:
        workflow_id = message.workflow_id or payload_id
        if not workflow_id:
            raise ProtocolError(f"{what} message without a workflow_id")
        self._check_id(workflow_id, f"{what} workflow_id")
        return workflow_id

    def receive(self, connection_id: str, message: Message, *, now: float) -> bool:
        """Apply one decoded message from a service (anything but ``register``).

        Raises ``ProtocolError`` when the payload has wrong types; the state is then
        unchanged and the caller counts an invalid frame. Unknown message types and
        hub-to-service types are ignored (and counted on the connection). Returns False when
        the message was refused: it is about a workflow another service owns (an anomaly of
        the sender; the workflow is untouched).
        """
        conn = self.connections[connection_id]
        kind = message.type
        if kind is MessageType.REGISTER:
            raise ValueError("register messages go to HubState.register()")
        if kind not in _SERVICE_TO_HUB:
            conn.ignored += 1
            self._changes.connections.add(connection_id)
            return True
        payload = message.typed_payload()
        service = self._service_of(conn, kind, now)  # str(kind) only if it is an anomaly
        conn.messages += 1
        service.messages += 1
        service.last_seen = now
        self._touched = None
        try:
            self._apply(conn, service, message, payload, now)
        except _NotOwner as refused:
            owned = refused.workflow
            self._anomaly(
                f"{kind} about workflow {owned.workflow_id[:80]!r} of service "
                f"{owned.service_id[:80]!r} refused: a workflow belongs to the service that "
                "created it",
                now,
                service=service,
                workflow_id=owned.workflow_id,
            )
            return False
        self.messages_applied[kind] += 1
        touched, self._touched = self._touched, None
        if touched is not None:
            self._account(touched)
        return True

    def _apply(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: object,
        now: float,
    ) -> None:
        kind = message.type
        if isinstance(payload, PhaseChangedPayload):
            self._phase_changed(conn, service, message, payload, now)
        elif isinstance(payload, ProgressPayload):
            self._progress(conn, service, message, payload, now)
        elif isinstance(payload, LogPayload):
            self._log(service, payload.entry, now)
        elif isinstance(payload, LogBatchPayload):
            for entry in payload.logs:
                self._log(service, entry, now)
        elif isinstance(payload, WorkflowCreatedPayload):
            self._workflow_created(conn, service, message, payload, now)
        elif isinstance(payload, CheckpointPayload):
            self._checkpoint(conn, service, message, payload, now)
        elif isinstance(payload, ErrorPayload):
            self._error(conn, service, message, payload, now)
        elif isinstance(payload, StatusResponsePayload):
            self._status_response(conn, service, message, payload, now)
        elif kind is MessageType.PONG:
            self._pong(service, message.id, now)

    def _target(
        self,
        message: Message,
        payload_id: str,
        what: str,
        service: ServiceState,
        conn: ConnectionState,
        now: float,
    ) -> tuple[str, WorkflowState]:
        """The workflow a service message is about (made if new), its envelope checked."""
        workflow_id = self._workflow_id_of(message, payload_id, what)
        workflow = self._workflow(workflow_id, service, conn, now)
        self._check_envelope(message, payload_id, workflow, now)
        return workflow_id, workflow

    def _check_envelope(
        self, message: Message, payload_id: str, workflow: WorkflowState, now: float
    ) -> None:
        if message.workflow_id and payload_id and message.workflow_id != payload_id:
            self._anomaly(
                f"{message.type} envelope workflow_id {message.workflow_id!r} differs from "
                f"payload workflow_id {payload_id!r}",
                now,
                workflow=workflow,
            )

    def _workflow_created(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: WorkflowCreatedPayload,
        now: float,
    ) -> None:
        self._check_id(payload.parent_workflow_id, "parent_workflow_id")
        self._check_id(payload.root_workflow_id, "root_workflow_id")
        workflow_id, workflow = self._target(
            message, payload.workflow_id, "workflow_created", service, conn, now
        )
        if workflow.announced:
            self._anomaly("workflow_created received again", now, workflow=workflow)
        workflow.announced = True
        workflow.action_id = self._text(payload.action_id) or workflow.action_id
        workflow.action_type = self._text(payload.action_type) or workflow.action_type
        parent_id = payload.parent_workflow_id
        if parent_id == workflow_id:
            self._anomaly("workflow names itself as its parent", now, workflow=workflow)
            parent_id = ""
        if workflow.parent_workflow_id and workflow.parent_workflow_id != parent_id:
            self._forget_orphan(workflow)
        workflow.parent_workflow_id = parent_id
        parent = self.workflows.get(parent_id) if parent_id else None
        if parent_id and parent is None:
            self._wait_for_parent(workflow)
        root = payload.root_workflow_id
        if not root:
            root = (parent.root_workflow_id or parent.workflow_id) if parent else parent_id
        workflow.root_workflow_id = root or workflow_id
        if parent is not None and workflow_id not in parent.children:
            parent.children = (*parent.children, workflow_id)
            self._changes.workflows.add(parent.workflow_id)

    def _phase_changed(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: PhaseChangedPayload,
        now: float,
    ) -> None:
        self._check_id(payload.checkpoint_id, "checkpoint_id")
        workflow_id, workflow = self._target(
            message, payload.workflow_id, "phase_changed", service, conn, now
        )
        source, target = payload.from_phase or None, payload.to_phase
        last = workflow.history[-1] if workflow.history else None

        def arrow() -> str:  # for anomalies only: formatting two Enums costs on every message
            return f"{source or '(none)'} -> {target}"

        if _resent(
            workflow.history,
            message.timestamp,
            lambda c: (
                c.from_phase is source and c.to_phase is target and c.reason == payload.reason
            ),
        ):
            self._anomaly(
                f"phase_changed {arrow()} received again: ignored", now, workflow=workflow
            )
            return
        if (
            last is not None
            and workflow.phase is target
            and last.from_phase is source
            and last.to_phase is target
        ):
            self._anomaly(f"duplicate phase_changed {arrow()}", now, workflow=workflow)
            if payload.checkpoint_id:
                self._note_checkpoint(workflow, service, payload, message, now)
            return
        fresh = last is None and not workflow.announced
        if not fresh and source is not None and source is not workflow.phase:
            self._anomaly(
                f"phase_changed {arrow()} but the hub had {workflow.phase}: "
                "transitions missing or out of order",
                now,
                workflow=workflow,
            )
        if source is not None and not can_transition(source, target):
            self._anomaly(
                f"transition {arrow()} is not allowed by the phase table", now, workflow=workflow
            )
        reason = self._text(payload.reason)
        change = PhaseChange(source, target, reason, payload.checkpoint_id, now, message.timestamp)
        workflow.previous_phase = workflow.phase if source is None else source
        workflow.phase = target
        workflow.reason = reason
        self._push(workflow, 0, change, self._max_history)
        self._settle(workflow)
        self._complete(workflow)
        self._changes.events.append(PhaseEvent(workflow_id, service.service_id, change))
        if payload.checkpoint_id:
            self._note_checkpoint(workflow, service, payload, message, now)

    def _note_checkpoint(
        self,
        workflow: WorkflowState,
        service: ServiceState,
        payload: PhaseChangedPayload,
        message: Message,
        now: float,
    ) -> None:
        """A ``phase_changed`` carries the workflow's checkpoint; remember a new one."""
        workflow.checkpoint_id = payload.checkpoint_id
        if any(c.checkpoint_id == payload.checkpoint_id for c in workflow.checkpoints):
            return
        record = CheckpointRecord(
            payload.checkpoint_id,
            self._text(f"phase {payload.to_phase}: {payload.reason}".rstrip(": ")),
            now,
            message.timestamp,
        )
        self._push(workflow, 1, record, self._max_records)
        self._changes.events.append(
            CheckpointEvent(workflow.workflow_id, service.service_id, record)
        )

    def _checkpoint(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: CheckpointPayload,
        now: float,
    ) -> None:
        self._check_id(payload.checkpoint_id, "checkpoint_id")
        workflow_id, workflow = self._target(
            message, payload.workflow_id, "checkpoint", service, conn, now
        )
        if _resent(
            workflow.checkpoints,
            message.timestamp,
            lambda c: c.checkpoint_id == payload.checkpoint_id,
        ):
            self._anomaly("checkpoint received again: ignored", now, workflow=workflow)
            return
        record = CheckpointRecord(
            payload.checkpoint_id,
            self._text(payload.reason),
            now,
            message.timestamp,
            payload.state,
        )
        if payload.checkpoint_id:
            workflow.checkpoint_id = payload.checkpoint_id
        self._push(workflow, 1, record, self._max_records)
        self._add_state(workflow, record)
        self._changes.events.append(CheckpointEvent(workflow_id, service.service_id, record))

    def _error(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: ErrorPayload,
        now: float,
    ) -> None:
        workflow_id, workflow = self._target(
            message, payload.workflow_id, "error", service, conn, now
        )
        if _resent(workflow.errors, message.timestamp, lambda e: e.error == payload.error):
            self._anomaly("error received again: ignored", now, workflow=workflow)
            return
        record = ErrorRecord(
            self._text(payload.error),
            payload.recoverable,
            self._text(payload.action_id),
            now,
            message.timestamp,
        )
        self._push(workflow, 2, record, self._max_records)
        self._changes.events.append(ErrorEvent(workflow_id, service.service_id, record))

    def _progress(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: ProgressPayload,
        now: float,
    ) -> None:
        _, workflow = self._target(message, payload.workflow_id, "progress", service, conn, now)
        workflow.progress = self._percent(payload.percent, workflow, now)
        self._progressed.add(workflow.workflow_id)
        if payload.stage:
            workflow.stage = self._text(payload.stage)
        if payload.action_id:
            workflow.action_id = self._text(payload.action_id)
        workflow.message = self._text(payload.message)
        workflow.current_item = payload.current_item
        workflow.total_items = payload.total_items

    def _percent(self, value: float, workflow: WorkflowState, now: float) -> float:
        try:
            percent = float(value)
        except OverflowError:  # a JSON integer beyond any float (10**400): out of range too
            percent = math.inf if value > 0 else -math.inf
        if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
            self._anomaly(f"progress {value!r:.40} outside 0..100, clamped", now, workflow=workflow)
            percent = 0.0 if not math.isfinite(percent) else min(100.0, max(0.0, percent))
        return percent

    def _status_response(
        self,
        conn: ConnectionState,
        service: ServiceState,
        message: Message,
        payload: StatusResponsePayload,
        now: float,
    ) -> None:
        workflow_id, workflow = self._target(
            message, payload.workflow_id, "status_response", service, conn, now
        )
        if payload.phase is not workflow.phase:
            # The service's answer is the truth; keep history's last entry equal to the phase.
            if workflow.history or workflow.announced:
                self._anomaly(
                    f"status_response reports {payload.phase} but the hub had {workflow.phase}",
                    now,
                    workflow=workflow,
                )
            change = PhaseChange(
                workflow.phase,
                payload.phase,
                "reported by status_response",
                workflow.checkpoint_id,
                now,
                message.timestamp,
            )
            workflow.previous_phase = workflow.phase
            workflow.phase = payload.phase
            self._push(workflow, 0, change, self._max_history)
            self._settle(workflow)
            self._complete(workflow)
            self._changes.events.append(PhaseEvent(workflow_id, service.service_id, change))
        reported = self._percent(payload.progress, workflow, now)
        if reported < workflow.progress:
            # A status reply's progress may be a stale default (the Go client fills it only
            # from SetProgress): the ``progress`` messages are the authority on the value.
            self._anomaly(
                f"status_response reports progress {reported:g} but the workflow reported "
                f"{workflow.progress:g}: kept {workflow.progress:g}",
                now,
                workflow=workflow,
            )
        else:
            workflow.progress = reported
        workflow.current_action = self._text(payload.current_action)
        if payload.message:
            workflow.message = self._text(payload.message)

    def _log(self, service: ServiceState, entry: LogEntry, now: float) -> None:
        record = LogRecord(entry, service.service_id, now)
        packed = _pack(record)  # one tuple shared by both buffers
        size = _packed_size(packed)
        self.logs._append(packed, size)
        if entry.workflow_id and self._keep_log(packed, size, entry.workflow_id):
            workflow = self.workflows[entry.workflow_id]
            workflow.log_count += 1
            self._changes.workflows.add(entry.workflow_id)
        self._changes.events.append(LogEvent(record))

    def _pong(self, service: ServiceState, ping_id: str, now: float) -> None:
        for index, (pending_id, sent_at) in enumerate(service.pending_pings):
            if pending_id == ping_id:
                # A pong proves the connection alive: older unanswered pings no longer matter.
                service.pending_pings = service.pending_pings[index + 1 :]
                service.rtt = max(0.0, now - sent_at)
                service.last_pong_at = now
                if service.health is Health.LATE:
                    service.health = Health.HEALTHY
                self._changes.services.add(service.service_id)
                return
        self._anomaly(f"pong {ping_id[:64]!r} answers no outstanding ping", now, service=service)

    # ------------------------------------------------------------------ reads and restore

    def logs_for(self, workflow_id: str) -> tuple[LogRecord, ...]:
        buffer = self.workflow_logs.get(workflow_id)
        return tuple(buffer) if buffer is not None else ()

    def children_of(self, workflow_id: str) -> tuple[WorkflowState, ...]:
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return ()
        return tuple(self.workflows[c] for c in workflow.children if c in self.workflows)

    def restore(self, snapshot: Snapshot) -> None:
        """Load what a previous run persisted; services come back disconnected."""
        for service in snapshot.services:
            service.connected = False
            service.health = Health.DISCONNECTED
            service.connection_id = ""
            service.pending_pings = ()
            self.services[service.service_id] = service
        for workflow in snapshot.workflows:
            workflow.connection_id = ""
            self.workflows[workflow.workflow_id] = workflow
            self.workflow_logs[workflow.workflow_id] = self._log_buffer()
            self._settle(workflow)
            self._restore_sizes(workflow)
        for workflow in snapshot.workflows:
            self._wait_for_parent(workflow)
        self._restore_logs(snapshot.logs)
        numbers = [
            int(sid[4:]) for sid in self.services if sid.startswith("svc-") and sid[4:].isdigit()
        ]
        self._next_service = itertools.count(max(numbers, default=0) + 1)
        self._evict()

    def _restore_sizes(self, workflow: WorkflowState) -> None:
        """Account a restored workflow against the byte bounds (they may be lower now)."""
        sizes = self._sizes_of(workflow)
        for index, name in enumerate(_LISTS):
            sizes[index] = sum(_record_size(r) for r in getattr(workflow, name))
        self._trim_records(workflow, sizes)
        for record in workflow.checkpoints:
            self._add_state(workflow, record)
        self._account(workflow)

    def _restore_logs(self, records: Iterable[LogRecord]) -> None:
        for record in records:
            packed = _pack(record)
            size = _packed_size(packed)
            self.logs._append(packed, size)
            if record.workflow_id:
                self._keep_log(packed, size, record.workflow_id)
        self.logs.evicted = 0
        self.logs.total = len(self.logs)
