"""A scripted WebSocket server on loopback for the client's tests.

It speaks just enough of the hub side to drive the client (an automatic ``registered``), records
every frame it receives, and lets a test push frames, close connections and wait for conditions
without sleeping. It runs on its own thread so synchronous test code can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from when_coordinator.protocol import Message, MessageType, decode


@dataclass
class Frame:
    connection: int
    text: str
    message: Message | None

    @property
    def type(self) -> str:
        return str(self.message.type) if self.message else ""

    @property
    def payload(self) -> Any:
        return self.message.payload if self.message else {}


@dataclass
class Connection:
    number: int
    headers: Headers
    ws: ServerConnection
    closed: bool = False
    close_code: int | None = None


@dataclass
class ScriptedServer:
    """``with ScriptedServer() as server: ... server.url ...``."""

    auto_register: bool = True
    token: str | None = None
    ssl: Any = None
    frames: list[Frame] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    rejected_handshakes: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
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

    def start(self, port: int = 0) -> None:
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, started), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("scripted server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

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
                self.rejected_handshakes += 1
                self._notify()
                return connection.respond(401, "bad token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Connection(len(self.connections) + 1, ws.request.headers, ws)
        with self._cond:
            self.connections.append(conn)
            self._cond.notify_all()
        try:
            async for data in ws:
                text = data if isinstance(data, str) else data.decode("utf-8", "replace")
                try:
                    message: Message | None = decode(text)
                except ValueError:
                    message = None
                with self._cond:
                    self.frames.append(Frame(conn.number, text, message))
                    self._cond.notify_all()
                if self.auto_register and message and message.type == MessageType.REGISTER:
                    await ws.send(
                        json.dumps(
                            {
                                "id": "hub-reg",
                                "type": "registered",
                                "payload": {
                                    "service_id": "svc-assigned",
                                    "protocol_version": "1.0",
                                },
                            }
                        )
                    )
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            conn.close_code = ws.close_code
            self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ driving it

    def _call(self, coro_fn: Callable[[], Any]) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro_fn(), self._loop)
        return future.result(10)

    def send(self, frame: str | bytes | dict[str, Any], connection: int | None = None) -> None:
        """Send a frame (a dict is JSON-encoded) on a connection, the latest by default."""
        conn = self.connections[(connection or len(self.connections)) - 1]
        data = json.dumps(frame) if isinstance(frame, dict) else frame

        async def go() -> None:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(data)

        self._call(go)

    def close_connection(self, code: int = 1001, connection: int | None = None) -> None:
        conn = self.connections[(connection or len(self.connections)) - 1]

        async def go() -> None:
            await conn.ws.close(code, "scripted close")

        self._call(go)

    def abort_connection(self, connection: int | None = None) -> None:
        """Drop the TCP connection without a closing handshake."""
        conn = self.connections[(connection or len(self.connections)) - 1]

        async def go() -> None:
            conn.ws.transport.abort()

        self._call(go)

    def wait_for(
        self, predicate: Callable[[ScriptedServer], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what or predicate}"
                    )
                self._cond.wait(remaining)

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
