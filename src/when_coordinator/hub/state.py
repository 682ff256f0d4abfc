"""What the reference hub knows: connections, services, workflows and logs, without any I/O.

``HubState`` is the hub's bookkeeping as a plain object driven by method calls that take the
current time as an argument, so every rule here (registration, version negotiation, phase
history, anomaly detection, health, bounded buffers) is unit-testable without sockets or
clocks. The server (``server.py``) feeds it decoded messages and reads back what changed.

``HubState`` is built in layers: ``Retention`` (``retention.py``: the collections and every
bound on them), ``MessageRules`` (``rules.py``: how each message type is applied), and here the
connections, services, ``register``, ``receive``, restore and the mirror of other instances.
The live records it updates in place are in ``model.py``; the immutable facts they hold in
``records.py``. The names those modules define are importable from here too.

The hub mirrors what services report and trusts them: a ``phase_changed`` is applied even when
the transition table does not allow it, but anything unexpected (duplicates, skipped
transitions, forbidden transitions, traffic before ``register``, stray pongs) is recorded as an
anomaly on the workflow or service, counted, and never fatal. The reference Go client produces
all of these (PROTOCOL.md section 5).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..protocol import Message, MessageType, RegisterPayload
from .bounds import cut
from .changes import (
    Changes,
    CheckpointEvent,
    ErrorEvent,
    Event,
    LogEvent,
    PhaseEvent,
    Registration,
    Snapshot,
)
from .logbuffer import LogBuffer, pack, packed_size
from .model import ConnectionState, Health, ServiceState, WorkflowState
from .records import Anomaly, CheckpointRecord, ErrorRecord, PhaseChange, StoredLog
from .retention import RECORD_LISTS, append_bounded
from .rules import MessageRules, NotOwner
from .versions import HUB_PROTOCOL_VERSION, VersionRefused, negotiate_version

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
    "PhaseChange",
    "PhaseEvent",
    "Registration",
    "ServiceState",
    "Snapshot",
    "StoredLog",
    "VersionRefused",
    "WorkflowState",
    "negotiate_version",
]

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
_MAX_CAPABILITIES = 64
"""Capabilities kept of one ``register`` (each cut at 256 characters)."""


class HubState(MessageRules):
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
        conn.invalid_reasons = append_bounded(conn.invalid_reasons, reason[:200], 10)
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
                self._note_service(workflow)
        self._of_service.pop(old.service_id, None)  # every one of them has moved
        self._finished_of.pop(old.service_id, None)

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
        service.pending_pings = append_bounded(service.pending_pings, (ping_id, now), 16)
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

    # ------------------------------------------------------------------ messages

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
        except NotOwner as refused:
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

    # ------------------------------------------------------------------ reads and restore

    def logs_for(self, workflow_id: str) -> tuple[StoredLog, ...]:
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
            self._note_service(workflow)
            self._restore_sizes(workflow)
        for workflow in snapshot.workflows:
            self._wait_for_parent(workflow)
        self._restore_logs(snapshot.logs)
        numbers = [
            int(sid[4:]) for sid in self.services if sid.startswith("svc-") and sid[4:].isdigit()
        ]
        self._next_service = itertools.count(max(numbers, default=0) + 1)
        self._evict()

    def _restore_logs(self, records: Iterable[StoredLog]) -> None:
        for record in records:
            packed = pack(record)
            size = packed_size(packed)
            self.logs.append_packed(packed, size)
            if record.workflow_id:
                self._keep_log(packed, size, record.workflow_id)
        self.logs.evicted = 0
        self.logs.total = len(self.logs)

    # ------------------------------------------------------------------ other instances

    def mirror_service(self, document: Mapping[str, Any], connected: bool) -> None:
        """A service another hub instance holds (or held), as it persisted it: shown as that
        instance says, ``connected`` only while its lease lives. Raises on a bad document."""
        service = ServiceState.from_dict(document)
        service.connection_id = ""
        service.pending_pings = ()
        service.connected = connected
        if not connected:
            service.health = Health.DISCONNECTED
        self.services[service.service_id] = service
        self._changes.services.add(service.service_id)

    def mirror_disconnected(self, service_id: str) -> None:
        """The instance holding the service lost its lease: it shows as disconnected."""
        service = self.services.get(service_id)
        if service is not None and service.connected:
            service.connected = False
            service.health = Health.DISCONNECTED
            self._changes.services.add(service_id)

    def mirror_workflow(
        self, document: Mapping[str, Any], records: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """A workflow another instance persisted: its summary, plus the (kind, record) rows it
        appended since, which are streamed to watchers as the events they were there.

        Every instance applies every document the others persist, most of them a progress
        update of a known workflow: that one keeps its record lists, and their byte counts,
        as they are (recounting them cost as much as the rest of the update)."""
        if "history" in document or "checkpoints" in document or "errors" in document:
            document = {k: v for k, v in document.items() if k not in RECORD_LISTS}
        workflow = WorkflowState.from_dict(document)
        old = self.workflows.get(workflow.workflow_id)
        recount = old is None or bool(records)
        if old is not None:
            workflow.history, workflow.checkpoints = old.history, old.checkpoints
            workflow.errors = old.errors
            if recount:
                self._forget_sizes(old)
        events = self._changes.events
        wf, sid = workflow.workflow_id, workflow.service_id
        for kind, data in records:
            if kind == "history":
                change = PhaseChange.from_dict(data)
                workflow.history = append_bounded(workflow.history, change, self._max_history)
                events.append(PhaseEvent(wf, sid, change))
            elif kind == "checkpoints":
                checkpoint = CheckpointRecord.from_dict(data)
                workflow.checkpoints = append_bounded(
                    workflow.checkpoints, checkpoint, self._max_records
                )
                events.append(CheckpointEvent(wf, sid, checkpoint))
            elif kind == "errors":
                error = ErrorRecord.from_dict(data)
                workflow.errors = append_bounded(workflow.errors, error, self._max_records)
                events.append(ErrorEvent(wf, sid, error))
        self.workflows[wf] = workflow
        if wf not in self.workflow_logs:
            self.workflow_logs[wf] = self._log_buffer()
        self._settle(workflow)
        self._note_service(workflow)
        if recount:
            self._restore_sizes(workflow)
        else:
            self._account(workflow)
        self._changes.workflows.add(wf)
        self._evict(keep=wf)

    def mirror_logs(self, records: Iterable[StoredLog]) -> None:
        """Log records another instance persisted, streamed to watchers."""
        for record in records:
            packed = pack(record)
            size = packed_size(packed)
            self.logs.append_packed(packed, size)
            if record.workflow_id:
                self._keep_log(packed, size, record.workflow_id)
            self._changes.events.append(LogEvent(record, size))
