"""The token guards every operator request, however its path is spelled (issue 12, items 11
and 16): raw HTTP requests, written byte for byte on a socket (``curl --path-as-is``), against
a real hub in the test process and a real ``when-coordinator hub --token`` subprocess. Public:
``GET /healthz`` and the dashboard's page shell and sign-in (``routing.DASHBOARD_ROUTES``),
nothing else; the dashboard's session cookie and the read-only token are credentials too."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.faults import HubProcess
from tests.support.scripted_server import wait_until
from when_coordinator.hub import Hub
from when_coordinator.hub.routing import DASHBOARD_ROUTES, HEALTH_ROUTE, parse_target
from when_coordinator.hub.testing import RawService, frame

TOKEN = "op-token-5be1f0c3a9"
READ = "read-token-0c8e21d7"
WRONG = "not-the-token-77aa"
UPGRADE = (
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)


def raw_request(
    port: int,
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """Send ``method target`` exactly as given and return the status and the body."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if method == "POST":
        lines.append("Content-Length: 0")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) >= 2 else 0
        if status == 101:
            return status, b""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, body


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),)


# Every route the hub serves, with what the right token gets on its canonical path.
ROUTES: list[tuple[str, str, bool, int]] = [
    # method, path, WebSocket upgrade, status with the token
    ("GET", "/v1/services", False, 200),
    ("GET", "/v1/workflows", False, 200),
    ("GET", "/v1/workflows/wf-1", False, 200),
    ("GET", "/v1/logs", False, 200),
    ("GET", "/v1/connections", False, 200),
    ("GET", "/v1/anomalies", False, 200),
    ("GET", "/v1/overview", False, 200),
    ("GET", "/v1/workflows?limit=5&q=wf", False, 200),
    ("GET", "/v1/metrics", False, 200),
    ("GET", "/metrics", False, 200),
    ("POST", "/v1/workflows/wf-1/pause", False, 200),
    ("POST", "/v1/workflows/wf-1/resume", False, 409),  # it is executing: see item 17
    ("POST", "/v1/workflows/wf-1/cancel?force=true", False, 200),
    ("POST", "/v1/workflows/wf-1/status?timeout=0.1", False, 504),
    ("GET", "/v1/operator", True, 101),
    ("GET", "/v1/coordination", True, 101),
    ("GET", "/ws/coordination", True, 101),
    ("GET", "/index.html", False, 404),  # the page is only at / (public: see below)
    ("GET", "/static/other.js", False, 404),
    ("GET", "/v1/nothing", False, 404),
    ("GET", "/elsewhere", False, 404),
]


def _encode_all(segment: str) -> str:
    return "".join(f"%{byte:02X}" for byte in segment.encode())


def odd_forms(target: str, port: int) -> list[str]:
    """Other spellings of ``target``: the ones the issue found and their relatives."""
    path, sep, query = target.partition("?")
    q = sep + query
    segments = path.strip("/").split("/") if path != "/" else []
    first, rest = (segments[0], "/".join(segments[1:])) if segments else ("", "")
    tail = f"/{rest}" if rest else ""
    return [
        f"/{path}{q}",  # //v1/...
        f"//{path}{q}",
        f"/{_encode_all(first)}{tail}{q}" if first else f"/%2F{q}",  # /%76%31/...
        "/" + "/".join(_encode_all(s).lower() for s in segments) + q,
        f"/{first}/.{tail}{q}",
        f"/{first}/%2e{tail}{q}",
        f"/{first}/../{first}{tail}{q}",
        f"/{first}/%2E%2E/{first}{tail}{q}",
        f"{path.rstrip('/')}/{q}",
        f"{path}/.{q}",
        path.replace("/", "//") + q,
        f"{path}%2F{q}",
        path.replace("/", "%2F") + q,
        path.replace("/", "\\") + q,
        f"{path};x{q}",
        f"{path}%00{q}",
        f"{path}%ff{q}",
        f"{path}%zz{q}",
        f"{path}#frag",
        path.upper() + q,
        f"http://127.0.0.1:{port}{path}{q}",
        f"{path}{q}{'&' if q else '?'}token={TOKEN}",  # a token in the query is no token
    ]


async def _service(hub: Hub) -> RawService:
    client = await RawService.connect(hub.url, service_name="etl", token=TOKEN)
    await client.register("etl", service_id="etl-1")
    change = {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
    await client.send(frame("phase_changed", "wf-1", change))
    await hub.wait_for(lambda h: h.workflows["wf-1"].phase == "execution")
    return client


async def test_every_route_and_every_spelling_of_its_path_needs_the_token() -> None:
    async with Hub(token=TOKEN) as hub:
        service = await _service(hub)
        port = hub.port

        async def send(method: str, target: str, headers: Any) -> tuple[int, bytes]:
            return await asyncio.to_thread(raw_request, port, method, target, headers)

        refused_credentials: list[tuple[tuple[str, str], ...]] = [
            (),
            bearer(WRONG),
            (("Authorization", f"Basic {TOKEN}"),),
            bearer(TOKEN) + bearer(WRONG),  # two headers: ambiguous, refused (not 500)
            bearer(TOKEN) + bearer(TOKEN),
            (("Cookie", "when_session=forged"),),  # a session the hub never made
        ]
        tried = 0
        for method, path, upgrade, _ in ROUTES:
            extra = UPGRADE if upgrade else ()
            for target in [path, *odd_forms(path, port)]:
                for credentials in refused_credentials:
                    status, body = await send(method, target, credentials + extra)
                    assert status == 401, (method, target, credentials, status, body)
                    tried += 1
        assert tried > 1_000
        # Nothing of that reached the service: the first command it gets is this one.
        status, body = await send("POST", "/v1/workflows/wf-1/pause", bearer(TOKEN))
        assert status == 200, body
        sent = json.loads(body)["sent"]
        command = await service.recv()
        assert (command["type"], command["id"]) == ("pause", sent)
        assert hub.workflows["wf-1"].phase == "execution"
        assert [str(s.message.type) for s in hub.sent] == ["registered", "pause"]

        # With the token: the canonical path is served; another spelling is either the
        # same path (percent-encoding of plain characters) or refused as malformed (400).
        for method, path, upgrade, expected in ROUTES:
            extra = UPGRADE if upgrade else ()
            status, body = await send(method, path, bearer(TOKEN) + extra)
            assert status == expected, (method, path, status, body)
            if "status" in path:
                continue  # each spelling would wait for the (silent) service
            for target in odd_forms(path, port):
                status, body = await send(method, target, bearer(TOKEN) + extra)
                parsed = parse_target(target)
                if parsed.error:
                    assert status == 400, (target, status, body)
                    assert json.loads(body)["code"] == "bad_path"
                elif parsed.path == path.partition("?")[0]:
                    assert status == expected, (target, status, body)
                else:
                    assert status in (404, 405), (target, status, body)
        await service.close()


PUBLIC = ("/healthz", "/", "/static/app.js", "/static/app.css", "/v1/session")


async def test_only_the_health_route_and_the_dashboard_shell_are_public() -> None:
    async with Hub(token=TOKEN, read_token=READ, trace_url="http://t/{trace_id}") as hub:
        service = await _service(hub)
        port = hub.port

        def get(target: str, method: str = "GET") -> tuple[int, bytes]:
            return raw_request(port, method, target)

        # Exactly these routes, listed in routing.py, answer without a credential.
        assert {parse_target(p).segments for p in PUBLIC} == {HEALTH_ROUTE, *DASHBOARD_ROUTES}
        for target in (
            *PUBLIC,
            "/healthz?verbose=1",
            "/%68ealthz",
            "/?next=/v1/workflows",
            "/%73tatic/app.js",  # the parsed path is /static/app.js
        ):
            status, body = await asyncio.to_thread(get, target)
            assert status == 200, (target, status, body)
            assert b"wf-1" not in body, target  # no data
            assert b"etl" not in body, target
        assert (await asyncio.to_thread(get, "/healthz", "HEAD"))[0] == 200
        # The sign-in says only whether a token is needed.
        _, body = await asyncio.to_thread(get, "/v1/session")
        assert json.loads(body) == {
            "auth_required": True,
            "access": None,
            "csrf": "",
            "trace_url": "",
        }
        # Every other spelling, and every neighbour, needs a credential.
        for target in (
            "//healthz",
            "/healthz/",
            "/v1/healthz",
            "/./healthz",
            "/healthz#x",
            "//",
            "/#x",
            "/%2F",
            "/index.html",
            "//static/app.js",
            "/static/app.js/",
            "/static/./app.js",
            "/static/../static/app.js",
            "/static/app.js#x",
            "/static/app.js%00",
            "/static",
            "/static/",
            "/static/index.html",
            "/STATIC/app.js",
            "/v1/session/",
            "/v1/session/x",
            "//v1/session",
            "/v1/./session",
            "/v1/sessions",
            f"http://127.0.0.1:{port}/",
            f"http://127.0.0.1:{port}/v1/session",
        ):
            status, body = await asyncio.to_thread(get, target)
            assert status == 401, (target, status, body)
        # A WebSocket upgrade on a public dashboard route is not the page: it needs the
        # credential, then is a 404 (no WebSocket there), never the page.
        for target in PUBLIC[1:]:
            status, body = await asyncio.to_thread(raw_request, port, "GET", target, UPGRADE)
            assert status == 401, (target, status, body)
            status, body = await asyncio.to_thread(
                raw_request, port, "GET", target, UPGRADE + bearer(TOKEN)
            )
            assert status == 404, (target, status, body)
        # Without a token, a sign-in or a sign-out opens nothing.
        status, _ = await asyncio.to_thread(get, "/v1/session", "POST")
        assert status == 401
        status, _ = await asyncio.to_thread(get, "/v1/session", "DELETE")
        assert status == 200  # signing out of nothing
        assert (await asyncio.to_thread(get, "/v1/workflows"))[0] == 401
        await service.close()


async def test_a_session_cookie_and_the_read_token_are_credentials_on_every_read_route() -> None:
    """What a token opens, the page's session opens too (``/metrics`` included), on the same
    parsed path; the read-only token and its session watch but never steer or coordinate."""

    async with Hub(token=TOKEN, read_token=READ) as hub:
        service = await _service(hub)
        port = hub.port

        async def send(
            method: str, target: str, headers: tuple[tuple[str, str], ...]
        ) -> tuple[int, bytes]:
            return await asyncio.to_thread(raw_request, port, method, target, headers)

        origin = (("Origin", f"http://127.0.0.1:{port}"),)
        sessions: dict[str, tuple[tuple[str, str], ...]] = {}
        status, _ = await send("POST", "/v1/session", bearer(WRONG) + origin)
        assert status == 401
        for name, token in (("steer", TOKEN), ("read", READ)):
            cookie, csrf = await asyncio.to_thread(_sign_in, port, token)
            sessions[name] = (("Cookie", cookie), ("X-CSRF-Token", csrf))
        reads = [r for r in ROUTES if r[0] == "GET" and not r[2] and r[3] == 200]
        assert ("GET", "/metrics", False, 200) in reads
        for credentials in (bearer(READ), sessions["steer"], sessions["read"]):
            for _, path, _, expected in reads:
                status, body = await send("GET", path, credentials)
                assert status == expected, (path, credentials, status, body)
                status, body = await send("GET", "/" + path, credentials)
                assert status == 400, (path, status, body)  # one parse for every credential
        # Steering: the read-only token and its session get 403; the steering session works.
        for credentials in (bearer(READ), sessions["read"]):
            status, body = await send("POST", "/v1/workflows/wf-1/pause", credentials)
            assert (status, json.loads(body)["code"]) == (403, "forbidden"), body
            status, _ = await send("GET", "/v1/coordination", credentials + UPGRADE)
            assert status == 401
        status, body = await send("POST", "/v1/workflows/wf-1/pause", sessions["steer"])
        assert status == 200, body
        command = await service.recv()
        assert (command["type"], command["id"]) == ("pause", json.loads(body)["sent"])
        await service.close()


def _sign_in(port: int, token: str) -> tuple[str, str]:
    """Sign in as the page does; returns the cookie (name=value) and the CSRF token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}", "Origin": f"http://127.0.0.1:{port}"}
        conn.request("POST", "/v1/session", headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read())
        cookie = response.getheader("Set-Cookie") or ""
        return cookie.split(";")[0], str(body["csrf"])
    finally:
        conn.close()


async def test_a_duplicate_authorization_header_is_a_401_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async with Hub(token=TOKEN) as hub:
        for path, extra in (("/v1/workflows", ()), ("/v1/coordination", UPGRADE)):
            for headers in (bearer(TOKEN) + bearer(WRONG), bearer(TOKEN) + bearer(TOKEN)):
                status, body = await asyncio.to_thread(
                    raw_request, hub.port, "GET", path, headers + extra
                )
                assert status == 401, body
                assert b"Traceback" not in body
        # Duplicate service headers are ignored rather than fatal to the connection.
        headers = UPGRADE + bearer(TOKEN) + (("X-Service-Name", "a"), ("X-Service-Name", "b"))
        status, _ = await asyncio.to_thread(
            raw_request, hub.port, "GET", "/v1/coordination", headers
        )
        assert status == 101
        await hub.wait_for(lambda h: len(h.connections) == 1)
        assert hub.connections["conn-1"].header_service_name == ""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert TOKEN not in caplog.text


async def test_a_token_in_a_query_string_never_reaches_the_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs every request line at DEBUG

    async with Hub(token=TOKEN) as hub:
        for target, extra in (
            (f"/v1/workflows?token={TOKEN}&phase=execution", ()),
            (f"/v1/coordination?access_token={TOKEN}", UPGRADE),
            (f"/v1/logs?limit=5&api_key={WRONG}", ()),
            (f"/healthz?auth={TOKEN}", ()),
        ):
            await asyncio.to_thread(raw_request, hub.port, "GET", target, extra)
        # A request line websockets cannot parse is quoted in its DEBUG exception.
        await asyncio.to_thread(raw_request, hub.port, "GET", f"/v1/x?password={TOKEN} HTTP/9", ())
    assert "phase=execution" in caplog.text  # the request lines were logged...
    assert "token=<redacted>" in caplog.text
    assert TOKEN not in caplog.text  # ...without the token
    assert WRONG not in caplog.text


# --------------------------------------------------------------------------- end to end


def _start_service(ws: ClientConnection) -> None:
    """Register as etl-1 and report wf-1 in execution."""
    register = frame("register", payload={"service_name": "etl", "service_id": "etl-1"})
    ws.send(json.dumps(register))
    while json.loads(ws.recv(timeout=10))["type"] != "registered":
        pass
    change = {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
    ws.send(json.dumps(frame("phase_changed", "wf-1", change)))


def _next_command(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if message["type"] != "ping":
            return message


def test_the_hub_command_with_a_token_refuses_every_spelling_end_to_end(
    tmp_path: Path,
) -> None:
    with HubProcess(tmp_path, token=TOKEN, log_level="debug") as hub:
        port = hub.port
        headers = {"X-Service-Name": "etl", "Authorization": f"Bearer {TOKEN}"}
        with connect(hub.url, additional_headers=headers, proxy=None) as service:
            _start_service(service)

            def listed() -> bool:
                _, body = raw_request(port, "GET", "/v1/workflows", bearer(TOKEN))
                return bool(json.loads(body)["workflows"])

            wait_until(listed, 10, "wf-1 listed")
            # The three requests (curl --path-as-is), and their relatives.
            for method, target in (
                ("GET", "//v1/workflows"),
                ("GET", "/%76%31/services"),
                ("POST", "//v1/workflows/wf-1/cancel?force=true"),
                ("POST", "/%76%31/workflows/wf-1/cancel?force=true"),
                ("POST", "/v1/./workflows/wf-1/cancel"),
                ("POST", "/v1/workflows/wf-1/../wf-1/cancel"),
                ("GET", "/v1/workflows/"),
                ("GET", f"/v1/workflows?token={TOKEN}"),
            ):
                status, body = raw_request(port, method, target)
                assert status == 401, (target, status, body)
                assert b"wf-1" not in body
            assert raw_request(port, "GET", "/healthz")[0] == 200
            # With the token: one spelling of a path, one meaning.
            assert raw_request(port, "GET", "//v1/workflows", bearer(TOKEN))[0] == 400
            status, body = raw_request(port, "GET", "/%76%31/services", bearer(TOKEN))
            assert (status, json.loads(body)["services"][0]["service_id"]) == (200, "etl-1")
            status, body = raw_request(port, "POST", "/v1/workflows/wf-1/pause", bearer(TOKEN))
            assert status == 200, body
            command = _next_command(service)  # no cancel came before it
            assert (command["type"], command["id"]) == ("pause", json.loads(body)["sent"])
        hub.stop()
        log = hub.stderr_text()
    assert "bad or missing token" in log
    assert TOKEN not in log
    assert "Traceback" not in log
