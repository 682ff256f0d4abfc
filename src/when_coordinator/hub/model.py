"""The hub's live records of workflows, services and connections: mutable, updated in place.

The hub applies one change per received message, and copying a record for each would cost more
than the networking, so these are mutable dataclasses. Sequences inside a record (history,
checkpoints, errors, anomalies, children) are tuples that are replaced, never mutated, so a
shallow ``copy()`` of a record is a consistent snapshot. The immutable facts they hold are in
``records.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..protocol import Phase
from .records import CheckpointRecord, ErrorRecord, PhaseChange

__all__ = ["ConnectionState", "Health", "ServiceState", "WorkflowState"]


class Health(str, Enum):
    """A service's liveness as the hub sees it."""

    HEALTHY = "healthy"
    """Connected, and every ping older than the pong timeout has been answered."""
    LATE = "late"
    """Connected, but a ping has waited longer than the pong timeout."""
    DISCONNECTED = "disconnected"

    def __str__(self) -> str:
        return self.value


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
        """Rebuild from ``as_dict(full=True)``; raises ``KeyError``/``ValueError`` on bad data.

        Written for speed: every instance on PostgreSQL rebuilds each workflow document the
        others persist (thousands a second), so absent lists cost nothing and phases are
        looked up rather than made by ``Phase()`` (which still makes the error)."""
        get = data.get
        previous = get("previous_phase") or ""
        phase = get("phase", "pending")
        children = get("children")
        history = get("history")
        checkpoints = get("checkpoints")
        errors = get("errors")
        anomalies = get("anomalies")
        return cls(
            workflow_id=str(data["workflow_id"]),
            service_id=str(get("service_id", "")),
            parent_workflow_id=str(get("parent_workflow_id", "")),
            root_workflow_id=str(get("root_workflow_id", "")),
            children=tuple(map(str, children)) if children else (),
            action_id=str(get("action_id", "")),
            action_type=str(get("action_type", "")),
            phase=_PHASES.get(phase) or Phase(phase),
            previous_phase=(_PHASES.get(previous) or Phase(previous)) if previous else None,
            reason=str(get("reason", "")),
            checkpoint_id=str(get("checkpoint_id", "")),
            progress=float(get("progress", 0.0)),
            stage=str(get("stage", "")),
            message=str(get("message", "")),
            current_item=int(get("current_item", 0)),
            total_items=int(get("total_items", 0)),
            current_action=str(get("current_action", "")),
            history=tuple(map(PhaseChange.from_dict, history)) if history else (),
            checkpoints=tuple(map(CheckpointRecord.from_dict, checkpoints)) if checkpoints else (),
            errors=tuple(map(ErrorRecord.from_dict, errors)) if errors else (),
            anomalies=tuple(map(str, anomalies)) if anomalies else (),
            anomaly_count=int(get("anomaly_count", 0)),
            log_count=int(get("log_count", 0)),
            announced=bool(get("announced", False)),
            created_at=float(get("created_at", 0.0)),
            updated_at=float(get("updated_at", 0.0)),
        )


_PHASES: dict[Any, Phase] = {phase.value: phase for phase in Phase}
"""Phase by its value (a lookup: calling ``Phase()`` runs Python code in ``enum``)."""


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
