"""``HubClient``: the command line's client of a hub's operator HTTP API (``--hub URL``).

Its own module so that the operator commands (``cli_operator``, ``cli_watch``) and ``cli``
all import it without importing each other; ``cli`` re-exports it.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_HUB_URL", "HubClient", "HubClientError"]

DEFAULT_HUB_URL = "http://127.0.0.1:8080"


class HubClientError(Exception):
    """A request to the hub failed; the message is what the user sees after ``error:``."""


def _without_userinfo(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL in it removed (for messages)."""
    return re.sub(r"(//|^)[^/@\s]*@", r"\1", text)


def _base_urls(hub: str) -> tuple[str, str, str | None]:
    """``--hub`` (http, https, ws, wss or host:port) to the HTTP and WebSocket bases, and
    the HTTP Basic credentials of a ``user:password@`` in it.

    The bases never carry the credentials: every message shows them, and none may show a
    password.
    """
    text = hub.strip()
    if "://" not in text:
        text = "http://" + text
    shown = _without_userinfo(hub.strip())
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise HubClientError(f"--hub {shown!r} is not a hub URL (like {DEFAULT_HUB_URL})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not host:
        raise HubClientError(f"--hub {shown!r} is not a hub URL (like {DEFAULT_HUB_URL})")
    secure = scheme in ("https", "wss")
    http = f"{'https' if secure else 'http'}://{host}"
    ws = f"{'wss' if secure else 'ws'}://{host}"
    basic = None
    if "@" in parts.netloc:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return http, ws, basic


class HubClient:
    """The operator API seen from the command line (HTTP for requests, WebSocket to watch)."""

    def __init__(self, hub: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.http_base, self.ws_base, self._basic = _base_urls(hub)
        self.hub = self.http_base
        self.token = token or None
        self.timeout = timeout

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "when-coordinator-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self._basic:  # for a proxy in front of the hub that asks for a password
            headers["Authorization"] = f"Basic {self._basic}"
        return headers

    def request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        """One JSON request; raises ``HubClientError`` with a one-line explanation."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            self.http_base + path + query,
            data=b"" if method == "POST" else None,
            headers=self.headers(),
            method=method,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            raise self.unreachable(exc.reason) from None
        except TimeoutError:
            raise HubClientError(
                f"the hub at {self.http_base} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise HubClientError(f"bad answer from the hub at {self.http_base}: {exc}") from None

    def unreachable(self, reason: object) -> HubClientError:
        if isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        elif isinstance(reason, TimeoutError):
            why = "timed out"
        else:
            why = str(reason)
        return HubClientError(
            f"cannot reach the hub at {self.http_base} ({why}); is `when-coordinator hub` "
            "running? Set --hub or WHEN_HUB_URL"
        )

    def _http_error(self, exc: urllib.error.HTTPError) -> HubClientError:
        if exc.code == 401:
            return HubClientError(
                f"the hub at {self.http_base} refused the request: it needs a valid token "
                "(--token or WHEN_AUTH_TOKEN)"
            )
        try:
            body = json.loads(exc.read().decode("utf-8"))
            message = str(body.get("error")) if isinstance(body, dict) else ""
        except (OSError, ValueError):
            message = ""
        return HubClientError(message or f"the hub answered HTTP {exc.code} {exc.reason}")

    def workflows(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/workflows")["workflows"])

    def command(self, name: str, workflow_id: str, **params: str) -> dict[str, Any]:
        path = f"/v1/workflows/{urllib.parse.quote(workflow_id, safe='')}/{name}"
        return dict(self.request("POST", path, {k: v for k, v in params.items() if v}))
