"""The client's reach-ins into websockets, and how it reads a close; nothing else here.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Protocol

__all__ = [
    "BATCHED_WRITES",
    "CLOSE_MESSAGE_TOO_BIG",
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

CLOSE_MESSAGE_TOO_BIG = 1009
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


def _write(ws: ClientConnection, chunks: Iterable[bytes]) -> None:
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
