"""Client configuration, and every environment variable the package reads.

``ENVIRONMENT`` is the one list of variables: ``Config.from_env`` reads from it, the
instrumentor reads ``WHEN_WORKFLOW_ENTRYPOINTS`` through it, and the docs are checked against it.
Field names follow the reference Go ``Config`` in snake_case; durations are seconds.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from ._util import warn_once

__all__ = [
    "ENVIRONMENT",
    "HUB_PATH",
    "Config",
    "ConfigError",
    "EnvVar",
    "check_environment",
    "display_url",
    "split_urls",
    "url_hint",
]

_log = logging.getLogger("when_coordinator.client")

HUB_PATH = "/v1/coordination"
"""The path the reference hub (and the Go hub) serve the coordination WebSocket on."""


class ConfigError(ValueError):
    """A setting, from code or from the environment, that cannot work; the message names it."""


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: the ``Config`` field it sets (if any) and what it means."""

    name: str
    field: str | None
    help: str
    parse: Callable[[str], Any] = str


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar(
        "WHEN_URL",
        "when_url",
        "Hub URL (ws:// or wss://), or several comma-separated, tried in turn on failure. "
        "Unset: nothing connects.",
    ),
    EnvVar(
        "WHEN_SERVICE_NAME",
        "service_name",
        "Service name sent in X-Service-Name and register (default: OTEL_SERVICE_NAME).",
    ),
    EnvVar("OTEL_SERVICE_NAME", None, "Fallback for WHEN_SERVICE_NAME."),
    EnvVar("WHEN_SERVICE_ID", "service_id", "Service id; the hub assigns one when unset."),
    EnvVar("WHEN_INSTANCE_ID", "instance_id", "Instance id (default: host name and pid)."),
    EnvVar("WHEN_SERVICE_VERSION", "version", "Service version sent in register."),
    EnvVar("WHEN_CAPABILITIES", "capabilities", "Comma-separated capabilities.", _list),
    EnvVar("WHEN_SCHEMA_VERSION", "schema_version", "Schema version sent in register.", _int),
    EnvVar("WHEN_AUTH_TOKEN", "auth_token", "Bearer token sent in the Authorization header."),
    EnvVar("WHEN_CA_FILE", "ca_file", "PEM file of CA certificates trusted for wss://."),
    EnvVar("WHEN_CLIENT_CERT_FILE", "client_cert_file", "PEM client certificate (mutual TLS)."),
    EnvVar("WHEN_CLIENT_KEY_FILE", "client_key_file", "PEM key of the client certificate."),
    EnvVar(
        "WHEN_RECONNECT_INITIAL_DELAY",
        "reconnect_initial_delay",
        "First reconnect delay in seconds (default 1).",
        _float,
    ),
    EnvVar(
        "WHEN_RECONNECT_MAX_DELAY",
        "reconnect_max_delay",
        "Longest reconnect delay in seconds (default 30).",
        _float,
    ),
    EnvVar(
        "WHEN_RECONNECT_BACKOFF_FACTOR",
        "reconnect_backoff_factor",
        "Multiplier of the delay after each failure (default 2).",
        _float,
    ),
    EnvVar(
        "WHEN_RECONNECT_MAX_ATTEMPTS",
        "reconnect_max_attempts",
        "Consecutive failed attempts before giving up; 0 is unlimited (default).",
        _int,
    ),
    EnvVar(
        "WHEN_PING_INTERVAL",
        "ping_interval",
        "Seconds between WebSocket pings (default 30).",
        _float,
    ),
    EnvVar(
        "WHEN_PONG_TIMEOUT",
        "pong_timeout",
        "Seconds without a pong before the connection is declared dead (default 20).",
        _float,
    ),
    EnvVar(
        "WHEN_OUTBOX_MAX_MESSAGES",
        "outbox_max_messages",
        "Messages kept while the hub is slow or away (default 10000).",
        _int,
    ),
    EnvVar(
        "WHEN_OUTBOX_MAX_BYTES",
        "outbox_max_bytes",
        "Approximate bytes kept while the hub is slow or away (default 8 MiB).",
        _int,
    ),
    EnvVar(
        "WHEN_MAX_FRAME_BYTES",
        "max_frame_bytes",
        "Largest inbound frame accepted; larger ones are dropped (default 1 MiB).",
        _int,
    ),
    EnvVar(
        "WHEN_CLOSE_TIMEOUT",
        "close_timeout",
        "Seconds close() and the exit handler spend delivering what is queued (default 5).",
        _float,
    ),
    EnvVar(
        "WHEN_WORKFLOW_ENTRYPOINTS",
        "workflow_entrypoints",
        "Comma-separated module:function or module:Class.method run as workflows.",
        _list,
    ),
    EnvVar(
        "WHEN_TASKS_INCLUDE",
        None,
        "Task-queue integrations: comma-separated task name patterns run as workflows "
        "(default: every task).",
    ),
    EnvVar(
        "WHEN_TASKS_EXCLUDE",
        None,
        "Task-queue integrations: comma-separated task name patterns never run as workflows.",
    ),
    EnvVar(
        "WHEN_CLICK_COMMANDS",
        None,
        "`1`/`true`: click command runs are workflows (`when_click`; off by default).",
    ),
    EnvVar(
        "WHEN_DRAMATIQ_ABORT_GRACE_MS",
        None,
        "Dramatiq with dramatiq-abort: milliseconds a hub-cancelled actor has before Abortable "
        "interrupts it (default 5000; a forced cancel: at once).",
    ),
    EnvVar(
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        None,
        "Read by opentelemetry-instrument: `when_celery` (or `when`) there switches that "
        "instrumentor off.",
    ),
    EnvVar(
        "WHEN_HUB_URL",
        None,
        "The command line's hub address (default http://127.0.0.1:8080).",
    ),
    EnvVar(
        "WHEN_HUB_DB",
        None,
        "`when-coordinator hub --db`: a SQLite file, or a `postgresql://` URL shared by "
        "several hub instances (unset: memory).",
    ),
    EnvVar(
        "WHEN_HUB_INSTANCE_ID",
        None,
        "`when-coordinator hub --instance-id`: this instance's name among those sharing a "
        "PostgreSQL database (default: random).",
    ),
    EnvVar(
        "WHEN_READ_TOKEN",
        None,
        "`when-coordinator hub`: a second token that may watch (dashboard, API) but not steer.",
    ),
    EnvVar(
        "WHEN_TRACE_URL",
        None,
        "`when-coordinator hub`: the dashboard's trace link, `{trace_id}` replaced.",
    ),
    EnvVar(
        "OTEL_LOGS_EXPORTER",
        None,
        "Read by the instrumentor: when it names `when`, the SDK already attaches the exporter.",
    ),
    EnvVar(
        "OTEL_SPAN_EVENT_COUNT_LIMIT",
        None,
        "The SDK's span event limit; a workflow records progress events under half of it.",
    ),
    EnvVar(
        "WHEN_LOGS_ENABLED",
        "logs_enabled",
        "Forward Python logging records to the hub (default true).",
        _bool,
    ),
    EnvVar(
        "WHEN_CICD_ATTRIBUTES",
        "cicd_attributes",
        "Also set the cicd.pipeline.* run attributes on workflow spans (default false).",
        _bool,
    ),
    EnvVar(
        "WHEN_METRICS_ENABLED",
        None,
        "false: record no metrics (default: through the global meter provider when it is an "
        "SDK one and OTEL_METRICS_EXPORTER is not none).",
    ),
    EnvVar(
        "OTEL_METRICS_EXPORTER",
        None,
        "none (or OTEL_SDK_DISABLED=true): no metrics through the global meter provider.",
    ),
    EnvVar("OTEL_SDK_DISABLED", None, "true: no metrics through the global meter provider."),
)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}")


def _check_header_text(name: str, value: object) -> None:
    """Sent in a handshake header: a line break or control character would break it."""
    _check_text(name, value)
    assert isinstance(value, str)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{name} must not contain control characters or line breaks")


def _check_required_header_text(name: str, value: object) -> None:
    _check_header_text(name, value)
    if not value:
        raise ConfigError(f"{name} must not be empty")


def _check_url(name: str, value: object) -> None:
    if not isinstance(value, str):
        several = (
            " (several URLs: one string, comma-separated)"
            if isinstance(value, (list, tuple))
            else ""
        )
        raise ConfigError(
            f"{name} must be a string (empty: nothing connects), got {type(value).__name__}"
            + several
        )


def _check_strings(name: str, value: object) -> None:
    assert isinstance(value, tuple)  # made a tuple by __post_init__
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{name} must hold non-empty strings, got {item!r}")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_seconds(name: str, value: object) -> None:
    if _number(name, value) < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_positive_seconds(name: str, value: object) -> None:
    if _number(name, value) <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _check_factor(name: str, value: object) -> None:
    if _number(name, value) < 1:
        raise ConfigError(f"{name} must be >= 1, got {value!r}")


def _integer(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")


def _check_count(name: str, value: object) -> None:
    _integer(name, value, 0)


def _check_bound(name: str, value: object) -> None:
    _integer(name, value, 1)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


_SEQUENCE_FIELDS = ("capabilities", "workflow_entrypoints")
_PATH_FIELDS = ("ca_file", "client_cert_file", "client_key_file")

_CHECKS: dict[str, Callable[[str, object], None]] = {
    "when_url": _check_url,
    "service_name": _check_required_header_text,
    "service_id": _check_header_text,
    "instance_id": _check_text,
    "capabilities": _check_strings,
    "version": _check_text,
    "protocol_version": _check_text,
    "schema_version": _check_count,
    "reconnect_initial_delay": _check_positive_seconds,
    "reconnect_max_delay": _check_positive_seconds,
    "reconnect_backoff_factor": _check_factor,
    "reconnect_max_attempts": _check_count,
    "ping_interval": _check_positive_seconds,
    "pong_timeout": _check_seconds,
    "open_timeout": _check_seconds,
    "auth_token": _check_header_text,
    "ca_file": _check_text,
    "client_cert_file": _check_text,
    "client_key_file": _check_text,
    "outbox_max_messages": _check_bound,
    "outbox_max_bytes": _check_bound,
    "max_frame_bytes": _check_bound,
    "close_timeout": _check_seconds,
    "write_delay": _check_seconds,
    "joined_frames": _check_flag,
    "workflow_entrypoints": _check_strings,
    "logs_enabled": _check_flag,
    "cicd_attributes": _check_flag,
}
"""One check per ``Config`` field (a field without one fails at import, below)."""


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Config:
    """How to reach the hub and how the client behaves; validated on creation.

    Every field's type and range is checked when the ``Config`` is made: a bad value raises
    ``ConfigError`` (a ``ValueError``) naming the field, at the call, rather than failing later
    on the client's thread.

    Outbox bounds cap the memory the client may hold while the hub is slow or unreachable;
    ``max_frame_bytes`` caps what the hub may make it buffer.
    """

    when_url: str = ""
    service_name: str = "unknown_service"
    service_id: str = ""
    instance_id: str = field(default_factory=_default_instance_id)
    capabilities: tuple[str, ...] = ()
    version: str = ""
    protocol_version: str = "1.0"
    schema_version: int = 0
    reconnect_initial_delay: float = 1.0
    reconnect_max_delay: float = 30.0
    reconnect_backoff_factor: float = 2.0
    reconnect_max_attempts: int = 0
    ping_interval: float = 30.0
    pong_timeout: float = 20.0
    open_timeout: float = 10.0
    auth_token: str = field(default="", repr=False)
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    outbox_max_messages: int = 10_000
    outbox_max_bytes: int = 8 * 1024 * 1024
    max_frame_bytes: int = 1024 * 1024
    close_timeout: float = 5.0
    write_delay: float = 0.0
    """Seconds the client waits, once a message wakes it, before it writes: what is queued
    meanwhile goes out in the same write (0, the default: at once). A process that reports
    in bursts trades that much latency for fewer writes and thread switches; the pool
    processes of a task-queue worker use it on their loopback hop to the worker's relay."""
    joined_frames: bool = False
    """Offer the peer to take a write's messages in one text frame, newline-separated
    (WebSocket subprotocol ``JOINED_FRAMES``), and do so where it accepts: a worker's relay
    does, on its loopback hop from the worker's children (one frame to make, mask and parse
    instead of dozens). A hub, which accepts no subprotocol, gets one message a frame as
    always."""
    workflow_entrypoints: tuple[str, ...] = ()
    logs_enabled: bool = True
    cicd_attributes: bool = False

    def __post_init__(self) -> None:
        for name in _SEQUENCE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise ConfigError(
                    f"{name} must be a sequence of strings, got {type(value).__name__}"
                    + (" (not one string)" if isinstance(value, str) else "")
                )
            object.__setattr__(self, name, tuple(value))
        for name in _PATH_FIELDS:  # a pathlib.Path is a fine file name
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        self._validate()

    def _validate(self) -> None:
        """Every field's type and range, checked here and only here, so that a bad value fails
        at the call that made it, not later on the client's thread."""
        for spec in fields(self):
            _CHECKS[spec.name](spec.name, getattr(self, spec.name))
        urls = self.urls
        for url in urls:
            _check_hub_url(url, len(urls))
        if len(set(urls)) < len(urls):
            twice = next(url for url in urls if urls.count(url) > 1)
            raise ConfigError(f"when_url lists {display_url(twice)!r} twice")
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ConfigError("reconnect_max_delay must be >= reconnect_initial_delay")
        if self.client_key_file and not self.client_cert_file:
            raise ConfigError("client_key_file needs client_cert_file")

    @cached_property
    def enabled(self) -> bool:
        """Whether a hub is configured at all; without one, nothing connects.

        Asked for every message queued, so worked out once per (immutable) config."""
        return bool(self.urls)

    @property
    def urls(self) -> tuple[str, ...]:
        """The hub URLs of ``when_url``, in the order the client tries them."""
        return split_urls(self.when_url)

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some fields changed, validated again."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Read the ``WHEN_*`` variables (``ENVIRONMENT``); keyword arguments win over them.

        A variable that does not parse raises ``ConfigError`` naming it and the value's problem.
        """
        env = os.environ if environ is None else environ
        check_environment(env)
        values: dict[str, Any] = {}
        for var in ENVIRONMENT:
            raw = env.get(var.name)
            if var.field is None or raw is None or raw.strip() == "":
                continue
            try:
                values[var.field] = var.parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{var.name}={raw!r} is not valid: {exc}") from None
        if "service_name" not in values and env.get("OTEL_SERVICE_NAME", "").strip():
            values["service_name"] = env["OTEL_SERVICE_NAME"].strip()
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown Config field(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            # A value that parses but cannot work: say which variable set it.
            names = [
                var.name
                for var in ENVIRONMENT
                if var.field in values
                and var.field not in overrides
                and re.search(rf"\b{var.field}\b", str(exc))
            ]
            if not names:
                raise
            raise ConfigError(f"{exc} (set by {', '.join(names)})") from None


def split_urls(text: str) -> tuple[str, ...]:
    """The URLs of a comma-separated ``when_url`` (blanks around commas and empty items are
    ignored, so ``"ws://a, ws://b,"`` is two URLs)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _check_hub_url(url: str, count: int) -> None:
    """One URL of ``when_url``: in a list the error names the URL (without credentials), so
    that the one bad URL of several is found at once."""
    where = f"when_url entry {display_url(url)!r}" if count > 1 else "when_url"
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"{where} must be a ws:// or wss:// URL with a host, got {display_url(url)!r}"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{where} has an invalid port: {display_url(url)!r}") from None


def display_url(url: str) -> str:
    """A hub URL as logs and ``stats()`` show it: without user name, password or query
    (either may carry a credential), but with the scheme, host, port and path that tell
    two hubs apart."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


_missing = {spec.name for spec in fields(Config)} ^ set(_CHECKS)
if _missing:  # pragma: no cover - a field added without its check
    raise AssertionError(f"Config fields without a check: {sorted(_missing)}")


def check_environment(environ: Mapping[str, str]) -> None:
    """Warn, once per process and name, about a ``WHEN_*`` variable nobody reads.

    A typo (a missing underscore, say) otherwise leaves the default in force with no sign of it;
    the warning names the closest known variable.
    """
    known = [var.name for var in ENVIRONMENT]
    for name in environ:
        if not name.startswith("WHEN_") or name in known:
            continue
        import difflib  # noqa: PLC0415 - only for a misspelt variable, not at every import

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md"
        warn_once(
            _log,
            f"unknown variable {name}",
            "%s is not a when-coordinator setting and is ignored: %s",
            name,
            hint,
        )


def url_hint(url: str) -> str:
    """A warning for one hub URL that is valid but probably wrong ("" when it looks right)."""
    if url and urlsplit(url).path in ("", "/"):
        return (
            f"when_url {display_url(url)} has no path: the hub's coordination endpoint is "
            f"usually at {HUB_PATH} (a hub answers HTTP 404 elsewhere)"
        )
    return ""
