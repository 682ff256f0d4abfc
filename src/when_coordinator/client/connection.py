"""Dialling the hub: handshake headers, TLS, and the reconnect schedule."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import Config, ConfigError, display_url

__all__ = [
    "JOINED_FRAMES",
    "RedactingLogger",
    "backoff_delays",
    "handshake_headers",
    "is_tls",
    "joined",
    "redact",
    "ssl_context",
]


def handshake_headers(config: Config) -> dict[str, str]:
    """The reference client's headers, plus ``Authorization`` when a token is configured."""
    headers = {"X-Service-Name": config.service_name}
    if config.service_id:
        headers["X-Service-ID"] = config.service_id
    if config.auth_token:
        headers["Authorization"] = f"Bearer {config.auth_token}"
    return headers


JOINED_FRAMES = "when.joined-frames"
"""The WebSocket subprotocol of a peer that takes several messages in one text frame, each
ended by a newline but the last (``Config.joined_frames``). The protocol's JSON never holds a
raw newline: inside a string it is escaped."""


def joined(frames: list[str], max_bytes: int) -> list[str]:
    """``frames`` as few text frames of at most ``max_bytes`` (UTF-8) each, in order; a frame
    longer than that on its own stays one (the caller has checked it against the limit)."""
    if len(frames) < 2:
        return frames
    out: list[str] = []
    part: list[str] = []
    size = 0
    for frame in frames:
        length = len(frame) if frame.isascii() else len(frame.encode())
        if part and size + 1 + length > max_bytes:
            out.append("\n".join(part))
            part, size = [], 0
        size += length + (1 if part else 0)
        part.append(frame)
    out.append("\n".join(part))
    return out


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "wss"


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """A verifying TLS context for the ``wss://`` URLs of ``when_url`` (None when all are
    ``ws://``); never a plaintext fallback.

    With a CA file or a client certificate configured every URL must be ``wss://``: a
    ``ws://`` one in the list would be a silent plaintext fallback on failover.
    """
    plain = [url for url in config.urls if not is_tls(url)]
    if (config.ca_file or config.client_cert_file) and (plain or not config.urls):
        named = f", got {display_url(plain[0])!r}" if plain and len(config.urls) > 1 else ""
        raise ConfigError(f"ca_file and client certificates need a wss:// when_url{named}")
    if len(plain) == len(config.urls):
        return None
    try:
        context = ssl.create_default_context(cafile=config.ca_file or None)
        if config.client_cert_file:
            context.load_cert_chain(config.client_cert_file, config.client_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None
    return context


def backoff_delays(config: Config, rng: random.Random | None = None) -> Iterator[float]:
    """Delays before each reconnect attempt: initial, times factor, capped, with jitter.

    Jitter only shortens a delay (by up to 20 %), so the configured values stay upper bounds
    while a fleet of clients does not re-dial a restarted hub in lockstep.
    """
    rng = rng or random.Random()
    delay = config.reconnect_initial_delay
    while True:
        yield delay * (0.8 + 0.2 * rng.random())
        delay = min(delay * config.reconnect_backoff_factor, config.reconnect_max_delay)


def redact(text: str, config: Config) -> str:
    """Remove the auth token from text that may reach a log or an exception message."""
    return text.replace(config.auth_token, "<redacted>") if config.auth_token else text


if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class RedactingLogger(_LoggerAdapter):
    """The logger handed to websockets: at DEBUG it logs every handshake header, and the
    ``Authorization`` one carries the token."""

    def __init__(self, logger: logging.Logger, config: Config) -> None:
        super().__init__(logger, {})
        self._config = config

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self._config.auth_token and self.isEnabledFor(level):
            msg = redact(str(msg), self._config)
            args = tuple(redact(a, self._config) if isinstance(a, str) else a for a in args)
        self.logger.log(level, msg, *args, **kwargs)
