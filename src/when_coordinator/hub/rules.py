"""How ``HubState`` applies each message a service sends (PROTOCOL.md section 4).

The hub mirrors what services report and trusts them: a ``phase_changed`` is applied even when
the transition table does not allow it, but anything unexpected (duplicates, skipped
transitions, forbidden transitions, resent frames, out-of-range progress) is recorded as an
anomaly on the workflow, counted, and never fatal. The reference Go client produces all of
these (PROTOCOL.md section 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..protocol import (
    CheckpointPayload,
    ErrorPayload,
    LogBatchPayload,
    LogEntry,
    LogPayload,
    Message,
    MessageType,
    PhaseChangedPayload,
    ProgressPayload,
    ProtocolError,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    can_transition,
)
from .changes import CheckpointEvent, ErrorEvent, LogEvent, PhaseEvent
from .logbuffer import pack, packed_size
from .model import ConnectionState, Health, ServiceState, WorkflowState
from .records import CheckpointRecord, ErrorRecord, PhaseChange, StoredLog
from .retention import Retention

__all__ = ["MessageRules", "NotOwner"]

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


class NotOwner(Exception):
    """A message about a workflow that belongs to another service (caught in ``receive``)."""

    def __init__(self, workflow: WorkflowState) -> None:
        super().__init__(workflow.workflow_id)
        self.workflow = workflow


class MessageRules(Retention):
    """The handler of each service-to-hub message type, on top of ``Retention``."""

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
            raise NotOwner(workflow)
        if workflow.service_id != service.service_id:  # new, or restored without one
            workflow.service_id = service.service_id
            self._note_service(workflow)
        workflow.connection_id = conn.connection_id
        workflow.updated_at = now
        self._changes.workflows.add(workflow_id)
        self._touched = workflow
        return workflow

    def _workflow_id_of(self, message: Message, payload_id: str, what: str) -> str:
        workflow_id = message.workflow_id or payload_id
        if not workflow_id:
            raise ProtocolError(f"{what} message without a workflow_id")
        self._check_id(workflow_id, f"{what} workflow_id")
        return workflow_id

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
        record = StoredLog(entry, service.service_id, now)
        packed = pack(record)  # one tuple shared by both buffers
        size = packed_size(packed)
        self.logs.append_packed(packed, size)
        if entry.workflow_id and self._keep_log(packed, size, entry.workflow_id):
            workflow = self.workflows[entry.workflow_id]
            workflow.log_count += 1
            self._changes.workflows.add(entry.workflow_id)
        self._changes.events.append(LogEvent(record, size))

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
