"""The hub's front door: every HTTP request and WebSocket upgrade is checked, then routed.

Deny by default: with a token, every request but ``GET /healthz`` and the dashboard's page
shell and sign-in (``routing.DASHBOARD_ROUTES``) shows a credential before its path is looked
at; the path is parsed once, by ``routing.parse_target``. ``HttpFront`` is the part of
``Hub`` that does this (a mixin), and hands upgrades to the coordination endpoint or to an
``OperatorSession``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .._compat.websockets import DirectConnection
from .dashboard import Access, Dashboard
from .endpoint import format_remote
from .metrics import metrics_response
from .operator import bad_path, http_request
from .routing import (
    COORDINATION_ROUTES,
    METRICS_ROUTE,
    OPERATOR_ROUTE,
    Target,
    parse_target,
    redact_query,
)
from .session import OperatorSession

if TYPE_CHECKING:
    from .view import HubView

__all__ = ["CredentialRedactingLogger", "HttpFront", "check_token"]

_log = logging.getLogger("when_coordinator.hub")

_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class CredentialRedactingLogger(_LoggerAdapter):
    """The logger handed to websockets, which logs every request line and header at DEBUG:
    the ``Authorization`` value is a client's token (the right one or someone's wrong one),
    a query string may carry one too, and no log may show either."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if len(args) == 2 and isinstance(args[0], str) and args[0].lower() in _CREDENTIAL_HEADERS:
            args = (args[0], "<redacted>")
        elif level < logging.WARNING:
            args = tuple(redact_query(a) if isinstance(a, str) else a for a in args)
            exc_info = kwargs.get("exc_info")
            if exc_info:  # a refused request line is quoted in the exception's text
                if isinstance(exc_info, BaseException):
                    error: object = exc_info
                elif isinstance(exc_info, tuple):
                    error = exc_info[1]
                else:
                    error = sys.exc_info()[1]
                kwargs["exc_info"] = None
                msg = f"{msg}: %s"
                args = (*args, redact_query(repr(error)))
        self.logger.log(level, msg, *args, **kwargs)


class HttpFront:
    """Authentication and routing of ``Hub``'s requests (a mixin: ``Hub`` holds the state)."""

    if TYPE_CHECKING:
        dashboard: Dashboard
        metrics_public: bool
        _open: set[ServerConnection]

        async def _serve_service(self, ws: ServerConnection, path: str) -> None: ...

    @property
    def _view(self) -> HubView:
        return cast("HubView", self)  # ``Hub`` is one; server.py has mypy check it

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Deny by default: every request but the public routes (health, the dashboard's page
        shell and sign-in) shows a credential before its path is even looked at; then the
        parsed path routes it."""
        target = parse_target(request.path)
        if target.public:
            return await http_request(self._view, request, target)
        # The page shell and the sign-in session; never a WebSocket upgrade, which is
        # authenticated and routed like any other (``ws://host:port/`` gets the 404 the client
        # explains, not the page).
        if self.dashboard.handles(target) and not websocket_upgrade(request.headers):
            return self.dashboard.http_request(request, target)
        metrics = not target.error and target.segments == METRICS_ROUTE
        if metrics and self.metrics_public:
            return metrics_response(self._view, request.method, time.monotonic())
        access = self.dashboard.access(request)  # a token or a session cookie; None: neither
        coordination = not target.error and target.segments in COORDINATION_ROUTES
        if access is None or (coordination and access is not Access.STEER):
            remote = format_remote(connection.remote_address)
            shown = target.path if not target.error else "(a malformed path)"
            _log.info("refused %s %s from %s: bad or missing token", request.method, shown, remote)
            return self._unauthorized(connection)
        if target.error:
            return bad_path(target)
        if metrics:
            return metrics_response(self._view, request.method, time.monotonic())
        if websocket_route(target):
            return None
        return await http_request(self._view, request, target)

    @staticmethod
    def _unauthorized(connection: ServerConnection) -> Response:
        response = connection.respond(
            401, "401 Unauthorized: send 'Authorization: Bearer <token>'\n"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="when-coordinator hub"'
        return response

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        target = parse_target(ws.request.path)  # a websocket route: _process_request said so
        self._open.add(ws)  # until the connection is closed, closing ones included
        try:
            if target.segments == OPERATOR_ROUTE:
                if isinstance(ws, DirectConnection):
                    ws.release()  # the operator session reads with recv()
                read_only = self.dashboard.access(ws.request) is Access.READ
                await OperatorSession(self._view, ws, read_only=read_only).run()
            else:
                await self._serve_service(ws, target.path)
        finally:
            self._open.discard(ws)


def check_token(token: str | None, what: str = "token") -> None:
    """A token that no client could present would leave the hub unusable; an empty one
    would look like protection and be none."""
    if token is None:
        return
    if not isinstance(token, str):
        raise ValueError(f"{what} must be a string (or None for no authentication)")
    if not token.strip():
        raise ValueError(f"{what} must not be empty (use None for no authentication)")
    if token != token.strip() or any(ch < " " or ch == "\x7f" for ch in token):
        raise ValueError(f"{what} must not have surrounding spaces or control characters")


def websocket_upgrade(headers: Headers) -> bool:
    """A WebSocket handshake (however many ``Upgrade`` headers), not e.g. ``Upgrade: h2c``."""
    return any("websocket" in value.lower() for value in headers.get_all("Upgrade"))


def websocket_route(target: Target) -> bool:
    return target.segments == OPERATOR_ROUTE or target.segments in COORDINATION_ROUTES
