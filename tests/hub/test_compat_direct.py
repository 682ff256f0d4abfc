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
from websockets.frames import Frame, Opcode

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
    deliver: Callable[[str | bytes], None],
    start: asyncio.Event | None = None,
    after_read: Callable[[], None] | None = None,
) -> AsyncIterator[int]:
    """A server whose connections deliver once ``start`` is set (at once without it); yields
    its port."""

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectConnection)
        if start is not None:
            await start.wait()
        assert ws.direct(deliver, after_read)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        create_connection=DirectConnection,
        close_timeout=2.0,
    ) as server:
        yield server.sockets[0].getsockname()[1]


@asynccontextmanager
async def direct_client(
    deliver: Callable[[str | bytes], None], start: asyncio.Event | None = None
) -> AsyncIterator[ClientConnection]:
    """A websockets client connected to ``direct_server``."""
    async with (
        direct_server(deliver, start) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws,
    ):
        yield ws


@asynccontextmanager
async def pipelined(port: int, messages: list[str]) -> AsyncIterator[bytes]:
    """A raw client that sends its upgrade request and ``messages`` in one write, as a client
    that does not wait for the response could; yields the response's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(upgrade_request(port) + frames(messages))
        await writer.drain()
        yield await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    finally:
        writer.close()


def upgrade_request(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frames(messages: list[str]) -> bytes:
    return b"".join(Frame(Opcode.TEXT, m.encode()).serialize(mask=True) for m in messages)


def test_the_supported_websockets_has_the_method_overridden() -> None:
    assert DIRECT_DISPATCH


async def test_messages_sent_before_the_handler_runs_are_delivered_first_in_order() -> None:
    received, start = Received(), asyncio.Event()
    async with direct_client(received, start) as ws:
        for i in range(3):
            await ws.send(f"early {i}")
        pong = await ws.ping()  # answered from the read: the three were read before it
        await asyncio.wait_for(pong, TIMEOUT)
        start.set()
        await ws.send("late")
        assert await received.at_least(4) == ["early 0", "early 1", "early 2", "late"]


async def test_fragmented_text_and_binary_messages_arrive_whole() -> None:
    received = Received()
    async with direct_client(received) as ws:
        await ws.send(["frag", "men", "ted"])
        await ws.send(b"\x00\x01binary")
        await ws.send("whole")
        assert await received.at_least(3) == ["fragmented", b"\x00\x01binary", "whole"]


async def test_invalid_utf8_closes_with_1007_and_nothing_after_it_is_delivered() -> None:
    received = Received()
    async with direct_client(received) as ws:
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

    async with direct_client(deliver) as ws:
        await ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    async with direct_client(received) as other:  # the server goes on serving
        await other.send("fine")
        assert await received.at_least(1) == ["fine"]


async def test_messages_sent_with_the_upgrade_request_are_delivered() -> None:
    received = Received()
    async with (
        direct_server(received) as port,
        pipelined(port, ["first", "second", "third"]) as head,
    ):
        assert head.startswith(b"HTTP/1.1 101")
        assert await received.at_least(3) == ["first", "second", "third"]


async def test_released_messages_reach_recv_in_order_and_later_ones_too() -> None:
    got: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectConnection)
        ws.release()
        async for message in ws:
            await got.put(message)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, create_connection=DirectConnection
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with pipelined(port, ["first", "second"]):
            assert [await asyncio.wait_for(got.get(), TIMEOUT) for _ in range(2)] == [
                "first",
                "second",
            ]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
            await ws.send("later")
            assert await asyncio.wait_for(got.get(), TIMEOUT) == "later"


async def test_a_client_that_floods_before_the_handler_runs_is_dropped_and_others_served() -> None:
    """Past ``MAX_HELD`` messages held for the handler, the connection ends (here, sent with
    the upgrade request, before any response) and nothing of it is delivered."""
    received, start = Received(), asyncio.Event()
    async with direct_server(received, start) as port:
        messages = [str(i) for i in range(DirectConnection.MAX_HELD + 1)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(upgrade_request(port) + frames(messages))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # to the end: closed
            assert not answer.startswith(b"HTTP/1.1 101")
        finally:
            writer.close()
            start.set()
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
            await ws.send("fine")
            assert await received.at_least(1) == ["fine"]


async def test_after_read_comes_once_a_reads_messages_are_all_delivered() -> None:
    """Messages that arrive in one read are delivered, then ``after_read`` is called once:
    those held before the handler ran, and those of a later write of several frames."""
    events: list[str | bytes] = []
    received = Received()

    def deliver(message: str | bytes) -> None:
        events.append(message)
        received(message)

    async with direct_server(deliver, after_read=lambda: events.append("after")) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(upgrade_request(port) + frames(["a", "b"]))
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            await received.at_least(2)
            writer.write(frames(["c", "d", "e"]))
            await received.at_least(5)
        finally:
            writer.close()
    assert events == ["a", "b", "after", "c", "d", "e", "after"]


async def test_an_after_read_that_raises_ends_only_its_connection_with_1011() -> None:
    received, raised = Received(), list[bool]()

    def after_read() -> None:
        if "boom" in received.messages and not raised:
            raised.append(True)
            raise RuntimeError("a bug in the callback")

    async with (
        direct_server(received, after_read=after_read) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws,
    ):
        await ws.send("fine")
        await received.at_least(1)
        await ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011
        async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as other:
            await other.send("other")  # the server goes on serving
            assert await received.at_least(3) == ["fine", "boom", "other"]
            await asyncio.wait_for(await other.ping(), TIMEOUT)
