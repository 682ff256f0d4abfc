"""The dashboard's server side: its files, login sessions, the read-only token, and the operator
queries it pages through (names, filters, counts, 10,000 workflows).

The page itself is tested in a real browser in test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.cli.conftest import COMMAND
from when_coordinator.hub import Hub
from when_coordinator.hub.testing import RawService, frame

TOKEN = "s3cret-steer"
READ = "s3cret-read"


def _request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        out_headers = {k.lower(): v for k, v in response.getheaders()}
        if out_headers.get("content-type", "").startswith("application/json"):
            return response.status, out_headers, json.loads(body)
        return response.status, out_headers, body
    finally:
        conn.close()


async def request(
    hub: Hub, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(_request, hub.port, method, path, headers)


def _origin(hub: Hub) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{hub.port}"}


async def login(hub: Hub, token: str) -> tuple[str, str]:
    """Log in like the page does; returns (cookie header value, CSRF token)."""
    status, headers, body = await request(
        hub, "POST", "/v1/session", {"Authorization": f"Bearer {token}", **_origin(hub)}
    )
    assert status == 200, body
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    return cookie.split(";")[0], body["csrf"]


async def op(hub: Hub, headers: dict[str, str], name: str, **params: Any) -> dict[str, Any]:
    async with connect(hub.operator_url, additional_headers=headers, proxy=None) as ws:
        await ws.send(json.dumps({"id": 1, "op": name, **params}))
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return reply


async def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    async with Hub(token=TOKEN) as hub:
        status, headers, body = await request(hub, "GET", "/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"/static/app.js" in body
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        for path, kind in (("/static/app.js", "javascript"), ("/static/app.css", "css")):
            status, headers, body = await request(hub, "GET", path)
            assert (status, kind in headers["content-type"]) == (200, True)
            assert len(body) > 1000
        status, _, _ = await request(hub, "GET", "/static/../server.py")
        assert status in (401, 404)
        # the page holds no data: without a session the API stays closed
        status, _, body = await request(hub, "GET", "/v1/session")
        assert body == {
            "auth_required": True,
            "access": None,
            "csrf": "",
            "trace_url": "",
        }
        status, _, _ = await request(hub, "GET", "/v1/workflows")
        assert status == 401


async def test_a_session_cookie_replaces_the_token_and_dies_at_logout() -> None:
    async with Hub(token=TOKEN) as hub:
        service = await RawService.connect(hub.url, token=TOKEN)
        await service.register("billing", instance_id="b-1")
        await service.send(frame("workflow_created", "wf-1", {"workflow_id": "wf-1"}))
        await service.send(
            frame("phase_changed", "wf-1", {"workflow_id": "wf-1", "to": "execution"})
        )
        await hub.wait_for(lambda h: "wf-1" in h.workflows)

        status, _, _ = await request(
            hub, "POST", "/v1/session", {"Authorization": "Bearer nope", **_origin(hub)}
        )
        assert status == 401
        cookie, csrf = await login(hub, TOKEN)
        session = {"Cookie": cookie}
        _, headers, _ = await request(
            hub,
            "POST",
            "/v1/session",
            {"Authorization": f"Bearer {TOKEN}", "X-Forwarded-Proto": "https", **_origin(hub)},
        )
        assert headers["set-cookie"].endswith("; Secure")
        status, _, body = await request(hub, "GET", "/v1/workflows", session)
        assert (status, body["workflows"][0]["workflow_id"]) == (200, "wf-1")
        status, _, body = await request(hub, "GET", "/v1/session", session)
        assert (body["access"], body["csrf"]) == ("steer", csrf)

        # a POST the cookie alone authenticates could come from another site: refused
        status, _, _ = await request(hub, "POST", "/v1/workflows/wf-1/pause", session)
        assert status == 401
        wrong = {**session, "X-CSRF-Token": "guess"}
        status, _, _ = await request(hub, "POST", "/v1/workflows/wf-1/pause", wrong)
        assert status == 401
        right = {**session, "X-CSRF-Token": csrf}
        status, _, _ = await request(hub, "POST", "/v1/workflows/wf-1/pause", right)
        assert status == 200
        assert (await service.expect("pause"))["workflow_id"] == "wf-1"

        # the WebSocket: the cookie counts only from the page's own origin
        reply = await op(hub, {**session, **_origin(hub)}, "workflows")
        assert reply["ok"]
        with pytest.raises(InvalidStatus):
            await op(hub, {**session, "Origin": "http://evil.example"}, "workflows")

        status, headers, _ = await request(hub, "DELETE", "/v1/session", right)
        assert status == 200
        assert "Max-Age=0" in headers["set-cookie"]
        status, _, _ = await request(hub, "GET", "/v1/workflows", session)
        assert status == 401
        with pytest.raises(InvalidStatus):
            await op(hub, {**session, **_origin(hub)}, "workflows")
        await service.close()


async def test_the_read_token_watches_but_never_steers() -> None:
    with pytest.raises(ValueError, match="needs a token"):
        Hub(read_token=READ)
    async with Hub(token=TOKEN, read_token=READ) as hub:
        service = await RawService.connect(hub.url, token=TOKEN)
        await service.register("billing")
        await service.send(frame("workflow_created", "wf-1", {"workflow_id": "wf-1"}))
        await service.send(
            frame("phase_changed", "wf-1", {"workflow_id": "wf-1", "to": "execution"})
        )
        await hub.wait_for(lambda h: "wf-1" in h.workflows)
        bearer = {"Authorization": f"Bearer {READ}"}

        status, _, body = await request(hub, "GET", "/v1/workflows/wf-1", bearer)
        assert (status, body["phase"]) == (200, "execution")
        for command in ("pause", "cancel", "resume"):
            status, _, body = await request(hub, "POST", f"/v1/workflows/wf-1/{command}", bearer)
            assert (status, body["code"]) == (403, "forbidden")
        reply = await op(hub, bearer, "pause", workflow_id="wf-1")
        assert (reply["ok"], reply["code"]) == (False, "forbidden")
        reply = await op(hub, bearer, "cancel_many", phase="execution")
        assert (reply["ok"], reply["code"]) == (False, "forbidden")
        reply = await op(hub, bearer, "query")
        assert reply["ok"]
        assert reply["result"]["total"] == 1

        cookie, csrf = await login(hub, READ)
        session = {"Cookie": cookie, "X-CSRF-Token": csrf}
        status, _, _ = await request(hub, "POST", "/v1/workflows/wf-1/pause", session)
        assert status == 403
        # a service cannot register with the read token
        with pytest.raises(InvalidStatus):
            await RawService.connect(hub.url, token=READ)
        assert not [s for s in hub.sent if s.message.type == "pause"]
        await service.close()


async def test_summaries_carry_names_allowed_commands_and_full_progress_when_completed() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="billing")
        await service.register("billing", instance_id="b-1")
        for wid, name in (("wf-1", "invoice-run"), ("wf-2", "refunds")):
            payload = {"workflow_id": wid, "action_type": name}
            await service.send(frame("workflow_created", wid, payload))
        await service.send(
            frame("phase_changed", "wf-1", {"workflow_id": "wf-1", "to": "execution"})
        )
        await service.send(
            frame("phase_changed", "wf-2", {"workflow_id": "wf-2", "to": "completed"})
        )
        await hub.wait_for(lambda h: h.workflows["wf-2"].phase.value == "completed")
        _, _, body = await request(hub, "GET", "/v1/workflows")
        by_id = {w["workflow_id"]: w for w in body["workflows"]}
        assert (by_id["wf-1"]["name"], by_id["wf-1"]["service_name"]) == (
            "invoice-run",
            "billing",
        )
        assert by_id["wf-1"]["commands"] == ["pause", "cancel"]
        assert (by_id["wf-2"]["commands"], by_id["wf-2"]["progress"]) == ([], 100.0)
        assert by_id["wf-1"]["progress"] == 0.0
        await service.close()


async def test_pages_filter_sort_and_count_ten_thousand_workflows_fast() -> None:
    async with Hub(rate_limit=1e6, rate_burst=100_000, max_workflows=20_000) as hub:
        billing = await RawService.connect(hub.url, service_name="billing")
        await billing.register("billing")
        etl = await RawService.connect(hub.url, service_name="etl")
        await etl.register("etl")
        for n in range(10_000):
            service = billing if n % 2 else etl
            wid = f"wf-{n:05d}"
            name = "nightly-etl" if n % 10 == 0 else "invoice"
            await service.send(
                frame("workflow_created", wid, {"workflow_id": wid, "action_type": name})
            )
            to = "execution" if n % 100 == 0 else "completed"
            await service.send(frame("phase_changed", wid, {"workflow_id": wid, "to": to}))
        await hub.wait_for(lambda h: len(h.workflows) == 10_000, timeout=60)
        await hub.wait_for(lambda h: h.workflows["wf-09999"].phase.value == "completed", timeout=60)

        started = time.perf_counter()
        status, _, page = await request(hub, "GET", "/v1/workflows?limit=50")
        elapsed = time.perf_counter() - started
        assert status == 200
        assert elapsed < 1.0, f"the first page of 10,000 took {elapsed:.2f} s"
        assert (page["total"], len(page["workflows"])) == (10_000, 50)
        assert page["counts"] == {"execution": 100, "completed": 9_900}
        # active first, then newest first
        assert [w["phase"] for w in page["workflows"][:100]] == ["execution"] * 50
        ids = [w["workflow_id"] for w in page["workflows"]]
        assert ids[:2] == ["wf-09900", "wf-09800"]

        status, _, page = await request(
            hub, "GET", "/v1/workflows?service=billing&q=ETL&offset=0&limit=10"
        )
        assert page["total"] == 0  # every 10th is an even number: all on etl
        status, _, page = await request(
            hub, "GET", "/v1/workflows?service=etl&q=nightly&phase=active&limit=500"
        )
        assert page["total"] == 100
        assert page["counts"] == {"execution": 100, "completed": 900}
        status, _, page = await request(hub, "GET", "/v1/workflows?phase=bogus&limit=5")
        assert status == 400
        status, _, page = await request(hub, "GET", "/v1/workflows?limit=100000")
        assert status == 400

        reply = await op(hub, {}, "overview")
        services = {s["service_name"]: s for s in reply["result"]["services"]}
        assert (services["etl"]["workflows"], services["etl"]["active_workflows"]) == (
            5_000,
            100,
        )
        await billing.close()
        await etl.close()


async def test_bulk_cancel_reaches_every_filtered_workflow_its_phase_allows() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="etl")
        await service.register("etl")
        for n, to in enumerate(("execution", "paused", "completed", "execution")):
            wid = f"wf-{n}"
            name = "other" if n == 3 else "batch"
            await service.send(
                frame("workflow_created", wid, {"workflow_id": wid, "action_type": name})
            )
            await service.send(frame("phase_changed", wid, {"workflow_id": wid, "to": to}))
        await hub.wait_for(lambda h: h.workflows["wf-3"].phase.value == "execution")
        reply = await op(hub, {}, "cancel_many", reason="everything?")
        assert (reply["ok"], reply["code"]) == (False, "bad_request")
        reply = await op(hub, {}, "cancel_many", q="batch", reason="bulk")
        assert reply["ok"], reply
        assert sorted(reply["result"]["sent"]) == ["wf-0", "wf-1"]
        cancels = [await service.expect("cancel") for _ in range(2)]
        assert sorted(c["workflow_id"] for c in cancels) == ["wf-0", "wf-1"]
        assert {c["payload"]["reason"] for c in cancels} == {"bulk"}
        await service.close()


def test_the_demo_ends_by_printing_its_dashboard_url() -> None:
    done = subprocess.run(
        [*COMMAND, "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+/", last), last


def test_demo_keep_leaves_the_hub_and_its_dashboard_running() -> None:
    process = subprocess.Popen(
        [*COMMAND, "demo", "--keep"], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            found = re.match(r"dashboard: http://127\.0\.0\.1:(\d+)/", line)
            url = found.group(1) if found else ""
        assert url, "the demo printed no dashboard URL"
        status, _, body = _request(int(url), "GET", "/")
        assert (status, b"/static/app.js" in body) == (200, True)
        status, _, page = _request(int(url), "GET", "/v1/workflows?limit=5")
        assert {w["name"] for w in page["workflows"]} == {"ETL", "transform-partition"}
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_hub_command_takes_a_read_token_and_prints_its_dashboard() -> None:
    env = {**os.environ, "WHEN_READ_TOKEN": READ}
    process = subprocess.Popen(
        [*COMMAND, "hub", "--port", "0", "--token", TOKEN, "--trace-url", "http://t/{trace_id}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert "read-only token accepted" in lines[1]
        found = re.search(r"dashboard +http://127\.0\.0\.1:(\d+)/", lines[2])
        assert found, lines
        port = int(found.group(1))
        read = {"Authorization": f"Bearer {READ}"}
        status, _, body = _request(port, "GET", "/v1/session", read)
        assert (body["access"], body["trace_url"]) == ("read", "http://t/{trace_id}")
        status, _, _ = _request(port, "GET", "/v1/workflows", read)
        assert status == 200
        status, _, _ = _request(port, "POST", "/v1/workflows/wf-1/pause", read)
        assert status == 403
    finally:
        process.terminate()
        process.wait(20)


async def test_a_focused_watcher_gets_its_workflows_and_only_a_count_of_the_rest() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="etl")
        await service.register("etl")
        for wid in ("wf-1", "wf-2", "wf-3"):
            await service.send(frame("workflow_created", wid, {"workflow_id": wid}))
        await hub.wait_for(lambda h: len(h.workflows) == 3)
        async with connect(hub.operator_url, proxy=None) as ws:
            subscribe = {"id": 1, "op": "subscribe", "workflows": False, "workflow_ids": []}
            await ws.send(json.dumps(subscribe))
            reply = json.loads(await ws.recv())
            assert reply["ok"]
            snapshot = json.loads(await ws.recv())
            assert (snapshot["event"], snapshot["workflows"]) == ("snapshot", [])
            await ws.send(json.dumps({"id": 2, "op": "focus", "workflow_ids": ["wf-1"]}))
            assert json.loads(await ws.recv())["result"] == {"focus": 1}
            for wid in ("wf-2", "wf-3", "wf-1"):
                payload = {"workflow_id": wid, "percent": 40}
                await service.send(frame("progress", wid, payload))
                await service.send(
                    frame("phase_changed", wid, {"workflow_id": wid, "to": "execution"})
                )
            seen: list[dict[str, Any]] = []
            while not (
                any(e.get("workflow", {}).get("progress") == 40 for e in seen)
                and sum(e["workflows"] for e in seen if e["event"] == "changed") >= 4
            ):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            kinds = {
                (e["event"], e.get("workflow_id") or e.get("workflow", {}).get("workflow_id"))
                for e in seen
            }
            assert ("workflow", "wf-1") in kinds
            assert ("phase_changed", "wf-1") in kinds
            assert not {k for k in kinds if k[1] in ("wf-2", "wf-3")}
            await ws.send(json.dumps({"id": 3, "op": "focus", "workflow_ids": "wf-1"}))
            assert json.loads(await ws.recv())["code"] == "bad_request"
        await service.close()


async def test_a_restarted_service_gets_its_identity_back() -> None:
    async with Hub() as hub:

        async def register(instance: str) -> tuple[RawService, str]:
            service = await RawService.connect(hub.url, service_name="billing")
            registered = await service.register("billing", instance_id=instance)
            return service, registered["payload"]["service_id"]

        first, first_id = await register("b-1")
        other, other_id = await register("b-2")
        twin, twin_id = await register("b-1")  # b-1 still connected: not the same one
        assert len({first_id, other_id, twin_id}) == 3
        await first.close()
        await hub.wait_for(lambda h: not h.services[first_id].connected)
        again, again_id = await register("b-1")
        assert again_id == first_id
        assert hub.services[first_id].connections == 2
        _, _, body = await request(hub, "GET", "/v1/services")
        assert sorted(s["service_id"] for s in body["services"]) == sorted(
            {first_id, other_id, twin_id}
        )
        for service in (other, twin, again):
            await service.close()


async def test_the_overview_groups_anomalies_with_their_counts() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="legacy")
        await service.register("legacy")
        for wid in ("wf-1", "wf-2"):
            for _ in range(3):  # the reference Go client's duplicates
                await service.send(frame("workflow_created", wid, {"workflow_id": wid}))
        await hub.wait_for(lambda h: len(h.anomalies) >= 4)
        reply = await op(hub, {}, "overview")
        groups = {g["text"]: g for g in reply["result"]["anomalies"]}
        assert groups["workflow_created received again"]["count"] == 4
        (service_record,) = reply["result"]["services"]
        assert (service_record["service_name"], service_record["workflows"]) == ("legacy", 2)
        await service.close()


async def test_a_batched_watcher_gets_one_frame_per_push_at_its_interval() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="etl")
        await service.register("etl")
        await service.send(frame("workflow_created", "wf-1", {"workflow_id": "wf-1"}))
        await hub.wait_for(lambda h: "wf-1" in h.workflows)
        async with connect(hub.operator_url, proxy=None) as ws:
            bad = {"id": 0, "op": "subscribe", "interval": 60}
            await ws.send(json.dumps(bad))
            assert json.loads(await ws.recv())["code"] == "bad_request"
            subscribe = {"id": 1, "op": "subscribe", "batch": True, "interval": 0.5}
            await ws.send(json.dumps(subscribe))
            assert json.loads(await ws.recv())["ok"]
            first = json.loads(await ws.recv())
            assert first["event"] == "batch"
            assert first["events"][0]["event"] == "snapshot"
            for percent in range(1, 21):  # 20 updates within one interval
                payload = {"workflow_id": "wf-1", "percent": percent}
                await service.send(frame("progress", "wf-1", payload))
            await hub.wait_for(lambda h: h.workflows["wf-1"].progress == 20)
            frames: list[dict[str, Any]] = []
            while not any(
                e.get("workflow", {}).get("progress") == 20 for f in frames for e in f["events"]
            ):
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            assert all(f["event"] == "batch" for f in frames)
            assert len(frames) <= 2  # coalesced: not one frame per update
        await service.close()


def _raw(port: int, request: str) -> int:
    """The status of one hand-written request (for headers a client library will not repeat)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        return int(sock.makefile("rb").readline().split()[1])


async def test_repeated_credentials_are_refused_not_guessed() -> None:
    async with Hub(token=TOKEN, read_token=READ) as hub:
        cookie, _ = await login(hub, TOKEN)
        head = f"GET /v1/workflows HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
        cases = {
            "one token": (f"Authorization: Bearer {TOKEN}\r\n", 200),
            "two tokens": (f"Authorization: Bearer {READ}\r\n" * 2, 401),
            "mixed tokens": (
                f"Authorization: Bearer {READ}\r\nAuthorization: Bearer {TOKEN}\r\n",
                401,
            ),
            "one cookie": (f"Cookie: {cookie}\r\n", 200),
            "two cookies": (f"Cookie: {cookie}; {cookie}\r\n", 401),
        }
        for name, (headers, expected) in cases.items():
            status = await asyncio.to_thread(_raw, hub.port, head + headers + "\r\n")
            assert status == expected, name


async def test_a_unique_prefix_names_a_workflow_everywhere() -> None:
    async with Hub() as hub:
        service = await RawService.connect(hub.url, service_name="etl")
        await service.register("etl")
        for wid in ("wf-7f3a91", "wf-7f3b22", "wf-8c0d44"):
            await service.send(frame("workflow_created", wid, {"workflow_id": wid}))
            change = {"workflow_id": wid, "to": "execution"}
            await service.send(frame("phase_changed", wid, change))
        await hub.wait_for(lambda h: len(h.workflows) == 3)
        status, _, body = await request(hub, "GET", "/v1/workflows/wf-8")
        assert (status, body["workflow_id"]) == (200, "wf-8c0d44")
        status, _, body = await request(hub, "POST", "/v1/workflows/wf-7f3b/pause")
        assert (status, body["workflow_id"]) == (200, "wf-7f3b22")
        assert (await service.expect("pause"))["workflow_id"] == "wf-7f3b22"
        status, _, body = await request(hub, "POST", "/v1/workflows/wf-7f/cancel")
        assert (status, body["code"]) == (400, "ambiguous")
        assert "wf-7f3a91, wf-7f3b22" in body["error"]
        status, _, body = await request(hub, "GET", "/v1/workflows/wf-9")
        assert (status, body["code"]) == (404, "unknown_workflow")
        reply = await op(hub, {}, "workflow", workflow_id="wf-7f3a")
        assert reply["result"]["workflow_id"] == "wf-7f3a91"
        await service.close()
