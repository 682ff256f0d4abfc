"""The one place where the hub reads a request target: every route decision uses its result.

The token check must not depend on how a client spells a path. Before this module the server
asked for the token only when the raw path started with ``/v1/``, while the operator router
stripped slashes and percent-decoded: ``//v1/workflows`` and ``/%76%31/services`` were
served without a token. Now the target is parsed once into decoded segments, the server
authenticates every request but the public health route, and then routes on the segments.

Canonical form: an absolute path of non-empty segments of RFC 3986 path characters, each
percent-decoded (``/%76%31/services`` *is* ``/v1/services``, as the RFC says), and a query.
Refused (400 once authenticated, 401 before): empty segments (``//v1``, ``/v1/``), ``.`` and
``..`` segments (encoded or not), characters a path may not hold, bad percent escapes or
UTF-8, control characters, a fragment, and targets that are not absolute paths
(``http://host/...``, ``*``).

Public (no credential): ``HEALTH_ROUTE`` and the ``DASHBOARD_ROUTES``, matched on the parsed
segments only; every other route, and every malformed target, needs one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = [
    "COORDINATION_ROUTES",
    "DASHBOARD_ROUTES",
    "HEALTH_ROUTE",
    "METRICS_ROUTE",
    "OPERATOR_ROUTE",
    "Target",
    "parse_target",
    "redact_query",
]

HEALTH_ROUTE: tuple[str, ...] = ("healthz",)
"""Served without a token: a load balancer's readiness probe."""
DASHBOARD_ROUTES: frozenset[tuple[str, ...]] = frozenset(
    {(), ("static", "app.js"), ("static", "app.css"), ("v1", "session")}
)
"""Served without a token: the dashboard's page shell (``/`` and its two static files, no
data in them) and its sign-in ``/v1/session``, which without a credential shows only whether
one is needed. Every figure the page shows comes over the authenticated routes."""
COORDINATION_ROUTES: frozenset[tuple[str, ...]] = frozenset(
    {("v1", "coordination"), ("ws", "coordination")}
)
OPERATOR_ROUTE: tuple[str, ...] = ("v1", "operator")
METRICS_ROUTE: tuple[str, ...] = ("metrics",)
"""Prometheus text; public only with ``metrics_public``, else behind the token like the rest."""

# RFC 3986 pchar: unreserved / pct-encoded / sub-delims / ":" / "@".
_SEGMENT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request target: decoded path segments, the raw query, or why it is refused."""

    segments: tuple[str, ...]
    query: str = ""
    error: str = ""

    @property
    def path(self) -> str:
        """The canonical path (what the hub records and logs)."""
        return "/" + "/".join(self.segments)

    @property
    def public(self) -> bool:
        """The health route (the dashboard's public routes are ``dashboard``)."""
        return not self.error and self.segments == HEALTH_ROUTE

    @property
    def dashboard(self) -> bool:
        """One of the ``DASHBOARD_ROUTES`` (served by the dashboard, which checks sessions)."""
        return not self.error and self.segments in DASHBOARD_ROUTES


def parse_target(raw: str) -> Target:
    """Parse a request target; never raises (a bad one comes back with ``error`` set)."""
    path, _, query = raw.partition("?")
    if "#" in raw:
        return Target((), error="a request target has no fragment ('#')")
    if not path.startswith("/"):
        return Target((), error="the request target must be an absolute path")
    if path == "/":
        return Target((), query)
    segments = []
    for raw_segment in path[1:].split("/"):
        if not raw_segment:
            return Target((), error="empty path segment ('//' or a trailing '/')")
        if _SEGMENT.fullmatch(raw_segment) is None:
            return Target((), error="a character a path may not hold, or a bad '%' escape")
        try:
            segment = unquote_to_bytes(raw_segment).decode("utf-8")
        except UnicodeDecodeError:
            return Target((), error="a percent-encoded segment that is not UTF-8")
        if segment in (".", ".."):
            return Target((), error="'.' and '..' segments are not allowed")
        if _CONTROL.search(segment):
            return Target((), error="a control character in the path")
        segments.append(segment)
    return Target(tuple(segments), query)


_CREDENTIAL_PARAM = re.compile(
    r"([?&;][^=&;#\s]*(?:token|auth|key|secret|pass|sig|cred|session)[^=&;#\s]*=)[^&;#\s]*",
    re.IGNORECASE,
)


def redact_query(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced.

    The hub takes its token only in the ``Authorization`` header, but clients that cannot
    set headers (a browser's WebSocket) put one in the query, and websockets logs every
    request line at DEBUG.
    """
    return _CREDENTIAL_PARAM.sub(r"\1<redacted>", text) if "=" in text else text
