"""What changed in the hub's state: record ids to re-read, and discrete facts to stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .model import ServiceState, WorkflowState
from .records import Anomaly, CheckpointRecord, ErrorRecord, PhaseChange, StoredLog

__all__ = [
    "Changes",
    "CheckpointEvent",
    "ErrorEvent",
    "Event",
    "LogEvent",
    "PhaseEvent",
    "Registration",
    "Snapshot",
]


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
    record: StoredLog
    size: int = 0
    """Its estimated bytes as the hub's buffers hold it (0: not measured), so the store's
    pending bound need not measure it again."""


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
        """Take ``other``'s record ids (not its events). Called for every frame a hub with a
        store receives, most of which change one workflow: empty sets are skipped."""
        if other.services:
            self.services |= other.services
        if other.workflows:
            self.workflows |= other.workflows
        if other.connections:
            self.connections |= other.connections
        if other.removed_workflows:
            self.workflows -= other.removed_workflows
            self.removed_workflows |= other.removed_workflows

    def clear(self) -> None:
        if self.events:
            self.events.clear()
        if self.workflows:
            self.workflows.clear()
        if self.services:
            self.services.clear()
        if self.connections:
            self.connections.clear()
        if self.removed_workflows:
            self.removed_workflows.clear()

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
    logs: Sequence[StoredLog] = ()
