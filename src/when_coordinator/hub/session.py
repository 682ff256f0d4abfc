"""The operator WebSocket (``/v1/operator``): requests answered concurrently, and a live stream.

A session answers the same ops as the HTTP API (``operator.execute``); ``subscribe`` starts a
stream of the hub's changes: record updates coalesced by id and discrete events in order,
sent at most about ten times a second, with ``dropped`` telling how many events a slow
watcher missed (see ``operator.py`` for the protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import queries
from .changes import Changes, CheckpointEvent, ErrorEvent, Event, LogEvent, PhaseEvent
from .model import WorkflowState
from .operator import (
    STEERING,
    OperatorError,
    classify,
    error_body,
    execute,
    focus_of,
    param_flag,
    param_number,
    param_text,
    read_only_error,
    resolve_workflow_id,
)

if TYPE_CHECKING:
    from .view import HubView

__all__ = ["OperatorSession"]

_log = logging.getLogger("when_coordinator.hub.operator")

_MAX_EVENTS = 1_000
"""Events queued for a slow watcher before older ones are dropped (and counted)."""
_SEND_INTERVAL = 0.1
_MAX_INTERVAL = 5.0


def _event_dict(event: Event) -> dict[str, Any]:
    if isinstance(event, PhaseEvent):
        return {
            "event": "phase_changed",
            "workflow_id": event.workflow_id,
            "service_id": event.service_id,
            **event.change.as_dict(),
        }
    if isinstance(event, CheckpointEvent):
        return {
            "event": "checkpoint",
            "workflow_id": event.workflow_id,
            "service_id": event.service_id,
            **event.record.as_dict(),
        }
    if isinstance(event, ErrorEvent):
        return {
            "event": "error",
            "workflow_id": event.workflow_id,
            "service_id": event.service_id,
            **event.record.as_dict(),
        }
    if isinstance(event, LogEvent):
        return {"event": "log", **event.record.as_dict()}
    return {"event": "anomaly", **event.as_dict()}


class OperatorSession:
    """One operator WebSocket: requests answered concurrently, plus an optional event stream."""

    def __init__(self, hub: HubView, ws: ServerConnection, *, read_only: bool = False) -> None:
        self._hub = hub
        self._ws = ws
        self._read_only = read_only
        """Logged in with the read token: every op but the steering ones."""
        self._interval = _SEND_INTERVAL
        self._batch = False
        """Send each drain as one ``batch`` event (one frame) instead of a frame per event."""
        self._focus: frozenset[str] | None = None
        """Set by ``focus``: workflow records and events only for these; the rest counted."""
        self._others = 0
        self._subscribed = False
        self._logs = False
        self._scope = ""
        self._events: deque[Event] = deque()
        self._dropped = 0
        self._workflows: set[str] = set()
        self._services: set[str] = set()
        self._removed: set[str] = set()
        self._snapshot: dict[str, Any] | None = None
        self._streaming = False
        """Events flow only after the subscribe reply went out, so the reply comes first."""
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(16)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        sender = asyncio.ensure_future(self._sender())
        try:
            async for frame in self._ws:
                if isinstance(frame, bytes):
                    await self._reply(None, error=OperatorError("send JSON text frames"))
                    continue
                try:
                    request = json.loads(frame)
                except ValueError as exc:
                    await self._reply(None, error=OperatorError(f"invalid JSON: {exc}"))
                    continue
                if not isinstance(request, dict):
                    await self._reply(None, error=OperatorError("a request is a JSON object"))
                    continue
                await self._slots.acquire()
                task = asyncio.ensure_future(self._handle(request))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        except ConnectionClosed:
            pass
        finally:
            self._hub.unsubscribe(self)
            sender.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(sender, *self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, request: dict[str, Any]) -> None:
        request_id = request.get("id")
        op = request.get("op")
        try:
            if not isinstance(op, str):
                raise OperatorError("'op' must be a string")
            if op in STEERING and self._read_only:
                raise read_only_error(op)
            if op == "subscribe":
                result: Any = self._subscribe(request)
            elif op == "focus":
                self._focus = focus_of(request)
                self._others = 0
                result = {"focus": None if self._focus is None else len(self._focus)}
            elif op == "unsubscribe":
                self._subscribed = self._streaming = False
                self._hub.unsubscribe(self)
                result = {"subscribed": False}
            else:
                result = await execute(self._hub, op, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._reply(request_id, error=exc)
            return
        await self._reply(request_id, result=result)
        if op == "subscribe":
            self._streaming = True
            self._wake.set()

    def _subscribe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self._logs = param_flag(request, "logs")
        scope = param_text(request, "workflow_id")
        self._scope = resolve_workflow_id(self._hub, scope, unknown_ok=True) if scope else ""
        self._focus = focus_of(request)
        self._others = 0
        self._batch = param_flag(request, "batch")
        interval = param_number(request, "interval", _SEND_INTERVAL)
        if not _SEND_INTERVAL <= interval <= _MAX_INTERVAL:
            raise OperatorError(f"'interval' must be in [{_SEND_INTERVAL:g}, {_MAX_INTERVAL:g}] s")
        self._interval = interval
        with_workflows = param_flag(request, "workflows") if "workflows" in request else True
        self._events.clear()
        self._workflows.clear()
        self._services.clear()
        self._removed.clear()
        hub = self._hub
        self._snapshot = {
            "event": "snapshot",
            "services": [s.as_dict() for s in hub.services.values()],
            "workflows": [
                queries.summary(hub, w) for w in hub.workflows.values() if self._in_scope(w)
            ]
            if with_workflows
            else [],
        }
        self._subscribed = True
        self._streaming = False
        hub.subscribe(self)
        return {"subscribed": True, "logs": self._logs, "workflow_id": self._scope}

    def _in_scope(self, workflow: WorkflowState | None, workflow_id: str = "") -> bool:
        if not self._scope:
            return True
        if workflow is None:
            return workflow_id == self._scope
        hub = self._hub
        seen: set[str] = set()
        current: WorkflowState | None = workflow
        while current is not None and current.workflow_id not in seen:
            if current.workflow_id == self._scope:
                return True
            seen.add(current.workflow_id)
            parent = current.parent_workflow_id
            current = hub.workflows.get(parent) if parent else None
        return False

    def push(self, changes: Changes) -> None:
        """Take the hub's latest changes (called on the loop after every change)."""
        if not self._subscribed:
            return
        focus = self._focus
        if focus is None:
            self._workflows |= changes.workflows
        else:  # a page watching a few workflows: the others only as a count
            focused = changes.workflows & focus
            self._others += len(changes.workflows) - len(focused)
            self._workflows |= focused
        self._services |= changes.services
        self._removed |= changes.removed_workflows
        for event in changes.events:
            if isinstance(event, LogEvent) and not self._logs:
                continue
            if (
                focus is not None
                and isinstance(event, (PhaseEvent, CheckpointEvent, ErrorEvent))
                and event.workflow_id not in focus
            ):
                self._others += 1
                continue
            if len(self._events) >= _MAX_EVENTS:
                self._events.popleft()
                self._dropped += 1
            self._events.append(event)
        self._wake.set()

    def _event_in_scope(self, event: Event) -> bool:
        if not self._scope:
            return True
        workflow_id = event.record.workflow_id if isinstance(event, LogEvent) else event.workflow_id
        return bool(workflow_id) and self._in_scope(
            self._hub.workflows.get(workflow_id), workflow_id
        )

    def _drain(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._snapshot is not None:
            out.append(self._snapshot)
            self._snapshot = None
        if self._dropped:
            out.append({"event": "dropped", "count": self._dropped})
            self._dropped = 0
        while self._events:
            event = self._events.popleft()
            if self._event_in_scope(event):
                out.append(_event_dict(event))
        hub = self._hub
        for workflow_id in sorted(self._workflows):
            workflow = hub.workflows.get(workflow_id)
            if workflow is not None and self._in_scope(workflow):
                out.append({"event": "workflow", "workflow": queries.summary(hub, workflow)})
        for workflow_id in sorted(self._removed):
            if self._in_scope(None, workflow_id):
                out.append({"event": "removed", "workflow_id": workflow_id})
        if self._others:
            out.append({"event": "changed", "workflows": self._others})
            self._others = 0
        if not self._scope:
            for service_id in sorted(self._services):
                service = hub.services.get(service_id)
                if service is not None:
                    out.append({"event": "service", "service": service.as_dict()})
        self._workflows.clear()
        self._removed.clear()
        self._services.clear()
        return out

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not (self._subscribed and self._streaming):
                continue
            events = self._drain()
            if self._batch:
                if events:
                    batch = {"event": "batch", "events": events}
                    await self._ws.send(json.dumps(batch, separators=(",", ":")))
            else:
                for event in events:
                    await self._ws.send(json.dumps(event, separators=(",", ":")))
            await asyncio.sleep(self._interval)  # coalesce bursts of progress updates

    async def _reply(
        self, request_id: Any, *, result: Any = None, error: Exception | None = None
    ) -> None:
        if error is None:
            body: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
        else:
            code, status = classify(error)
            if status == 500:
                _log.error("operator request failed", exc_info=error)
            body = {
                "id": request_id,
                "ok": False,
                "error": str(error),
                "code": code,
                **error_body(error),
            }
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps(body, separators=(",", ":")))
