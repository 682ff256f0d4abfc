"""The coordination endpoint: one task per service connection, its frames, pings and limits.

``ServiceEndpoint`` is the part of ``Hub`` that serves ``/v1/coordination``: it opens and
closes the connection in the state, rate-limits and decodes each frame, hands it to
``HubState``, answers ``register``, resolves ``status`` answers, and runs the ping and
send-buffer loops. Bad clients are contained per connection (see ``server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from .._compat.websockets import DirectConnection
from ..protocol import (
    EmptyPayload,
    Message,
    MessageType,
    ProtocolError,
    RegisteredPayload,
    RegisterPayload,
    StatusResponsePayload,
    decode,
)
from .errors import ServiceUnavailable
from .sendguard import SendBufferGuard
from .state import HubState
from .traffic import ReceivedLog
from .versions import VersionRefused

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Peer", "PendingStatus", "ServiceEndpoint", "format_remote"]

_log = logging.getLogger("when_coordinator.hub")

_YIELD_EVERY = 32


class Peer:
    """An open coordination connection and its rate limiter."""

    __slots__ = (
        "closing",
        "connection_id",
        "frames",
        "tokens",
        "updated",
        "window_drops",
        "window_start",
        "ws",
    )

    def __init__(self, connection_id: str, ws: ServerConnection, burst: float, now: float) -> None:
        self.connection_id = connection_id
        self.ws = ws
        self.tokens = burst
        self.updated = now
        self.window_start = now
        self.window_drops = 0
        self.frames = 0
        self.closing = False


@dataclass(slots=True)
class PendingStatus:
    future: asyncio.Future[StatusResponsePayload]
    connection_id: str
    workflow_id: str


def close_info(closed: ConnectionClosed | None) -> tuple[int, str]:
    """The close code and reason of whoever closed first (1006 if nobody did)."""
    if closed is not None:
        sent, rcvd = closed.sent, closed.rcvd
        if sent is not None and (rcvd is None or not closed.rcvd_then_sent):
            return sent.code, sent.reason
        if rcvd is not None:
            return rcvd.code, rcvd.reason
    return 1006, "connection lost without a close frame"


def format_remote(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address or "")


def header(headers: Headers, name: str) -> str | None:
    """The value of a header sent once; ``None`` when absent or repeated (ambiguous)."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


class ServiceEndpoint:
    """The coordination side of ``Hub`` (a mixin: ``Hub`` holds the attributes)."""

    if TYPE_CHECKING:
        _state: HubState
        _peers: dict[str, Peer]
        _pending: dict[str, PendingStatus]
        _received: ReceivedLog
        _connection_ids: itertools.count[int]
        _burst: float
        _rate: float
        _flood_close_after: int | None
        _ping_interval: float
        _pong_timeout: float
        _guard: SendBufferGuard
        _open: set[ServerConnection]
        _bus: Bus
        protocol_version: str
        command_timeout: float

        def _publish(self) -> None: ...

        def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]: ...

        async def _send(
            self, peer: Peer, message: Message, service_id: str, *, timeout: float
        ) -> None: ...

    async def _serve_service(self, ws: ServerConnection, path: str) -> None:
        assert ws.request is not None
        headers = ws.request.headers
        now = time.time()
        peer = Peer(f"conn-{next(self._connection_ids)}", ws, self._burst, now)
        self._peers[peer.connection_id] = peer
        self._state.open_connection(
            peer.connection_id,
            now=now,
            path=path,
            remote=format_remote(ws.remote_address),
            service_name=header(headers, "X-Service-Name") or "",
            service_id=header(headers, "X-Service-ID") or "",
        )
        self._publish()
        closed: ConnectionClosed | None = None
        try:
            if isinstance(ws, DirectConnection) and ws.direct(
                functools.partial(self._on_message, peer)
            ):
                await ws.wait_closed()  # every message is taken as it is read
                closed = ws.protocol.close_exc
            while closed is None:  # not ``async for``, which hides how a normal close went
                reply = self._take(peer, await ws.recv())
                if reply is not None:
                    await reply
                peer.frames += 1
                if peer.frames % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # let the other connections in
        except ConnectionClosed as exc:
            closed = exc
        finally:
            del self._peers[peer.connection_id]
            conn = self._state.connections.get(peer.connection_id)
            if conn is not None and conn.service_id:
                self._bus.disconnected(conn.service_id)
            code, reason = close_info(closed)
            closed = None  # it holds this frame (its traceback): no cycle left for the collector
            self._state.close_connection(
                peer.connection_id, now=time.time(), code=code, reason=reason
            )
            for pending in self._pending.values():
                if pending.connection_id == peer.connection_id and not pending.future.done():
                    pending.future.set_exception(
                        ServiceUnavailable(
                            f"the service disconnected before answering status for "
                            f"workflow {pending.workflow_id!r}"
                        )
                    )
            self._publish()

    def _admit(self, peer: Peer, now: float) -> bool:
        """Token bucket: ``rate_limit`` frames per second, bursts up to ``rate_burst``."""
        tokens = min(self._burst, peer.tokens + (now - peer.updated) * self._rate)
        peer.updated = now
        if tokens >= 1.0:
            peer.tokens = tokens - 1.0
            return True
        peer.tokens = tokens
        return False

    def _throttle(self, peer: Peer, now: float) -> None:
        self._state.throttled(peer.connection_id)
        if now - peer.window_start >= 1.0:
            peer.window_start, peer.window_drops = now, 0
        peer.window_drops += 1
        conn = self._state.connections[peer.connection_id]
        if conn.throttled == 1:
            _log.warning("%s exceeds %g messages/s: dropping", peer.connection_id, self._rate)
        self._publish()
        limit = self._flood_close_after
        if limit is not None and peer.window_drops >= limit:
            _log.warning("closing %s: sustained message flood", peer.connection_id)
            self._close_peer(peer, 1008, "message rate limit exceeded")

    def _close_peer(self, peer: Peer, code: int, reason: str) -> None:
        """Close from another task: the reader must keep draining frames meanwhile, or a full
        receive queue would keep the client's close frame from ever being read."""
        if not peer.closing:
            peer.closing = True
            self._spawn(peer.ws.close(code, reason))

    def _invalid(self, peer: Peer, reason: str) -> None:
        self._state.invalid_frame(peer.connection_id, reason)
        count = self._state.connections[peer.connection_id].invalid_frames
        if count <= 10 or count % 1000 == 0:
            _log.warning("dropped frame #%d from %s: %s", count, peer.connection_id, reason)
        self._publish()

    def _on_message(self, peer: Peer, frame: str | bytes) -> None:
        """A message as its connection's read parsed it (``DirectConnection``)."""
        reply = self._take(peer, frame)
        if reply is not None:
            self._spawn(reply)

    def _take(self, peer: Peer, frame: str | bytes) -> Awaitable[None] | None:
        """Admit, decode and apply one message; the reply to send, if any (``registered``)."""
        if peer.closing:
            return None  # what a client sends after we decided to close it is dropped unread
        now = time.time()
        if not self._admit(peer, now):
            self._throttle(peer, now)
            return None
        if not isinstance(frame, str):
            self._invalid(peer, f"binary frame of {len(frame)} bytes (messages are JSON text)")
            return None
        try:
            message = decode(frame)
            if message.type is MessageType.REGISTER:
                return self._register(peer, message, frame, now)
            applied = self._state.receive(peer.connection_id, message, now=now)
        except ProtocolError as exc:
            self._invalid(peer, str(exc))
            return None
        except Exception as exc:  # a bug must not take the connection (or the hub) down
            _log.exception("error handling a frame from %s", peer.connection_id)
            self._invalid(peer, f"internal error: {type(exc).__name__}: {exc}")
            return None
        conn = self._state.connections[peer.connection_id]
        self._received.append(conn.service_id, frame)
        if applied and message.type is MessageType.STATUS_RESPONSE:
            pending = self._pending.get(message.id)
            if (
                pending is not None
                and pending.connection_id == peer.connection_id
                and not pending.future.done()
            ):
                pending.future.set_result(StatusResponsePayload.from_dict(message.payload))
        self._publish()
        return None

    def _register(
        self, peer: Peer, message: Message, frame: str, now: float
    ) -> Awaitable[None] | None:
        """Register at once (what follows is the registered service's); the reply to send."""
        payload = message.typed_payload()
        assert isinstance(payload, RegisterPayload)
        try:
            registration = self._state.register(peer.connection_id, payload, now=now)
        except VersionRefused as exc:
            conn = self._state.connections[peer.connection_id]
            self._received.append(conn.service_id, frame)
            self._publish()
            _log.warning("refused %s: %s", peer.connection_id, exc)
            self._close_peer(peer, 1002, str(exc)[:120])
            return None
        self._received.append(registration.service_id, frame)
        self._publish()
        reply = Message.create(
            RegisteredPayload(
                service_id=registration.service_id,
                instance_id=registration.instance_id,
                message=registration.message,
                protocol_version=registration.protocol_version,
                hub_protocol_version=self.protocol_version,
            )
        )
        _log.info("registered %s as %s", peer.connection_id, registration.service_id)
        self._bus.connected(registration.service_id)
        return self._reply(peer, reply, registration.service_id)

    async def _reply(self, peer: Peer, reply: Message, service_id: str) -> None:
        with contextlib.suppress(ServiceUnavailable):  # if it left, its loop handles the close
            await self._send(peer, reply, service_id, timeout=self.command_timeout)

    async def _ping_loop(self) -> None:
        """Send a JSON ping to each service every ``ping_interval``; mark late ones."""
        while True:
            await asyncio.sleep(self._ping_interval)
            now = time.time()
            for peer in tuple(self._peers.values()):
                conn = self._state.connections.get(peer.connection_id)
                if conn is None or not conn.service_id:
                    continue
                ping = Message.create(EmptyPayload(), type=MessageType.PING)
                self._state.ping_sent(peer.connection_id, ping.id, now=now)
                self._spawn(self._ping(peer, ping, conn.service_id))
            self._state.check_health(now=now, pong_timeout=self._pong_timeout)
            self._publish()

    async def _ping(self, peer: Peer, ping: Message, service_id: str) -> None:
        # A dead or stuck connection shows up as late, then disconnected.
        # A ping that cannot be written in time closes the connection (see ``_send``): give
        # it as long as a command gets, even with a short ping interval.
        timeout = max(self._ping_interval, self.command_timeout)
        with contextlib.suppress(ServiceUnavailable):
            await self._send(peer, ping, service_id, timeout=timeout)

    async def _guard_loop(self) -> None:
        """Close the connections (services and operators) that stopped reading. Closing
        ones too: websockets' close waits, without a deadline, for the buffer to drain."""
        guard = self._guard
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(guard.interval)
            guard.scan(tuple(self._open), loop.time())

    @property
    def closed_not_reading(self) -> int:
        """Connections closed because they stopped reading (send buffer or send timeout)."""
        return self._guard.closed
