"""The hub's web dashboard: static files at ``/`` and the access rules every operator path uses.

The page (``index.html``, ``app.js``, ``app.css``, shipped in this package: no build step, no
CDN) talks only to the operator WebSocket ``/v1/operator``; this module serves it and decides,
for every request, what the caller may do (``Access``):

- no token configured: everyone steers;
- ``Authorization: Bearer <token>``: steer; ``Bearer <read_token>``: watch only;
- a session cookie, made by ``POST /v1/session`` with one of those tokens in the
  ``Authorization`` header (never in a URL) and ended by ``DELETE /v1/session``. The cookie is
  ``HttpOnly; SameSite=Strict``; a request it authenticates must also prove it comes from the
  page: other methods than GET carry the session's ``X-CSRF-Token`` header (which a cross-site
  form cannot set), and the WebSocket handshake an ``Origin`` equal to its ``Host``.

``GET /v1/session`` tells the page whether a token is needed, what the caller may do, the CSRF
token and the trace link template (``trace_url``, with ``{trace_id}`` in it).
"""

from __future__ import annotations

import email.utils
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..routing import DASHBOARD_ROUTES, Target

__all__ = ["COOKIE", "Access", "Dashboard"]

COOKIE = "when_session"
SESSION_ROUTE = ("v1", "session")
_STATIC = {
    (): ("index.html", "text/html; charset=utf-8"),
    ("static", "app.js"): ("app.js", "text/javascript; charset=utf-8"),
    ("static", "app.css"): ("app.css", "text/css; charset=utf-8"),
}
assert {*_STATIC, SESSION_ROUTE} == DASHBOARD_ROUTES, "routing.py lists the public routes"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class Access(str, Enum):
    """What an authenticated caller may do."""

    STEER = "steer"
    """Watch, and pause, resume or cancel workflows (the ``token``, or no token set)."""
    READ = "read"
    """Watch only (the ``read_token``)."""


@dataclass(slots=True)
class _Session:
    access: Access
    csrf: str
    expires: float


def _response(status: int, body: bytes, content_type: str, **headers: str) -> Response:
    all_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    for name, value in headers.items():
        all_headers[name.replace("_", "-")] = value
    return Response(status, HTTPStatus(status).phrase, all_headers, body)


def _json(status: int, body: Any, **headers: str) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    return _response(status, data, "application/json", **headers)


def _one(headers: Headers, name: str) -> str:
    """A header sent once; "" when absent or repeated (two answers are refused, not guessed)."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else ""


def _cookie(headers: Headers, name: str) -> str:
    found = [
        value
        for header in headers.get_all("Cookie")
        for key, _, value in (part.strip().partition("=") for part in header.split(";"))
        if key == name
    ]
    return found[0] if len(found) == 1 else ""


def _same_origin(headers: Headers) -> bool:
    origin, host = _one(headers, "Origin"), _one(headers, "Host")
    return bool(origin and host) and urlsplit(origin).netloc == host


class Dashboard:
    """The tokens, the login sessions and the dashboard's files of one hub.

    Sessions live in memory (a hub restart logs everyone out), at most ``max_sessions`` (the
    oldest go first), each for ``session_ttl`` seconds.
    """

    def __init__(
        self,
        token: str | None,
        read_token: str | None = None,
        *,
        trace_url: str = "",
        session_ttl: float = 12 * 3600.0,
        max_sessions: int = 1_000,
    ) -> None:
        if token is not None and not token:
            raise ValueError("token must not be empty (use None for no authentication)")
        if read_token is not None and not read_token:
            raise ValueError("read_token must not be empty")
        if read_token is not None and token is None:
            raise ValueError("read_token needs a token: without one everyone may steer")
        if read_token is not None and read_token == token:
            raise ValueError("read_token must differ from token")
        self._token = token.encode() if token is not None else None
        self._read_token = read_token.encode() if read_token is not None else None
        self.trace_url = trace_url
        self._ttl = session_ttl
        self._max = max(1, max_sessions)
        self._sessions: dict[str, _Session] = {}
        self._files: dict[str, bytes] = {}

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    # ------------------------------------------------------------------ access

    def bearer(self, headers: Headers) -> Access | None:
        """The access an ``Authorization: Bearer`` header grants (STEER when no token is set)."""
        if self._token is None:
            return Access.STEER
        scheme, _, credentials = _one(headers, "Authorization").partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = credentials.strip().encode()
        if hmac.compare_digest(given, self._token):
            return Access.STEER
        if self._read_token is not None and hmac.compare_digest(given, self._read_token):
            return Access.READ
        return None

    def _session(self, headers: Headers) -> tuple[str, _Session] | None:
        sid = _cookie(headers, COOKIE)
        session = self._sessions.get(sid) if sid else None
        if session is None:
            return None
        if session.expires < time.time():
            del self._sessions[sid]
            return None
        return sid, session

    def access(self, request: Request) -> Access | None:
        """What this request may do, from its bearer token or its session cookie; None: nothing."""
        granted = self.bearer(request.headers)
        if granted is not None:
            return granted
        found = self._session(request.headers)
        if found is None:
            return None
        session = found[1]
        headers = request.headers
        if "Upgrade" in headers:  # a WebSocket handshake: only from the page's own origin
            return session.access if _same_origin(headers) else None
        if request.method not in ("GET", "HEAD"):
            given = _one(headers, "X-CSRF-Token")
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return None
        return session.access

    # ------------------------------------------------------------------ HTTP

    def handles(self, target: Target) -> bool:
        """One of the public ``routing.DASHBOARD_ROUTES``, judged on the parsed target."""
        return target.dashboard

    def http_request(self, request: Request, target: Target) -> Response:
        """Answer a dashboard route (``handles(target)`` is true): a file or the session."""
        if target.segments == SESSION_ROUTE:
            return self._session_request(request)
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"error": "use GET", "code": "method_not_allowed"})
        name, content_type = _STATIC[target.segments]
        body = self._files.get(name)
        if body is None:
            body = resources.files(__name__).joinpath(name).read_bytes()
            self._files[name] = body
        return _response(
            200,
            body,
            content_type,
            Content_Security_Policy=_CSP,
            X_Frame_Options="DENY",
        )

    def _session_request(self, request: Request) -> Response:
        if request.method == "GET":
            found = self._session(request.headers)
            bearer = self.bearer(request.headers)
            access = bearer or (found[1].access if found else None)
            return _json(
                200,
                {
                    "auth_required": self.auth_required,
                    "access": access.value if access else None,
                    "csrf": found[1].csrf if found else "",
                    "trace_url": self.trace_url if access else "",  # nothing before sign-in
                },
            )
        if request.method == "POST":  # log in: the token comes in the Authorization header
            granted = self.bearer(request.headers)
            if granted is None or not _same_origin(request.headers):
                return _json(401, {"error": "wrong token", "code": "unauthorized"})
            sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
            while len(self._sessions) >= self._max:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[sid] = _Session(granted, csrf, time.time() + self._ttl)
            cookie = f"{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(self._ttl)}"
            if _one(request.headers, "X-Forwarded-Proto").lower() == "https":
                cookie += "; Secure"  # behind a TLS-terminating proxy: never over plain HTTP
            return _json(
                200,
                {"auth_required": self.auth_required, "access": granted.value, "csrf": csrf},
                Set_Cookie=cookie,
            )
        if request.method == "DELETE":  # log out
            found = self._session(request.headers)
            if found is not None and self.access(request) is not None:
                del self._sessions[found[0]]
            cookie = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
            return _json(200, {"access": None}, Set_Cookie=cookie)
        return _json(405, {"error": "use GET, POST or DELETE", "code": "method_not_allowed"})
