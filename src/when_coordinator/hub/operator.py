"""The hub's operator interface: a JSON HTTP API and an operator WebSocket, on the hub's port.

Both need ``Authorization: Bearer <token>`` when the hub has a token (``GET /healthz`` does
not), or the dashboard's session cookie (``dashboard/``); the server checks it, whatever the
path, before anything here runs. The read-only token gets 403 ``forbidden`` for the steering
commands. Summaries carry ``name``, ``service_name`` and the ``commands`` the phase allows
(``queries.py``).

HTTP (responses are JSON; errors are ``{"error": "...", "code": "..."}``):

========================================  ==================================================
``GET /healthz``                          ``{"status": "ok", "services": n, "workflows": n, "store":
                                          {...}, "memory": {...}}``; 503 while the store fails
``GET /v1/services``                      ``{"services": [service, ...]}``
``GET /v1/workflows``                     ``{"workflows": [summary, ...]}``; filters
                                          ``?service_id=``, ``?phase=``, ``?root=``; with
                                          ``?limit=`` (or ``offset``, ``q``, ``service``,
                                          ``active``): one sorted page with counts
``GET /v1/overview``                      services with workflow counts, grouped anomalies
``GET /v1/workflows/<id>``                the full workflow (history, checkpoints, errors,
                                          anomalies) plus its last ``?logs=`` (50) logs
``GET /v1/logs``                          ``{"logs": [...], "evicted": n}``; ``?workflow_id=``,
                                          ``?level=``, ``?limit=`` (100)
``GET /v1/connections``                   coordination connections with their counters
``GET /v1/anomalies``                     the most recent anomalies
``GET /v1/metrics``                       the figures of ``GET /metrics`` as JSON (for the
                                          dashboard; see ``metrics.figures``)
``POST /v1/workflows/<id>/pause``         ``?reason=``; ``{"sent": message_id}``
``POST /v1/workflows/<id>/resume``        ``?from_checkpoint=``
``POST /v1/workflows/<id>/cancel``        ``?reason=&force=true``
``POST /v1/workflows/<id>/status``        ``?timeout=`` (5, at most 9); the service's answer
========================================  ==================================================

Wherever a workflow id is taken (paths, ``?workflow_id=``, the ops below), a unique prefix of
a known id stands for it: an ambiguous one is 400 ``ambiguous`` (the answer lists up to ten
``candidates``), one that matches nothing 404.

Status codes: 400 bad parameters or a malformed path, 401 token, 404 unknown workflow or path,
405 wrong method, 409 the workflow's phase does not allow the command (the answer carries
``phase`` and ``allowed``), 503 the owning service is not connected, 504 no status answer in
time.

Operator WebSocket ``/v1/operator``: each request is a JSON object ``{"id": <any>, "op": <name>,
...params}`` answered by ``{"id": <same>, "ok": true, "result": ...}`` or ``{"id": <same>,
"ok": false, "error": "...", "code": "..."}``. Ops: ``pause`` (workflow_id, reason),
``resume`` (workflow_id, from_checkpoint), ``cancel`` (workflow_id, reason, force), ``status``
(workflow_id, timeout), ``services``, ``workflows``, ``workflow`` (workflow_id), ``logs``
(workflow_id, level, limit), ``connections``, ``anomalies``, ``metrics``, ``query`` (a page,
as over HTTP), ``overview``, ``cancel_many`` (the filters, reason, force), ``subscribe`` (logs:
bool, workflow_id: only that workflow and its descendants, workflows: false for no snapshot
list, workflow_ids: as ``focus``, batch: one frame per push, interval: seconds between pushes,
0.1 to 5), ``focus`` (workflow_ids: only those pushed, the others counted in ``changed``
events), ``unsubscribe``. A refused command's error has ``code`` ``conflict`` and the same
``phase`` and ``allowed`` as over HTTP.

After ``subscribe`` the server pushes events, objects with an ``event`` key: first
``snapshot`` (services, workflows), then in order of occurrence ``phase_changed``,
``checkpoint``, ``error``, ``anomaly`` and (if asked) ``log``, then the latest ``workflow`` and
``service`` records that changed (progress updates coalesce: a watcher sees the newest state,
at most about ten times a second). ``dropped`` tells how many events a slow watcher missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import queries
from .changes import Changes, CheckpointEvent, ErrorEvent, Event, LogEvent, PhaseEvent
from .dashboard import Access
from .errors import (
    CommandRefused,
    HubClosed,
    HubError,
    ServiceUnavailable,
    StatusTimeout,
    WorkflowNotFound,
)
from .metrics import figures
from .model import WorkflowState
from .routing import Target

if TYPE_CHECKING:
    from .server import Hub

__all__ = ["OperatorError", "OperatorSession", "bad_path", "execute", "http_request"]

_log = logging.getLogger("when_coordinator.hub.operator")

_COMMANDS = ("pause", "resume", "cancel", "status")
_STEERING = frozenset({"pause", "resume", "cancel", "cancel_many"})
_MAX_STATUS_TIMEOUT = 9.0  # below the websockets handshake timeout (10 s) for HTTP callers
_MAX_EVENTS = 1_000
_SEND_INTERVAL = 0.1
_MAX_INTERVAL = 5.0


class OperatorError(HubError):
    """A request the operator API refuses; ``code`` and ``http_status`` classify it."""

    def __init__(self, message: str, code: str = "bad_request", http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


def _text(params: Mapping[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise OperatorError(f"{key!r} must be a string")
    return value


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OperatorError(f"{key!r} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OperatorError(f"{key!r} must be a number")
    return float(value)


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    if not isinstance(value, bool):
        raise OperatorError(f"{key!r} must be a boolean")
    return value


def _workflow_id(hub: Hub, params: Mapping[str, Any]) -> str:
    """The ``workflow_id`` parameter, or the one workflow whose id it begins (a prefix)."""
    workflow_id = _text(params, "workflow_id")
    if not workflow_id:
        raise OperatorError("'workflow_id' is required")
    return resolve_workflow_id(hub, workflow_id)


_MAX_CANDIDATES = 10


class AmbiguousWorkflow(OperatorError):
    """A workflow id prefix that several known workflows share."""

    def __init__(self, prefix: str, candidates: list[str]) -> None:
        shown = ", ".join(candidates[:_MAX_CANDIDATES])
        more = len(candidates) - _MAX_CANDIDATES
        super().__init__(
            f"workflow id {prefix!r} is ambiguous: {len(candidates)} workflow ids start so "
            f"({shown}{f' and {more} more' if more > 0 else ''}); give more of the id",
            code="ambiguous",
        )
        self.candidates = candidates[:_MAX_CANDIDATES]


def resolve_workflow_id(hub: Hub, text: str, *, unknown_ok: bool = False) -> str:
    """The known workflow id that ``text`` is, or is the unique prefix of.

    Ids are long (``wf-`` and 32 hex digits) and operators type the start, as with git or
    docker. An exact id always wins, even if it also starts longer ids. Raises
    ``AmbiguousWorkflow``, or ``WorkflowNotFound`` (unless ``unknown_ok``: then ``text``
    comes back as it is, for a workflow that may appear later).
    """
    workflows = hub.workflows
    if text in workflows:
        return text
    candidates = sorted(w for w in workflows if w.startswith(text))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise AmbiguousWorkflow(text, candidates)
    if unknown_ok:
        return text
    raise WorkflowNotFound(f"unknown workflow {text!r}: no service has reported it to this hub")


def _workflows(hub: Hub, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    service_id = _text(params, "service_id")
    phase = _text(params, "phase")
    root = _text(params, "root")
    out = []
    for workflow in hub.workflows.values():
        if service_id and workflow.service_id != service_id:
            continue
        if phase and workflow.phase.value != phase:
            continue
        if root and workflow.root_workflow_id != root:
            continue
        out.append(queries.summary(hub, workflow))
    return out


def _logs(hub: Hub, params: Mapping[str, Any]) -> dict[str, Any]:
    workflow_id = _text(params, "workflow_id")
    level = _text(params, "level")
    limit = int(_number(params, "limit", 100))
    if limit < 0:
        raise OperatorError("'limit' must be >= 0")
    state = hub.state
    if workflow_id and workflow_id not in state.workflow_logs:
        workflow_id = resolve_workflow_id(hub, workflow_id)
    buffer = state.workflow_logs.get(workflow_id) if workflow_id else state.logs
    records = list(buffer) if buffer is not None else []
    if level:
        records = [r for r in records if r.level == level]
    return {
        "logs": [r.as_dict() for r in records[len(records) - limit :]] if limit else [],
        "evicted": buffer.evicted if buffer is not None else 0,
        "total": buffer.total if buffer is not None else 0,
    }


def _workflow(hub: Hub, params: Mapping[str, Any]) -> dict[str, Any]:
    workflow_id = _workflow_id(hub, params)
    workflow = hub.workflows.get(workflow_id)
    if workflow is None:
        raise WorkflowNotFound(f"unknown workflow {workflow_id!r}")
    return queries.workflow_detail(hub, workflow, max(0, int(_number(params, "logs", 50))))


# ---- dashboard queries: pages, overview, bulk commands (see queries.py)

_PAGE_KEYS = ("offset", "limit", "q", "service", "active")


def _page(hub: Hub, params: Mapping[str, Any]) -> dict[str, Any]:
    filters = {key: _text(params, key) for key in ("service", "service_id", "phase", "q")}
    if _flag(params, "active") and not filters["phase"]:
        filters["phase"] = "active"
    offset = int(_number(params, "offset", 0))
    limit = int(_number(params, "limit", 50))
    return queries.query(hub, filters, offset=offset, limit=limit)


async def _cancel_many(hub: Hub, params: Mapping[str, Any]) -> dict[str, Any]:
    """Cancel every workflow the filters select whose phase allows it; failures are counted."""
    filters = {key: _text(params, key) for key in ("service", "service_id", "phase", "q")}
    if not any(filters.values()):
        raise OperatorError("cancel_many needs a filter (q, service or phase): it never means all")
    reason, force = _text(params, "reason"), _flag(params, "force")
    sent: list[str] = []
    failed: dict[str, str] = {}
    for workflow_id in queries.selected_ids(hub, filters, "cancel"):
        try:
            await hub.cancel(workflow_id, reason, force)
        except HubError as exc:
            failed[workflow_id] = str(exc)
        else:
            sent.append(workflow_id)
    return {"sent": sent, "failed": failed}


_MAX_FOCUS = 1_000


def _focus(params: Mapping[str, Any]) -> frozenset[str] | None:
    """``workflow_ids`` of a ``focus`` request: a list of ids, or null for every workflow."""
    ids = params.get("workflow_ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise OperatorError("'workflow_ids' must be a list of strings or null")
    if len(ids) > _MAX_FOCUS:
        raise OperatorError(f"'workflow_ids' holds at most {_MAX_FOCUS} ids")
    return frozenset(ids)


def _read_only(op: str) -> OperatorError:
    return OperatorError(
        f"{op!r} needs the steering token: this session may only watch", "forbidden", 403
    )


async def execute(hub: Hub, op: str, params: Mapping[str, Any]) -> Any:
    """Carry out one operator request; raises ``OperatorError`` (or a hub ``CommandError``)."""
    if op in ("pause", "resume", "cancel"):
        workflow_id = _workflow_id(hub, params)
        if op == "pause":
            sent = await hub.pause(workflow_id, _text(params, "reason"))
        elif op == "resume":
            sent = await hub.resume(workflow_id, _text(params, "from_checkpoint"))
        else:
            sent = await hub.cancel(workflow_id, _text(params, "reason"), _flag(params, "force"))
        workflow = hub.workflows.get(workflow_id)
        return {
            "sent": sent.id,
            "service_id": workflow.service_id if workflow else "",
            "workflow_id": workflow_id,
        }
    if op == "status":
        workflow_id = _workflow_id(hub, params)
        timeout = _number(params, "timeout", hub.command_timeout)
        if not 0 < timeout <= _MAX_STATUS_TIMEOUT:
            raise OperatorError(f"'timeout' must be in (0, {_MAX_STATUS_TIMEOUT:g}] seconds")
        answer = await hub.status(workflow_id, timeout)
        return answer.to_dict()
    if op == "cancel_many":
        return await _cancel_many(hub, params)
    if op == "query":
        return _page(hub, params)
    if op == "overview":
        return queries.overview(hub)
    if op == "services":
        return [service.as_dict() for service in hub.services.values()]
    if op == "workflows":
        return _workflows(hub, params)
    if op == "workflow":
        return _workflow(hub, params)
    if op == "logs":
        return _logs(hub, params)
    if op == "connections":
        return [conn.as_dict() for conn in hub.connections.values()]
    if op == "anomalies":
        return [anomaly.as_dict() for anomaly in hub.anomalies]
    if op == "metrics":
        return figures(hub, time.monotonic())
    raise OperatorError(f"unknown op {op!r}", code="unknown_op")


def _classify(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, OperatorError):
        return exc.code, exc.http_status
    if isinstance(exc, WorkflowNotFound):
        return "unknown_workflow", 404
    if isinstance(exc, CommandRefused):
        return "conflict", 409
    if isinstance(exc, StatusTimeout):
        return "timeout", 504
    if isinstance(exc, (ServiceUnavailable, HubClosed)):
        return "unavailable", 503
    if isinstance(exc, ValueError):
        return "bad_request", 400
    return "internal", 500


# --------------------------------------------------------------------------- HTTP


def json_response(status: int, body: Any) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _error(status: int, message: str, code: str) -> Response:
    return json_response(status, {"error": message, "code": code})


def _error_body(exc: Exception) -> dict[str, Any]:
    """What an error answer carries beyond its message and code."""
    if isinstance(exc, CommandRefused):
        return {"phase": exc.phase, "allowed": list(exc.allowed)}
    if isinstance(exc, AmbiguousWorkflow):
        return {"candidates": exc.candidates}
    return {}


def bad_path(target: Target) -> Response:
    """The answer to an authenticated request whose path is malformed (see ``routing``)."""
    return _error(400, f"malformed path: {target.error}", "bad_path")


async def http_request(hub: Hub, request: Request, target: Target) -> Response:
    """Answer one HTTP request of the operator API: ``target`` is the request's parsed path,
    already authenticated (or the public health route)."""
    raw_path = target.path
    params = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
    parts = list(target.segments)
    try:
        if request.method == "POST":
            if len(parts) == 4 and parts[:2] == ["v1", "workflows"] and parts[3] in _COMMANDS:
                params["workflow_id"] = parts[2]
                if parts[3] in _STEERING and hub.dashboard.access(request) is not Access.STEER:
                    raise _read_only(parts[3])
                return json_response(200, await execute(hub, parts[3], params))
            return _get_route_or(parts, 405 if _is_get_route(parts) else 404)
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"method {request.method} not allowed", "method_not_allowed")
        if parts == ["healthz"]:
            state = hub.state
            store = hub.store_health()
            ready = store is None or store["ok"]  # a store that cannot write: not ready
            return json_response(
                200 if ready else 503,
                {
                    "status": "ok" if ready else "store failing",
                    "protocol_version": hub.protocol_version,
                    "services": sum(1 for s in state.services.values() if s.connected),
                    "workflows": len(state.workflows),
                    "store": store,
                    "bus": hub.bus_health(),
                    "memory": hub.memory(),
                },
            )
        if parts == ["v1", "services"]:
            return json_response(200, {"services": await execute(hub, "services", params)})
        if parts == ["v1", "workflows"]:
            if any(key in params for key in _PAGE_KEYS):
                return json_response(200, _page(hub, params))
            return json_response(200, {"workflows": _workflows(hub, params)})
        if parts == ["v1", "overview"]:
            return json_response(200, queries.overview(hub))
        if len(parts) == 3 and parts[:2] == ["v1", "workflows"]:
            params["workflow_id"] = parts[2]
            return json_response(200, _workflow(hub, params))
        if parts == ["v1", "logs"]:
            return json_response(200, _logs(hub, params))
        if parts == ["v1", "connections"]:
            return json_response(200, {"connections": await execute(hub, "connections", {})})
        if parts == ["v1", "anomalies"]:
            return json_response(200, {"anomalies": await execute(hub, "anomalies", {})})
        if parts == ["v1", "metrics"]:
            return json_response(200, await execute(hub, "metrics", {}))
        if len(parts) == 4 and parts[:2] == ["v1", "workflows"] and parts[3] in _COMMANDS:
            return _error(405, f"use POST for {parts[3]}", "method_not_allowed")
        return _error(404, f"no such path: {raw_path}", "not_found")
    except Exception as exc:
        code, status = _classify(exc)
        if status == 500:
            _log.exception("operator HTTP request %s %s failed", request.method, raw_path)
        body = {"error": str(exc) or type(exc).__name__, "code": code, **_error_body(exc)}
        return json_response(status, body)


def _is_get_route(parts: list[str]) -> bool:
    return parts in (
        ["healthz"],
        ["v1", "services"],
        ["v1", "workflows"],
        ["v1", "logs"],
        ["v1", "connections"],
        ["v1", "anomalies"],
        ["v1", "overview"],
        ["v1", "metrics"],
    ) or (len(parts) == 3 and parts[:2] == ["v1", "workflows"])


def _get_route_or(parts: list[str], status: int) -> Response:
    if status == 405:
        return _error(405, "this path is read-only: use GET", "method_not_allowed")
    return _error(404, "no such path: /" + "/".join(parts), "not_found")


# --------------------------------------------------------------------------- WebSocket


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

    def __init__(self, hub: Hub, ws: ServerConnection, *, read_only: bool = False) -> None:
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
            self._hub._unsubscribe(self)
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
            if op in _STEERING and self._read_only:
                raise _read_only(op)
            if op == "subscribe":
                result: Any = self._subscribe(request)
            elif op == "focus":
                self._focus = _focus(request)
                self._others = 0
                result = {"focus": None if self._focus is None else len(self._focus)}
            elif op == "unsubscribe":
                self._subscribed = self._streaming = False
                self._hub._unsubscribe(self)
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
        self._logs = _flag(request, "logs")
        scope = _text(request, "workflow_id")
        self._scope = resolve_workflow_id(self._hub, scope, unknown_ok=True) if scope else ""
        self._focus = _focus(request)
        self._others = 0
        self._batch = _flag(request, "batch")
        interval = _number(request, "interval", _SEND_INTERVAL)
        if not _SEND_INTERVAL <= interval <= _MAX_INTERVAL:
            raise OperatorError(f"'interval' must be in [{_SEND_INTERVAL:g}, {_MAX_INTERVAL:g}] s")
        self._interval = interval
        with_workflows = _flag(request, "workflows") if "workflows" in request else True
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
        hub._subscribe(self)
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
            code, status = _classify(error)
            if status == 500:
                _log.error("operator request failed", exc_info=error)
            body = {
                "id": request_id,
                "ok": False,
                "error": str(error),
                "code": code,
                **_error_body(error),
            }
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps(body, separators=(",", ":")))
