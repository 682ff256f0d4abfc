"""The client's compat module for websockets, against a real server on loopback.

Run it against the lowest and the highest websockets the package declares (pyproject; 17.0 and
17.4 so far): the reach-in (``abort``) and the reading of a close (``refused_frame``) must hold
on both.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable

from packaging.requirements import Requirement
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from when_coordinator._compat.websockets import (
    BATCHED_WRITES,
    _write,
    abort,
    refused_frame,
    send_frames,
)

Handler = Callable[[ServerConnection], Awaitable[None]]
TIMEOUT = 10.0


async def closed_by(handler: Handler, *, max_size: int = 1 << 20) -> ConnectionClosed:
    """Connect to a server running ``handler``, send one frame, and return how it ended."""
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}", compression=None, max_size=max_size, proxy=None
        ) as ws:
            await ws.send("x" * 200)
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            except ConnectionClosed as exc:
                return exc
    raise AssertionError("the connection did not close")


async def refuse_big_frames(ws: ServerConnection) -> None:
    await ws.recv()
    await ws.close(1009, "frame too big")


async def close_normally(ws: ServerConnection) -> None:
    await ws.recv()
    await ws.close(1000)


async def send_a_big_frame(ws: ServerConnection) -> None:
    await ws.recv()
    await ws.send("y" * 4096)  # over the client's max_size: the client closes with 1009
    await ws.wait_closed()


def test_the_websockets_version_is_one_the_package_declares() -> None:
    """So that a run against another version says which it was and what is declared."""
    (declared,) = (
        Requirement(text)
        for text in importlib.metadata.requires("when-coordinator") or ()
        if Requirement(text).name == "websockets"
    )
    installed = importlib.metadata.version("websockets")
    assert declared.specifier.contains(installed), f"websockets {installed}: not {declared}"


def test_a_1009_of_the_hub_is_a_refused_frame_and_other_closes_are_not() -> None:
    assert refused_frame(asyncio.run(closed_by(refuse_big_frames)))
    assert not refused_frame(asyncio.run(closed_by(close_normally)))
    # A 1009 the client sent (for a frame the hub sent) is not the hub's refusal, whether
    # the hub's echo was read (websockets stops reading after failing a connection) or not.
    ours = asyncio.run(closed_by(send_a_big_frame, max_size=1024))
    assert ours.sent is not None
    assert ours.sent.code == 1009
    assert not refused_frame(ours)
    echoed = ConnectionClosed(Close(1009, ""), Close(1009, "too big"), rcvd_then_sent=False)
    assert not refused_frame(echoed)
    assert refused_frame(ConnectionClosed(Close(1009, ""), Close(1009, ""), rcvd_then_sent=True))
    assert not refused_frame(None)


def test_abort_ends_a_connection_at_once_whatever_the_peer_does() -> None:
    """Without ``abort`` the client would wait ``close_timeout`` (60 s here) for a closing
    handshake the silent peer never answers: the wait below (10 s) would time out."""

    async def main() -> ConnectionClosed:
        silent = asyncio.Event()

        async def never_answer(ws: ServerConnection) -> None:
            await silent.wait()  # reads nothing, answers nothing, closes nothing

        async with serve(never_answer, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            ws: ClientConnection = await connect(
                f"ws://127.0.0.1:{port}", compression=None, close_timeout=60, proxy=None
            )
            abort(ws)
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            except ConnectionClosed as exc:
                return exc
            finally:
                silent.set()
        raise AssertionError("recv() returned on an aborted connection")

    closed = asyncio.run(main())
    assert closed.rcvd is None  # no closing handshake: the transport was dropped
    assert not refused_frame(closed)


def test_send_frames_delivers_a_batch_in_order_as_separate_messages() -> None:
    """On every declared version the batched path is the one taken, and the hub reads each
    frame as its own message, in order; on a closed connection it raises as ``send`` does."""
    assert BATCHED_WRITES

    async def main() -> list[str]:
        received: list[str] = []
        done = asyncio.Event()

        async def collect(ws: ServerConnection) -> None:
            async for message in ws:
                assert isinstance(message, str)
                received.append(message)
                if len(received) == 201:
                    done.set()

        async with serve(collect, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None) as ws:
                await send_frames(ws, ["single"])
                await send_frames(ws, [f'{{"n": {n}}}' for n in range(200)])
                await asyncio.wait_for(done.wait(), TIMEOUT)
                await ws.close()
                try:
                    await send_frames(ws, ["after", "close"])
                except ConnectionClosed:
                    return received
        raise AssertionError("send_frames() on a closed connection did not raise")

    received = asyncio.run(main())
    assert received == ["single", *(f'{{"n": {n}}}' for n in range(200))]


def test_an_end_of_stream_marker_is_handled_as_websockets_handles_it() -> None:
    """The data before the marker is written, then the TCP connection is half-closed: the peer
    gets the frame, then the end of the stream (no closing handshake: 1006)."""

    async def main() -> tuple[list[str], ConnectionClosed]:
        received: list[str] = []
        ended: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()

        async def collect(ws: ServerConnection) -> None:
            try:
                while True:
                    message = await ws.recv()
                    assert isinstance(message, str)
                    received.append(message)
            except ConnectionClosed as exc:
                ended.set_result(exc)

        async with serve(collect, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            ws = await connect(
                f"ws://127.0.0.1:{port}", compression=None, close_timeout=1, proxy=None
            )
            ws.protocol.send_text(b"before the end")
            _write(ws, [*ws.protocol.data_to_send(), b""])
            closed = await asyncio.wait_for(ended, TIMEOUT)
            await ws.close()
            return received, closed

    received, closed = asyncio.run(main())
    assert received == ["before the end"]
    assert closed.rcvd is None
