"""Peers that stop reading are disconnected and their send buffers freed (issue 12, item 14
and the per-connection part of item 13).

The stuck peer is a real client: a socket that completes the WebSocket handshake (websockets'
sans-I/O client writes the bytes), sends what the test tells it, and never reads again, with a
small receive buffer so that the hub's frames pile up in the hub's send buffer quickly.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.hub.conftest import registered
from when_coordinator.hub import Hub, ServiceUnavailable
from when_coordinator.hub.testing import frame
from when_coordinator.protocol import Message, PausePayload

BIG = 200_000  # bytes of one large frame from the hub
BURST = 40  # 8 MB in all: far beyond any kernel socket buffer on loopback


class NonReader:
    """A WebSocket client that reads the handshake response and then nothing, ever."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        uri = parse_uri(url)
        self.protocol = ClientProtocol(uri)
        request = self.protocol.connect()
        for name, value in headers.items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((uri.host, uri.port))
        self._flush()
        while self.protocol.state is State.CONNECTING:
            data = self.sock.recv(1)  # byte by byte: nothing after the handshake is read
            if not data:
                raise ConnectionError("the hub closed during the handshake")
            self.protocol.receive_data(data)
        if self.protocol.state is not State.OPEN:
            raise ConnectionError(f"handshake refused: {self.protocol.handshake_exc}")

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)

    def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        self._flush()

    def close(self) -> None:
        self.sock.close()


async def non_reader(url: str, headers: dict[str, str]) -> NonReader:
    return await asyncio.to_thread(NonReader, url, headers)


def big_command(workflow_id: str) -> Message:
    return Message.create(PausePayload(workflow_id=workflow_id, reason="x" * BIG))


async def test_a_service_that_stops_reading_is_closed_when_its_buffer_stays_over_the_bound() -> (
    None
):
    async with Hub(send_buffer_bytes=64 * 1024, send_buffer_timeout=0.5, command_timeout=60) as hub:
        stuck = await non_reader(hub.url, {"X-Service-Name": "stuck"})
        register = {"service_name": "stuck", "service_id": "stuck"}
        stuck.send(frame("register", payload=register))
        await hub.wait_for(lambda h: h.services["stuck"].connected)
        good = await registered(hub, "good")

        # The same 8 MB burst to both: the reader takes it, the other does not.
        burst = [big_command("wf-x") for _ in range(BURST)]
        to_good = [asyncio.ensure_future(hub.send("good", m)) for m in burst]
        to_stuck = [asyncio.ensure_future(hub.send("stuck", m)) for m in burst]
        await hub.wait_for(lambda h: not h.services["stuck"].connected, timeout=10)
        results = await asyncio.gather(*to_stuck, return_exceptions=True)
        # The first frames went into the kernel's buffers; the rest fail with the reason.
        failed = [r for r in results if r is not None]
        assert failed, results
        assert all(isinstance(r, ServiceUnavailable) for r in failed), failed
        assert "not reading" in str(failed[0])
        await asyncio.gather(*to_good)
        for _ in range(BURST):
            assert len((await good.expect("pause"))["payload"]["reason"]) == BIG

        service = hub.services["stuck"]
        assert service.close_code == 1008
        assert "not reading" in service.close_reason
        assert hub.closed_not_reading == 1
        assert hub.services["good"].connected
        await good.send(frame("progress", "wf-g", {"workflow_id": "wf-g", "percent": 5}))
        await hub.wait_for(lambda h: h.workflows["wf-g"].progress == 5)
        stuck.close()
        await good.close()


async def test_a_command_that_times_out_closes_the_connection_and_frees_its_frame() -> None:
    async with Hub(send_buffer_bytes=1 << 40, send_buffer_timeout=600, command_timeout=0.5) as hub:
        stuck = await non_reader(hub.url, {"X-Service-Name": "stuck"})
        stuck.send(frame("register", payload={"service_name": "stuck", "service_id": "s"}))
        change = {"workflow_id": "wf-s", "from": "planning", "to": "execution"}
        stuck.send(frame("phase_changed", "wf-s", change))
        await hub.wait_for(lambda h: h.workflows["wf-s"].phase == "execution")
        fill = [asyncio.ensure_future(hub.send("s", big_command("wf-s"))) for _ in range(4)]

        async def pause_until_refused() -> None:
            for _ in range(BURST):  # until the buffer is full, a pause goes through
                await hub.pause("wf-s", "x" * BIG)

        with pytest.raises(ServiceUnavailable, match="not reading"):
            await pause_until_refused()
        await hub.wait_for(lambda h: not h.services["s"].connected, timeout=5)
        await asyncio.gather(*fill, return_exceptions=True)
        assert hub.services["s"].close_code == 1008
        assert "not reading" in hub.services["s"].close_reason
        stuck.close()


async def test_an_operator_that_stops_reading_is_closed_and_unsubscribed() -> None:
    async with Hub(send_buffer_bytes=64 * 1024, send_buffer_timeout=0.5) as hub:
        operator = await non_reader(hub.operator_url, {})
        operator.send({"id": 1, "op": "subscribe", "logs": True})
        await hub.wait_for(lambda h: h.watchers == 1)
        service = await registered(hub, "chatty")
        for i in range(BURST):  # every log is pushed to the operator, who never reads
            log = {"level": "info", "message": f"{i} " + "y" * BIG}
            await service.send(frame("log", payload=log))
        await hub.wait_for(lambda h: len(h.logs) == BURST, timeout=10)
        await hub.wait_for(lambda h: h.watchers == 0, timeout=10)
        assert hub.closed_not_reading == 1
        assert hub.services["chatty"].connected
        operator.close()
        await service.close()


async def test_closing_the_hub_does_not_wait_forever_on_a_peer_that_stopped_reading() -> None:
    hub = await Hub(
        send_buffer_bytes=64 * 1024, send_buffer_timeout=0.5, command_timeout=60
    ).start()
    stuck = await non_reader(hub.url, {"X-Service-Name": "stuck"})
    stuck.send(frame("register", payload={"service_name": "stuck", "service_id": "s"}))
    await hub.wait_for(lambda h: h.services["s"].connected)
    sends = [asyncio.ensure_future(hub.send("s", big_command("wf"))) for _ in range(BURST)]
    await asyncio.sleep(0)  # each send writes its frame before it waits for the drain
    # websockets' closing handshake waits for the buffer to drain, with no deadline.
    await asyncio.wait_for(hub.close(), 10)
    await asyncio.gather(*sends, return_exceptions=True)
    assert hub.closed_not_reading == 1  # the close it had started (1001) is recorded
    assert hub.services["s"].close_code == 1001
    stuck.close()
