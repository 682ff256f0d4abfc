"""``_compat.websockets.DirectConnection``, the hub's service connections, on a real server.

It overrides websockets' undocumented ``Connection.process_event``: these tests hold it to
what ``recv()`` gave the hub before (every message, in order, whole, text as ``str``; 1007 for
invalid UTF-8) and to what the hub relies on (messages sent before the handler runs are not
lost; a failing callback ends only its connection). Run them against the lowest and the
highest websockets the package declares, like ``tests/client/test_compat_websockets.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from when_coordinator._compat.websockets import DIRECT_DISPATCH, DirectConnection

TIMEOUT = 10.0


class Received:
    """What a direct connection delivered, and an event per count reached."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.changed = asyncio.Event()

    def __call__(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.changed.set()

    async def at_least(self, count: int) -> list[str | bytes]:
        while len(self.messages) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT)
        return self.messages


@asynccontextmanager
async def direct_server(
    deliver: Callable[[str | bytes], None], start: asyncio.Event | None = None
) -> AsyncIterator[ClientConnection]:
    """A server whose connections hold from the handshake and deliver once ``start`` is set
    (at once without it); yields a client connected to it."""

    def hold(connection: ServerConnection, request: Request) -> None:
        assert isinstance(connection, DirectConnection)
        connection.hold()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectConnection)
        if start is not None:
            await start.wait()
        assert ws.direct(deliver)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        process_request=hold,
        create_connection=DirectConnection,
        close_timeout=2.0,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
            yield ws


def test_the_supported_websockets_has_the_method_overridden() -> None:
    assert DIRECT_DISPATCH


async def test_messages_sent_before_the_handler_runs_are_delivered_first_in_order() -> None:
    received, start = Received(), asyncio.Event()
    async with direct_server(received, start) as ws:
        for i in range(3):
            await ws.send(f"early {i}")
        pong = await ws.ping()  # answered from the read: the three were read before it
        await asyncio.wait_for(pong, TIMEOUT)
        start.set()
        await ws.send("late")
        assert await received.at_least(4) == ["early 0", "early 1", "early 2", "late"]


async def test_fragmented_text_and_binary_messages_arrive_whole() -> None:
    received = Received()
    async with direct_server(received) as ws:
        await ws.send(["frag", "men", "ted"])
        await ws.send(b"\x00\x01binary")
        await ws.send("whole")
        assert await received.at_least(3) == ["fragmented", b"\x00\x01binary", "whole"]


async def test_invalid_utf8_closes_with_1007_and_nothing_after_it_is_delivered() -> None:
    received = Received()
    async with direct_server(received) as ws:
        await ws.send("before")
        await ws.send(b"\xff\xfe", text=True)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1007
    assert received.messages == ["before"]


async def test_a_callback_that_raises_ends_only_its_connection_with_1011() -> None:
    received = Received()

    def deliver(message: str | bytes) -> None:
        if message == "boom":
            raise RuntimeError("a bug in the callback")
        received(message)

    async with direct_server(deliver) as ws:
        await ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    async with direct_server(received) as other:  # the server goes on serving
        await other.send("fine")
        assert await received.at_least(1) == ["fine"]
