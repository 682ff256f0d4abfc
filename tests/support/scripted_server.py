"""Loopback servers for the client's tests, each on its own thread.

``ScriptedServer`` speaks just enough of the hub side to drive the client (an automatic
``registered``), records every frame it receives, and lets a test push frames, close connections
and wait for conditions without sleeping. ``RawServer`` is a bare TCP listener for what a
WebSocket server cannot be made to do: a peer that completes the upgrade and then goes silent,
or a recorder of the raw bytes a client sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from tests.support.loop_thread import LoopThread, wait_on
from when_coordinator import Config
from when_coordinator.client.connection import JOINED_FRAMES
from when_coordinator.protocol import Message, MessageType, decode

__all__ = [
    "OUTBOX_BYPASS",
    "Connection",
    "Frame",
    "RawServer",
    "ScriptedServer",
    "fast_config",
    "wait_until",
]

# The servers' own websockets logger stays quiet, so that tests capturing DEBUG logs see the
# client's records only.
_server_log = logging.getLogger("tests.scripted_server")
_server_log.setLevel(logging.INFO)

OUTBOX_BYPASS = frozenset({"register", "pong", "status_response"})
"""Message types the client sends without going through its outbox."""

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def fast_config(url: str, **changes: Any) -> Config:
    """A client configuration with test-sized delays, for a server on loopback."""
    settings: dict[str, Any] = {
        "when_url": url,
        "service_name": "test-service",
        "reconnect_initial_delay": 0.05,
        "reconnect_max_delay": 0.2,
        "ping_interval": 5.0,
        "pong_timeout": 5.0,
        "open_timeout": 5.0,
        "close_timeout": 5.0,
    }
    settings.update(changes)
    return Config(**settings)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll a client-side condition that has no event to wait on (bounded, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        pause.wait(0.005)


@dataclass
class Frame:
    connection: int
    text: str
    message: Message | None
    binary: bool = False

    @property
    def type(self) -> str:
        return str(self.message.type) if self.message else ""

    @property
    def payload(self) -> Any:
        return self.message.payload if self.message else {}

    @property
    def workflow_id(self) -> str:
        return self.message.workflow_id if self.message else ""


@dataclass
class Connection:
    number: int
    headers: Headers
    ws: ServerConnection
    closed: bool = False
    close_code: int | None = None
    close_reason: str = ""
    raw: list[str] = field(default_factory=list)
    """Every data frame as it came; ``frames`` has one entry a message (split when joined)."""


@dataclass
class ScriptedServer:
    """``with ScriptedServer() as server: ... server.url ...``.

    ``auto_register`` answers every ``register`` with ``registered``; ``register_on_open``
    sends ``registered`` as soon as a connection opens, before reading anything (so it reaches
    the client ahead of any acknowledgement of what the client sends). ``ping_on_open`` is the
    id of a JSON ``ping`` sent as soon as a connection opens (after any such ``registered``).
    ``subprotocols``: those the server accepts; with ``JOINED_FRAMES`` accepted, a client's
    joined frames are split into their messages.
    """

    auto_register: bool = True
    register_on_open: bool = False
    ping_on_open: str | None = None
    service_id: str = "svc-assigned"
    token: str | None = None
    ssl: Any = None
    frames: list[Frame] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    rejected_handshakes: int = 0
    subprotocols: list[str] | None = None

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._barriers = 0
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/v1/coordination"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, port: int = 0) -> None:
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(port, started), name="scripted-server", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("scripted server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        self._notify()

    def restart(self) -> None:
        """Stop and start again on the same port (a hub restart)."""
        port = self.port
        self.stop()
        self.start(port)

    def _run(self, port: int, started: threading.Event) -> None:
        asyncio.run(self._main(port, started))

    async def _main(self, port: int, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle,
            "127.0.0.1",
            port,
            process_request=self._process_request,
            ssl=self.ssl,
            ping_interval=None,
            max_size=None,
            compression=None,
            subprotocols=[Subprotocol(p) for p in self.subprotocols or ()] or None,
            logger=_server_log,
        ) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            await self._stop.wait()
            for conn in self.connections:
                if not conn.closed:
                    conn.ws.transport.abort()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {self.token}":
                with self._cond:
                    self.rejected_handshakes += 1
                    self._cond.notify_all()
                return connection.respond(401, "bad token\n")
        return None

    def _registered_frame(self) -> str:
        return json.dumps(
            {
                "id": "hub-reg",
                "type": "registered",
                "payload": {"service_id": self.service_id, "protocol_version": "1.0"},
            }
        )

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        with self._cond:
            conn = Connection(len(self.connections) + 1, ws.request.headers, ws)
            self.connections.append(conn)
            self._cond.notify_all()
        try:
            if self.register_on_open:
                await ws.send(self._registered_frame())
            if self.ping_on_open is not None:
                await ws.send(json.dumps({"id": self.ping_on_open, "type": "ping"}))
            joined = ws.subprotocol == JOINED_FRAMES
            async for data in ws:
                binary = isinstance(data, bytes)
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
                conn.raw.append(text)
                for part in text.split("\n") if joined else [text]:
                    try:
                        message: Message | None = decode(part)
                    except ValueError:
                        message = None
                    with self._cond:
                        self.frames.append(Frame(conn.number, part, message, binary))
                        self._cond.notify_all()
                    if (
                        self.auto_register
                        and not self.register_on_open
                        and message
                        and message.type == MessageType.REGISTER
                    ):
                        await ws.send(self._registered_frame())
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                conn.closed = True
                conn.close_code = ws.close_code
                conn.close_reason = ws.close_reason or ""
                self._cond.notify_all()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ driving it

    def _call(self, coro_fn: Callable[[], Any]) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        return future.result(10)

    def _conn(self, connection: int | None) -> Connection:
        with self._cond:
            return self.connections[(connection or len(self.connections)) - 1]

    def send(self, frame: str | bytes | dict[str, Any], connection: int | None = None) -> None:
        """Send a frame (a dict is JSON-encoded) on a connection, the latest by default."""
        conn = self._conn(connection)
        data = json.dumps(frame) if isinstance(frame, dict) else frame

        async def go() -> None:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(data)

        self._call(go)

    def close_connection(self, code: int = 1001, connection: int | None = None) -> None:
        conn = self._conn(connection)

        async def go() -> None:
            await conn.ws.close(code, "scripted close")

        self._call(go)

    def abort_connection(self, connection: int | None = None) -> None:
        """Drop the TCP connection without a closing handshake."""
        conn = self._conn(connection)

        async def go() -> None:
            conn.ws.transport.abort()

        self._call(go)

    def wait_for(
        self, predicate: Callable[[ScriptedServer], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        wait_on(self._cond, lambda: predicate(self), timeout, what or predicate)

    def wait_count(self, message_type: str, count: int, timeout: float = 10.0) -> list[Frame]:
        """Wait until at least ``count`` frames of a type arrived; returns them all."""
        self.wait_for(
            lambda s: s.count(message_type) >= count,
            timeout,
            f"{count} {message_type} frame(s) (have {self.count(message_type)})",
        )
        return self.of_type(message_type)

    def wait_connections(self, count: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda s: len(s.connections) >= count, timeout, f"{count} connection(s)")

    def wait_registered_sent(self, connection: int, timeout: float = 10.0) -> None:
        """Wait until ``register`` arrived on a connection (the client then got ``registered``
        from an auto-registering server soon after)."""
        self.wait_for(
            lambda s: bool(s.of_type("register", connection)),
            timeout,
            f"register on connection {connection}",
        )

    def barrier(self, timeout: float = 10.0, connection: int | None = None) -> None:
        """Send a JSON ``ping`` and wait for its ``pong``: every frame the client wrote before
        answering is then recorded (frames on one connection are recorded in order)."""
        self._barriers += 1
        ping_id = f"barrier-{self._barriers}"
        self.send({"id": ping_id, "type": "ping"}, connection)
        self.wait_for(
            lambda s: any(f.message.id == ping_id for f in s.of_type("pong") if f.message),
            timeout,
            f"the pong of {ping_id}",
        )

    # ------------------------------------------------------------------ reading

    def of_type(self, message_type: str, connection: int | None = None) -> list[Frame]:
        with self._cond:
            return [
                f
                for f in self.frames
                if f.type == message_type and (connection is None or f.connection == connection)
            ]

    def count(self, message_type: str) -> int:
        return len(self.of_type(message_type))

    def snapshot(self) -> list[Frame]:
        with self._cond:
            return list(self.frames)

    def app_frames(self) -> list[Frame]:
        """Frames that went through the client's outbox (not register/pong/status_response)."""
        return [f for f in self.snapshot() if f.type not in OUTBOX_BYPASS]


class RawServer(LoopThread):
    """A bare TCP server on loopback, on its own thread.

    ``mode="silent"`` answers the WebSocket upgrade by hand and then only reads, never writing
    again: no pong, no close. ``mode="record"`` never answers at all and records the bytes.
    ``mode="ping-flood"`` answers the upgrade, then sends JSON ``ping`` frames (up to
    ``max_pings`` per connection, counted in ``pings_sent``) and never reads again.
    """

    thread_name = "raw-server"

    def __init__(self, mode: str = "silent", *, max_pings: int = 200_000) -> None:
        if mode not in ("silent", "record", "ping-flood"):
            raise ValueError(mode)
        self.mode = mode
        self.max_pings = max_pings
        self.pings_sent = 0
        self.accepted = 0
        self.upgraded = 0
        self.closed = 0
        self.received: list[bytearray] = []
        self.accept_times: list[float] = []
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        super().__init__()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/coordination"

    async def _main(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await self._stop.wait()
            for writer in self._writers:
                writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        buffer = bytearray()
        with self._cond:
            self.accepted += 1
            self.accept_times.append(time.monotonic())
            self.received.append(buffer)
            self._cond.notify_all()
        try:
            if self.mode in ("silent", "ping-flood"):
                head = await reader.readuntil(b"\r\n\r\n")
                buffer.extend(head)
                key = ""
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "sec-websocket-key":
                        key = value.strip()
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                await writer.drain()
                with self._cond:
                    self.upgraded += 1
                    self._cond.notify_all()
            if self.mode == "ping-flood":
                await self._flood(writer)
                return
            while chunk := await reader.read(65536):
                with self._cond:
                    buffer.extend(chunk)
                    self._cond.notify_all()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with self._cond:
                self.closed += 1
                self._cond.notify_all()
            writer.transport.abort()

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        """Write pings, never read: the client's pongs pile up in the kernel, then in it."""
        sent = 0
        while sent < self.max_pings:
            frames = []
            for number in range(sent, sent + 256):
                text = json.dumps({"id": f"flood-{number}", "type": "ping"}).encode()
                frames.append(bytes([0x81, len(text)]) + text)  # FIN + text, unmasked, < 126
            writer.write(b"".join(frames))
            await writer.drain()
            sent += 256
            with self._cond:
                self.pings_sent += 256
                self._cond.notify_all()
        assert self._stop is not None
        await self._stop.wait()  # keep the connection, still reading nothing

    def all_bytes(self) -> bytes:
        with self._cond:
            return b"".join(bytes(b) for b in self.received)
