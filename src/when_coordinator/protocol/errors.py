"""The one exception the protocol layer raises."""

from __future__ import annotations

__all__ = ["PayloadError", "ProtocolError"]


class ProtocolError(ValueError):
    """A frame or a payload that does not follow the wire contract; the message says why."""


class PayloadError(ProtocolError):
    """A well-formed envelope whose payload does not fit its type's schema.

    Raised by ``decode`` for such a frame as for any other bad frame; its own class lets a
    receiver count "the peer sent a bad payload" apart from "the peer sent something that is
    not a message at all".
    """
