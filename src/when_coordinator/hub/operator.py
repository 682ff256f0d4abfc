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

import email.utils
import json
import logging
import math
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import queries
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
from .routing import Target

if TYPE_CHECKING:
    from .view import HubView

__all__ = ["OperatorError", "bad_path", "execute", "http_request", "resolve_workflow_id"]

_log = logging.getLogger("when_coordinator.hub.operator")

_COMMANDS = ("pause", "resume", "cancel", "status")
STEERING = frozenset({"pause", "resume", "cancel", "cancel_many"})
_MAX_STATUS_TIMEOUT = 9.0  # below the websockets handshake timeout (10 s) for HTTP callers


class OperatorError(HubError):
    """A request the operator API refuses; ``code`` and ``http_status`` classify it."""

    def __init__(self, message: str, code: str = "bad_request", http_status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


def param_text(params: Mapping[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise OperatorError(f"{key!r} must be a string")
    return value


def param_number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OperatorError(f"{key!r} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OperatorError(f"{key!r} must be a number")
    return float(value)


def param_flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    if not isinstance(value, bool):
        raise OperatorError(f"{key!r} must be a boolean")
    return value


def _workflow_id(hub: HubView, params: Mapping[str, Any]) -> str:
    """The ``workflow_id`` parameter, or the one workflow whose id it begins (a prefix)."""
    workflow_id = param_text(params, "workflow_id")
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


def resolve_workflow_id(hub: HubView, text: str, *, unknown_ok: bool = False) -> str:
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


def _workflows(hub: HubView, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    service_id = param_text(params, "service_id")
    phase = param_text(params, "phase")
    root = param_text(params, "root")
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


def _logs(hub: HubView, params: Mapping[str, Any]) -> dict[str, Any]:
    workflow_id = param_text(params, "workflow_id")
    level = param_text(params, "level")
    limit = int(param_number(params, "limit", 100))
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


def _workflow(hub: HubView, params: Mapping[str, Any]) -> dict[str, Any]:
    workflow_id = _workflow_id(hub, params)
    workflow = hub.workflows.get(workflow_id)
    if workflow is None:
        raise WorkflowNotFound(f"unknown workflow {workflow_id!r}")
    return queries.workflow_detail(hub, workflow, max(0, int(param_number(params, "logs", 50))))


# ---- dashboard queries: pages, overview, bulk commands (see queries.py)

_PAGE_KEYS = ("offset", "limit", "q", "service", "active")


def _page(hub: HubView, params: Mapping[str, Any]) -> dict[str, Any]:
    filters = {key: param_text(params, key) for key in ("service", "service_id", "phase", "q")}
    if param_flag(params, "active") and not filters["phase"]:
        filters["phase"] = "active"
    offset = int(param_number(params, "offset", 0))
    limit = int(param_number(params, "limit", 50))
    return queries.query(hub, filters, offset=offset, limit=limit)


async def _cancel_many(hub: HubView, params: Mapping[str, Any]) -> dict[str, Any]:
    """Cancel every workflow the filters select whose phase allows it; failures are counted."""
    filters = {key: param_text(params, key) for key in ("service", "service_id", "phase", "q")}
    if not any(filters.values()):
        raise OperatorError("cancel_many needs a filter (q, service or phase): it never means all")
    reason, force = param_text(params, "reason"), param_flag(params, "force")
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


def focus_of(params: Mapping[str, Any]) -> frozenset[str] | None:
    """``workflow_ids`` of a ``focus`` request: a list of ids, or null for every workflow."""
    ids = params.get("workflow_ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise OperatorError("'workflow_ids' must be a list of strings or null")
    if len(ids) > _MAX_FOCUS:
        raise OperatorError(f"'workflow_ids' holds at most {_MAX_FOCUS} ids")
    return frozenset(ids)


def read_only_error(op: str) -> OperatorError:
    return OperatorError(
        f"{op!r} needs the steering token: this session may only watch", "forbidden", 403
    )


async def execute(hub: HubView, op: str, params: Mapping[str, Any]) -> Any:
    """Carry out one operator request; raises ``OperatorError`` (or a hub ``CommandError``)."""
    if op in ("pause", "resume", "cancel"):
        workflow_id = _workflow_id(hub, params)
        if op == "pause":
            sent = await hub.pause(workflow_id, param_text(params, "reason"))
        elif op == "resume":
            sent = await hub.resume(workflow_id, param_text(params, "from_checkpoint"))
        else:
            sent = await hub.cancel(
                workflow_id, param_text(params, "reason"), param_flag(params, "force")
            )
        workflow = hub.workflows.get(workflow_id)
        return {
            "sent": sent.id,
            "service_id": workflow.service_id if workflow else "",
            "workflow_id": workflow_id,
        }
    if op == "status":
        workflow_id = _workflow_id(hub, params)
        timeout = param_number(params, "timeout", hub.command_timeout)
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


def classify(exc: Exception) -> tuple[str, int]:
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


def error_body(exc: Exception) -> dict[str, Any]:
    """What an error answer carries beyond its message and code."""
    if isinstance(exc, CommandRefused):
        return {"phase": exc.phase, "allowed": list(exc.allowed)}
    if isinstance(exc, AmbiguousWorkflow):
        return {"candidates": exc.candidates}
    return {}


def bad_path(target: Target) -> Response:
    """The answer to an authenticated request whose path is malformed (see ``routing``)."""
    return _error(400, f"malformed path: {target.error}", "bad_path")


async def http_request(hub: HubView, request: Request, target: Target) -> Response:
    """Answer one HTTP request of the operator API: ``target`` is the request's parsed path,
    already authenticated (or the public health route)."""
    raw_path = target.path
    params = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
    parts = list(target.segments)
    try:
        if request.method == "POST":
            if len(parts) == 4 and parts[:2] == ["v1", "workflows"] and parts[3] in _COMMANDS:
                params["workflow_id"] = parts[2]
                if parts[3] in STEERING and hub.dashboard.access(request) is not Access.STEER:
                    raise read_only_error(parts[3])
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
        code, status = classify(exc)
        if status == 500:
            _log.exception("operator HTTP request %s %s failed", request.method, raw_path)
        body = {"error": str(exc) or type(exc).__name__, "code": code, **error_body(exc)}
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
