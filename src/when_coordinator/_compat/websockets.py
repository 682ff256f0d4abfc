"""The package's reach-ins into websockets, and how the client reads a close; nothing else here.

``abort`` uses ``Connection.transport``, the asyncio transport websockets keeps on every
connection (set in ``connection_made``) but does not document: websockets has no public
"abort now". ``close()`` would first wait up to ``close_timeout`` for a closing handshake that
a dead peer never answers.

``send_frames`` writes a batch of frames in one socket write through ``send_context()``, the
context ``Connection.send`` itself writes in, and the sans-I/O ``Protocol``: with one
``send()`` per frame, every message cost a system call and a switch of the GIL to the
application (``benchmarks/bench_client``: 1.8x raw websockets per message against 1.3x). Its
end-of-stream handling is that of websockets' ``Connection.send_data``. Without those names it
falls back to ``send()`` per frame.

All of it is checked against the lowest and the highest websockets declared in pyproject
(``tests/client/test_compat_websockets.py``: 17.0 and 17.4).

``refused_frame`` reads only ``ConnectionClosed``'s public ``rcvd`` and ``rcvd_then_sent``.

``DirectConnection`` (the hub's service connections, the worker relay's children) overrides
``Connection.process_event``, which websockets calls for each event the sans-I/O protocol
parsed from a read, to hand data messages to a callback there instead of queueing them for
``recv()``: one call per message from ``data_received``, where ``recv()`` cost a future, a
task step and a turn of the loop each (``benchmarks/bench_hub``: 74-85 against 94-98 us of the
server's CPU per paced frame). It also extends ``data_received`` (asyncio's public protocol
method) to call ``after_read`` once a read's messages are delivered. Without
``process_event`` the hub and the relay read with ``recv()`` (``DIRECT_DISPATCH``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, Protocol

__all__ = [
    "BATCHED_WRITES",
    "CLOSE_MESSAGE_TOO_BIG",
    "DIRECT_DISPATCH",
    "DirectConnection",
    "abort",
    "fail",
    "refused_frame",
    "send_frames",
    "unsent_bytes",
]

BATCHED_WRITES = all(
    (
        hasattr(ClientConnection, "send_context"),
        hasattr(Protocol, "send_text"),
        hasattr(Protocol, "data_to_send"),
    )
)
"""Whether ``send_frames`` writes a batch in one go (else one ``send()`` per frame)."""

DIRECT_DISPATCH = callable(getattr(ServerConnection, "process_event", None))
"""Whether ``DirectConnection.direct`` can take messages from ``data_received``."""

CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

_log = logging.getLogger("when_coordinator.hub")
"""The close code of a peer that refused a frame over its size limit (RFC 6455 7.4.1)."""


def abort(ws: Connection) -> None:
    """Drop the connection at once, without a closing handshake (a peer that stopped
    answering pings or reading): the reader then ends with ``ConnectionClosed``."""
    transport = ws.transport
    if transport is not None:
        transport.abort()


def fail(ws: Connection, code: int, reason: str) -> None:
    """Record ``code``/``reason`` as the close (the sans-I/O ``Protocol.fail``) and drop the
    connection at once: a closing handshake would queue behind bytes the peer does not read."""
    with contextlib.suppress(Exception):  # already closing: the code is recorded already
        ws.protocol.fail(code, reason)
    abort(ws)


def unsent_bytes(ws: Connection) -> int:
    """Bytes written to the connection that the peer has not taken yet (user space only)."""
    transport = ws.transport
    return int(transport.get_write_buffer_size()) if transport is not None else 0


def refused_frame(closed: ConnectionClosed | None) -> bool:
    """Whether the peer closed the connection, on its own initiative, because a frame was over
    its size limit. A 1009 that only echoes ours (for a frame it sent us) is not that."""
    if closed is None or closed.rcvd is None:
        return False
    return closed.rcvd.code == CLOSE_MESSAGE_TOO_BIG and bool(closed.rcvd_then_sent)


async def send_frames(ws: ClientConnection, frames: list[str]) -> None:
    """Send text frames in order, as ``ws.send`` would, a batch in one socket write.

    ``send_context()`` checks the connection is open, raises ``ConnectionClosed`` as ``send``
    does, and waits for the write buffer to drain (flow control) on exit.
    """
    if len(frames) == 1 or not BATCHED_WRITES:
        for frame in frames:
            await ws.send(frame)
        return
    async with ws.send_context():
        protocol = ws.protocol
        for frame in frames:
            protocol.send_text(frame.encode())
        _write(ws, protocol.data_to_send())


def _write(ws: Connection, chunks: Iterable[bytes]) -> None:
    """``Connection.send_data`` with the data before an end-of-stream marker joined."""
    transport = ws.transport
    pending: list[bytes] = []
    for chunk in chunks:
        if chunk:
            pending.append(chunk)
            continue
        if pending:
            transport.write(b"".join(pending))
            pending = []
        if transport.can_write_eof():  # half-close the TCP connection (not under TLS)
            with contextlib.suppress(Exception):  # OSError; uvloop raises RuntimeError
                transport.write_eof()
        else:
            transport.close()
    if pending:
        transport.write(b"".join(pending))


class DirectConnection(ServerConnection):
    """A server connection whose data messages can go to a callback as they are parsed.

    Data messages are held from the start (a client may send frames right behind its
    upgrade request, parsed with it, before any handler runs) until the handler says where
    they go: ``direct(deliver)`` gives them, and every later one, to ``deliver`` in order, on
    the event loop, from ``data_received``: text as ``str``, binary as ``bytes``, a fragmented
    message once whole (websockets' protocol bounds it by ``max_size``); ``recv()`` gets none.
    ``release()`` gives them to ``recv()`` as a plain ``ServerConnection`` would. Invalid UTF-8
    fails the connection with 1007, as ``recv()`` does; more than ``MAX_HELD`` messages before
    the handler runs, with 1008. ``deliver`` must not raise or block: the read waits for it.
    ``after_read``, if given, is called once a read's messages are all delivered (one call for
    the several messages a read may bring), so that what they queue can go on together.
    """

    MAX_HELD = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliver: Callable[[str | bytes], None] | None = None
        self._after_read: Callable[[], None] | None = None
        self._delivered = False  # by the read in progress: ``after_read`` is due after it
        self._held: list[Frame] | None = [] if DIRECT_DISPATCH else None
        self._parts: list[bytes] = []
        self._text = False
        self._failed = False

    def direct(
        self,
        deliver: Callable[[str | bytes], None],
        after_read: Callable[[], None] | None = None,
    ) -> bool:
        """Deliver from now on (and what was held); False when it cannot (``recv()`` then)."""
        if not DIRECT_DISPATCH:
            return False
        held, self._held = self._held or [], None
        self._deliver, self._after_read = deliver, after_read
        for frame in held:
            self._take(frame)
        self._read_done()
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._read_done()

    def _read_done(self) -> None:
        if not self._delivered:
            return
        self._delivered = False
        after = self._after_read
        if after is None or self._failed:
            return
        try:
            after()
        except Exception:  # a bug: this connection ends, as a handler's would
            _log.exception("error handling a message")
            self._fail(CLOSE_INTERNAL_ERROR, "internal error")

    def release(self) -> None:
        """Leave every message to ``recv()``, those held first."""
        held, self._held = self._held or [], None
        for frame in held:
            super().process_event(frame)

    def process_event(self, event: Any) -> None:
        if not isinstance(event, Frame) or event.opcode > Opcode.BINARY:
            super().process_event(event)  # the handshake, control frames
        elif self._failed:
            return  # parsed in the same read as what failed the connection: dropped
        elif self._deliver is not None:
            self._take(event)
        elif self._held is None:
            super().process_event(event)
        elif len(self._held) < self.MAX_HELD:
            self._held.append(event)
        else:
            self._held = []
            self._fail(CLOSE_POLICY_VIOLATION, "too many messages before the server was ready")

    def _take(self, frame: Frame) -> None:
        deliver = self._deliver
        if deliver is None or self.protocol.state is CLOSED:
            return
        if frame.opcode is not Opcode.CONT:
            self._text, self._parts = frame.opcode is Opcode.TEXT, []
        if not frame.fin:
            self._parts.append(bytes(frame.data))
            return
        data = bytes(frame.data)
        if self._parts:
            data, self._parts = b"".join([*self._parts, data]), []
        message: str | bytes = data
        if self._text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._fail(CLOSE_INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
        self._delivered = True
        try:
            deliver(message)
        except Exception:  # a bug: this connection ends, as a handler's would
            _log.exception("error handling a message")
            self._fail(CLOSE_INTERNAL_ERROR, "internal error")

    def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` (nothing after it is read), as websockets does for ``recv()``,
        dropping the connection if the peer does not answer within ``close_timeout``."""
        self._deliver, self._failed = None, True
        with contextlib.suppress(Exception):  # closing already
            self.protocol.fail(code, reason)
            _write(self, self.protocol.data_to_send())
        self.loop.call_later(self.close_timeout or 10.0, abort, self)
