"""A bare protocol client for tests against the hub: it sends exactly the frames it is given.

``RawService`` is deliberately not the ``Coordinator``: it has no queue, no reconnect and no
phase manager, so a test can send what a buggy or foreign client would (the reference Go
client's duplicates, broken JSON, binary frames) and see exactly what the hub sends back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..protocol import format_timestamp, new_message_id

__all__ = ["RawService", "frame"]


def frame(
    type: str,
    workflow_id: str = "",
    payload: Mapping[str, Any] | None = None,
    *,
    id: str | None = None,
) -> dict[str, Any]:
    """A message as a JSON-ready dict, with a fresh id and the current timestamp."""
    out: dict[str, Any] = {
        "id": id or new_message_id(),
        "type": type,
        "timestamp": format_timestamp(),
    }
    if workflow_id:
        out["workflow_id"] = workflow_id
    if payload:
        out["payload"] = dict(payload)
    return out


class RawService:
    """One WebSocket connection speaking raw JSON frames, with an inbox of what arrives.

    Incoming frames are decoded into dicts and queued; JSON ``ping``s are answered with a
    ``pong`` carrying the same id unless ``auto_pong`` is False (they are queued either way
    only when ``auto_pong`` is False).
    """

    def __init__(self, ws: ClientConnection, *, auto_pong: bool = True) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received: list[dict[str, Any]] = []
        """Everything received, in order (pings included)."""
        self.pongs_sent = 0
        self._closed: ConnectionClosed | None = None
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        service_name: str = "raw-service",
        service_id: str = "",
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        auto_pong: bool = True,
        max_size: int | None = 1 << 22,
    ) -> RawService:
        """Open the connection with the handshake headers a client sends (nothing is sent)."""
        all_headers = {"X-Service-Name": service_name} if service_name else {}
        if service_id:
            all_headers["X-Service-ID"] = service_id
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        ws = await connect(
            url, additional_headers=all_headers, compression=None, max_size=max_size, proxy=None
        )
        return cls(ws, auto_pong=auto_pong)

    async def _read(self) -> None:
        try:
            while True:  # not ``async for``, which hides the close frame of a normal close
                data = await self.ws.recv()
                try:
                    message = json.loads(data)
                except ValueError:
                    message = {"type": "<not json>", "raw": data}
                self.received.append(message)
                if self.auto_pong and message.get("type") == "ping":
                    self.pongs_sent += 1
                    await self.send({"id": message["id"], "type": "pong"})
                    continue
                await self.inbox.put(message)
        except ConnectionClosed as exc:
            self._closed = exc

    async def send(self, message: Mapping[str, Any] | str | bytes) -> None:
        """Send a dict as JSON, or a str/bytes frame verbatim."""
        if isinstance(message, (str, bytes)):
            await self.ws.send(message)
        else:
            await self.ws.send(json.dumps(message))

    async def register(
        self,
        service_name: str = "raw-service",
        *,
        service_id: str = "",
        instance_id: str = "",
        protocol_version: str = "1.0",
        timeout: float = 5.0,
        **extra: Any,
    ) -> dict[str, Any]:
        """Send ``register`` and return the hub's ``registered`` message."""
        payload: dict[str, Any] = {
            "service_name": service_name,
            "capabilities": None,
            "protocol_version": protocol_version,
            **extra,
        }
        if service_id:
            payload["service_id"] = service_id
        if instance_id:
            payload["instance_id"] = instance_id
        await self.send(frame("register", payload=payload))
        return await self.expect("registered", timeout)

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next queued message; ``TimeoutError`` if none arrives in time."""
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"nothing received within {timeout:g} s") from None

    async def expect(self, type: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of ``type``, skipping (and dropping) others from the inbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no {type!r} message within {timeout:g} s")
            message = await self.recv(remaining)
            if message.get("type") == type:
                return message

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait until the hub closes the connection; returns its close code and reason."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        rcvd = self._closed.rcvd if self._closed is not None else None
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "")

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> RawService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
