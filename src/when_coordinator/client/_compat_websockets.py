"""The client's one reach-in into websockets, and how it reads a close; nothing else here.

``abort`` uses ``Connection.transport``, the asyncio transport websockets keeps on every
connection (set in ``connection_made``) but does not document: websockets has no public
"abort now". ``close()`` would first wait up to ``close_timeout`` for a closing handshake that
a dead peer never answers. Checked against the lowest and highest websockets versions declared
in pyproject (``tests/client/test_compat_websockets.py``: 17.0 and 17.4).

``refused_frame`` reads only ``ConnectionClosed``'s public ``rcvd`` and ``rcvd_then_sent``.
"""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

__all__ = ["CLOSE_MESSAGE_TOO_BIG", "abort", "refused_frame"]

CLOSE_MESSAGE_TOO_BIG = 1009
"""The close code of a peer that refused a frame over its size limit (RFC 6455 7.4.1)."""


def abort(ws: ClientConnection) -> None:
    """Drop the connection at once, without a closing handshake (a peer that stopped
    answering pings or reading): the reader then ends with ``ConnectionClosed``."""
    ws.transport.abort()


def refused_frame(closed: ConnectionClosed | None) -> bool:
    """Whether the peer closed the connection, on its own initiative, because a frame was over
    its size limit. A 1009 that only echoes ours (for a frame it sent us) is not that."""
    if closed is None or closed.rcvd is None:
        return False
    return closed.rcvd.code == CLOSE_MESSAGE_TOO_BIG and bool(closed.rcvd_then_sent)
