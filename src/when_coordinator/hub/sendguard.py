"""Disconnect peers that stop reading, so their send buffers cannot hold the hub's memory.

websockets writes a frame into the transport's buffer and then waits for the buffer to drain
below its low-water mark. A peer that stops reading (a stuck service, a suspended operator
terminal) therefore keeps every frame the hub sent it, and every later send, including
websockets' own keepalive ping, waits on a drain that never comes: the connection is never
closed. Two rules end that:

- a connection whose unsent bytes stay above ``limit`` for ``timeout`` seconds is closed
  (checked a few times per ``timeout``, for every connection: services and operators);
- a hub send that times out closes its connection at once: the frame is already in the
  buffer and cannot be taken back, and a peer that did not read it in time is a dead peer.

Closing means failing the connection (close code 1008 and a reason on the hub's records)
and aborting the transport: a closing handshake would queue behind the unread bytes.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable

from websockets.asyncio.server import ServerConnection

from .._compat.websockets import fail, unsent_bytes

__all__ = ["NOT_READING", "SendBufferGuard", "unsent_bytes"]

_log = logging.getLogger("when_coordinator.hub")

NOT_READING = 1008
"""The close code recorded for a peer closed because it stopped reading (policy violation)."""


def _abort(ws: ServerConnection, reason: str, code: int = NOT_READING) -> None:
    """Fail the connection with ``code``/``reason`` and drop its buffer now (idempotent; also
    when already closing but stuck behind unread bytes)."""
    fail(ws, code, reason[:120])


class SendBufferGuard:
    """Closes the connections whose unsent bytes stay above ``limit`` past ``timeout``."""

    def __init__(self, limit: int, timeout: float) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError("send_buffer_bytes must be an int >= 0")
        if not timeout > 0:
            raise ValueError("send_buffer_timeout must be > 0 seconds")
        self.limit = limit
        self.timeout = float(timeout)
        self.closed = 0
        """Connections closed because they stopped reading."""
        self._over: dict[ServerConnection, float] = {}
        self._aborted: weakref.WeakSet[ServerConnection] = weakref.WeakSet()

    def abort(self, ws: ServerConnection, reason: str) -> None:
        """Close ``ws`` as a peer that stopped reading: its unsent frames are dropped."""
        if ws not in self._aborted:
            self._aborted.add(ws)
            self.closed += 1
        _abort(ws, reason)

    def aborted(self, ws: ServerConnection) -> bool:
        """Whether ``ws`` was closed for not reading (a send that returned afterwards may
        have returned only because the buffer holding its frame was dropped)."""
        return ws in self._aborted

    @property
    def interval(self) -> float:
        """How often to scan: a quarter of the deadline, between 50 ms and 1 s."""
        return min(1.0, max(0.05, self.timeout / 4))

    def scan(self, connections: Iterable[ServerConnection], now: float) -> None:
        """Check every open connection once (``now`` from a monotonic clock)."""
        over: dict[ServerConnection, float] = {}
        for ws in connections:
            size = unsent_bytes(ws)
            if size <= self.limit:
                continue
            since = self._over.get(ws, now)
            if now - since < self.timeout:
                over[ws] = since
                continue
            remote = ws.remote_address
            path = ws.request.path.partition("?")[0] if ws.request is not None else ""
            _log.warning(
                "closing %s (%s): not reading, %d bytes unsent for over %g s",
                remote,
                path,
                size,
                self.timeout,
            )
            self.abort(ws, f"not reading: {size} bytes unsent for {self.timeout:g} s")
        self._over = over
