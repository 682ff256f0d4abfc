"""The protocol version a hub speaks, and the one it agrees on with a registering service."""

from __future__ import annotations

import re

from ..protocol import ProtocolError

__all__ = ["HUB_PROTOCOL_VERSION", "VersionRefused", "negotiate_version"]

HUB_PROTOCOL_VERSION = "1.1"
"""The protocol version this hub speaks; clients with the same major version are accepted."""


class VersionRefused(ProtocolError):
    """A ``register`` whose protocol version this hub cannot speak; the text is the close reason."""


_VERSION_RE = re.compile(r"(\d{1,6})(?:\.(\d{1,6}))?")


def _parse_version(text: str) -> tuple[int, int] | None:
    match = _VERSION_RE.fullmatch(text.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def negotiate_version(client: str, hub: str = HUB_PROTOCOL_VERSION) -> str:
    """The version both sides speak: same major, the lower minor. Raises ``VersionRefused``.

    An empty client version means the protocol default, ``1.0``.
    """
    hub_version = _parse_version(hub)
    if hub_version is None:
        raise ValueError(f"hub protocol version {hub!r} is not MAJOR.MINOR")
    client_version = _parse_version(client or "1.0")
    if client_version is None:
        raise VersionRefused(f"protocol version {client[:20]!r} is not MAJOR.MINOR")
    if client_version[0] != hub_version[0]:
        raise VersionRefused(
            f"protocol version {client_version[0]}.{client_version[1]} not supported: "
            f"this hub speaks {hub_version[0]}.x (up to {hub})"
        )
    return f"{hub_version[0]}.{min(client_version[1], hub_version[1])}"
