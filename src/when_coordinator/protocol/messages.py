"""The message envelope, typed payloads and their JSON encoding (PROTOCOL.md sections 2 and 4).

Sans-I/O: nothing here opens a socket, starts a thread or keeps time on its own. ``decode``
validates the envelope only and keeps the payload as the decoded JSON object, so the hot path
costs little more than ``json.loads``; the typed payload classes validate their fields when a
consumer asks for them (``Message.typed_payload()``). That split also lets a receiver ignore
message types it does not know without rejecting them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import json.scanner
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

from .phases import Phase

__all__ = [
    "ENVELOPE_WORKFLOW_TYPES",
    "PAYLOAD_TYPES",
    "CancelPayload",
    "CheckpointPayload",
    "EmptyPayload",
    "ErrorPayload",
    "LogBatchPayload",
    "LogEntry",
    "LogLevel",
    "LogPayload",
    "Message",
    "MessageType",
    "PausePayload",
    "Payload",
    "PhaseChangedPayload",
    "ProgressPayload",
    "ProtocolError",
    "RegisterPayload",
    "RegisteredPayload",
    "ResumePayload",
    "StatusPayload",
    "StatusResponsePayload",
    "WorkflowCreatedPayload",
    "decode",
    "encode",
    "encode_envelope",
    "format_timestamp",
    "new_message_id",
    "parse_timestamp",
]


class ProtocolError(ValueError):
    """A frame or a payload that does not follow the wire contract; the message says why."""


class MessageType(str, Enum):
    """Every message type of the protocol; compares equal to its wire string."""

    # Service to hub.
    REGISTER = "register"
    WORKFLOW_CREATED = "workflow_created"
    PHASE_CHANGED = "phase_changed"
    CHECKPOINT = "checkpoint"
    ERROR = "error"
    PROGRESS = "progress"
    STATUS_RESPONSE = "status_response"
    PONG = "pong"
    LOG = "log"
    LOG_BATCH = "log_batch"
    # Hub to service.
    REGISTERED = "registered"
    PING = "ping"
    STATUS = "status"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"

    def __str__(self) -> str:
        return self.value


class LogLevel(str, Enum):
    """Log levels as the hub stores them."""

    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"

    def __str__(self) -> str:
        return self.value


_TYPES_BY_VALUE: dict[str, MessageType] = {t.value: t for t in MessageType}
_LOG_LEVELS: dict[str, LogLevel] = {level.value: level for level in LogLevel}

ENVELOPE_WORKFLOW_TYPES = frozenset(
    {
        MessageType.WORKFLOW_CREATED,
        MessageType.PHASE_CHANGED,
        MessageType.CHECKPOINT,
        MessageType.ERROR,
        MessageType.PROGRESS,
        MessageType.STATUS_RESPONSE,
        MessageType.STATUS,
        MessageType.PAUSE,
        MessageType.RESUME,
        MessageType.CANCEL,
    }
)
"""Types whose envelope carries the workflow id; ``log`` and ``log_batch`` never do."""


# --------------------------------------------------------------------------- ids and time

# 32 of the 36 allowed characters, so that a byte maps to one without bias (byte % 32).
_ID_TABLE = bytes((b"abcdefghijklmnopqrstuvwxyz234567"[i % 32]) for i in range(256))
_id_counter = itertools.count()


_ID_BATCH = 12 * 256
_id_lock = threading.Lock()
_id_pool = ""
_id_pos = _ID_BATCH


def _forget_id_pool() -> None:
    """A forked child must not draw the same random bytes as its parent."""
    global _id_pool, _id_pos, _id_lock  # noqa: PLW0603
    _id_lock = threading.Lock()
    _id_pool, _id_pos = "", _ID_BATCH


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id_pool)


def new_message_id() -> str:
    """A fresh id of the reference shape ``msg-<12 of [a-z0-9]>-<0..999999>``.

    Sixty bits from the operating system's strong random source make a collision within one
    process practically impossible; the counter suffix separates ids drawn in the same instant.
    The random bytes are read 256 ids at a time: one system call per message was a measurable
    share of a message's cost.
    """
    global _id_pool, _id_pos  # noqa: PLW0603 - the pool of random bytes, guarded by _id_lock
    with _id_lock:
        position = _id_pos
        if position >= _ID_BATCH:
            _id_pool = os.urandom(_ID_BATCH).translate(_ID_TABLE).decode("ascii")
            position = 0
        _id_pos = position + 12
    return f"msg-{_id_pool[position : position + 12]}-{next(_id_counter) % 1_000_000}"


_ts_cache: tuple[int, str] = (-1, "")


def format_timestamp(time_ns: int | None = None) -> str:
    """RFC 3339 UTC with nanoseconds and ``Z``, as the reference writes; now when no time given."""
    global _ts_cache  # noqa: PLW0603 - a one-entry cache; a racing writer stores the same value
    if time_ns is None:
        time_ns = time.time_ns()
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    cached_second, prefix = _ts_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _ts_cache = (seconds, prefix)
    return f"{prefix}.{nanos:09d}Z"


# Field ranges live in the pattern so that a match is valid but for the day of the month.
# ASCII: RFC 3339 digits are 0-9, not any Unicode digit ``\d`` would otherwise accept.
_TIMESTAMP_RE = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)"
    r"(?:\.(\d{1,9}))?(?:[Zz]|([+-])([01]\d|2[0-3]):([0-5]\d))",
    re.ASCII,
)
# What follows the seconds (the first 19 characters), for timestamps whose first 19 are known.
_match_timestamp_tail = re.compile(
    r"(?:\.\d{1,9})?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)", re.ASCII
).fullmatch
_known_seconds: set[str] = set()
"""Valid ``YYYY-MM-DDTHH:MM:SS`` prefixes seen lately: traffic carries few distinct seconds."""


def _check_timestamp(text: str) -> None:
    """``parse_timestamp``'s validation at a fraction of its cost, for ``decode``'s hot path.

    A prefix validated once (pattern and calendar) leaves only the fraction and offset to match
    for every later timestamp of the same second; the set of prefixes is bounded.
    """
    if text[:19] in _known_seconds and _match_timestamp_tail(text, 19) is not None:
        return
    _learn_timestamp(text)


def _learn_timestamp(text: str) -> None:
    if _TIMESTAMP_RE.fullmatch(text) is None:
        raise ProtocolError(f"timestamp {text!r} is not RFC 3339 (e.g. 2026-11-26T22:41:47.5Z)")
    parse_timestamp(text)  # the day of the month
    if len(_known_seconds) >= 4096:
        _known_seconds.clear()
    _known_seconds.add(text[:19])


def parse_timestamp(text: str) -> datetime:
    """Parse RFC 3339 with any offset and 0 to 9 fractional digits into an aware datetime.

    Digits past microseconds are truncated (``datetime`` cannot hold them); the wire string is
    what a ``Message`` keeps, so nothing is lost in a round trip.
    """
    match = _TIMESTAMP_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ProtocolError(f"timestamp {text!r} is not RFC 3339 (e.g. 2026-11-26T22:41:47.5Z)")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = match.groups()
    tz = timezone.utc
    if sign is not None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    micros = int((frac or "0")[:6].ljust(6, "0"))
    sec = int(second)
    try:
        # RFC 3339 allows a leap second (:60); datetime does not, so it is read as :59.
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(sec, 59), micros, tz
        )
    except ValueError as exc:
        raise ProtocolError(f"timestamp {text!r} is out of range: {exc}") from None


# --------------------------------------------------------------------------- payload schema

_Kind = Literal[
    "str", "time", "bool", "int", "number", "phase", "phase?", "object", "capabilities", "logs"
]


@dataclass(frozen=True)
class _Field:
    attr: str
    key: str
    kind: _Kind
    always: bool = False


def _is_empty(value: Any) -> bool:
    # Every empty value the protocol omits is falsy: "", 0, 0.0, False, None, {} and ().
    return not value


def _check(type_name: str, spec: _Field, value: Any) -> Any:
    """Validate one decoded JSON value against its field kind and return the Python value."""
    where = f"{type_name} payload field {spec.key!r}"
    kind = spec.kind
    if kind == "str":
        if isinstance(value, str):
            return value
        expected = "a string"
    elif kind == "time":
        if isinstance(value, str):
            if value:
                try:
                    _check_timestamp(value)
                except ProtocolError as exc:
                    raise ProtocolError(f"{where}: {exc}") from None
            return value
        expected = "an RFC 3339 string"
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        expected = "a boolean"
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        expected = "a number"
    elif kind in ("phase", "phase?"):
        if kind == "phase?" and value == "":
            return None
        if isinstance(value, str):
            try:
                return Phase(value)
            except ValueError:
                names = ", ".join(p.value for p in Phase)
                raise ProtocolError(f"{where}: unknown phase {value!r} (one of {names})") from None
        expected = "a phase string"
    elif kind == "object":
        if isinstance(value, dict):
            return value
        expected = "an object"
    elif kind == "capabilities":
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        expected = "a list of strings or null"
    else:  # logs
        if isinstance(value, list):
            entries = []
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ProtocolError(f"{where}[{index}] must be an object")
                try:
                    entries.append(LogEntry.from_dict(item))
                except ProtocolError as exc:
                    raise ProtocolError(f"{where}[{index}]: {exc}") from None
            return tuple(entries)
        expected = "a list of log entries"
    raise ProtocolError(f"{where} must be {expected}, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, list):
        return "array"
    return "object"


def _to_wire(spec: _Field, value: Any) -> Any:
    kind = spec.kind
    if kind == "capabilities":
        return list(value) if value else None
    if kind == "logs":
        return [entry.to_dict() for entry in value]
    if kind in ("phase", "phase?"):
        return "" if value is None else str(value)
    if kind == "object":
        return dict(value)
    return value


_P = TypeVar("_P", bound="_Schema")


class _Schema:
    """Shared encoding of the payload dataclasses, driven by their ``_FIELDS`` table."""

    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    _NAME: ClassVar[str] = "payload"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_FIELDS" in cls.__dict__ and "to_dict" not in cls.__dict__:
            setattr(cls, "to_dict", _compile_to_dict(cls._FIELDS))  # noqa: B010 - a method made at class creation

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for the wire, with PROTOCOL.md's omission rules applied."""
        return _generic_to_dict(self)

    @classmethod
    def from_dict(cls: type[_P], data: Mapping[str, Any]) -> _P:
        """Validate a decoded JSON object; absent or null fields take their defaults."""
        return _generic_from_dict(cls, data)


def _generic_from_dict(cls: type[_P], data: Mapping[str, Any]) -> _P:
    """Validation read from the ``_FIELDS`` table (the reference for the compiled
    ``from_dict`` of each payload class, and its path for anything but a plain dict)."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"{cls._NAME} payload must be an object, got {_json_type(data)}")
    kwargs: dict[str, Any] = {}
    for spec in cls._FIELDS:
        value = data.get(spec.key)
        if value is not None:
            kwargs[spec.attr] = _check(cls._NAME, spec, value)
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{cls._NAME} payload: {exc}") from None


def _generic_to_dict(payload: _Schema) -> dict[str, Any]:
    """The omission rules, read from the ``_FIELDS`` table (the reference for the compiled
    ``to_dict`` of each payload class)."""
    out: dict[str, Any] = {}
    for spec in payload._FIELDS:
        value = getattr(payload, spec.attr)
        if spec.always or not _is_empty(value):
            out[spec.key] = _to_wire(spec, value)
    return out


_PLAIN_KINDS = frozenset({"str", "time", "bool", "int", "number"})


def _compile_to_dict(specs: tuple[_Field, ...]) -> Callable[[Any], dict[str, Any]]:
    """A ``to_dict`` unrolled from a ``_FIELDS`` table, as ``dataclasses`` builds ``__init__``.

    Encoding runs once per message sent; the unrolled form costs about a third of the loop.
    Attribute and key names come from the tables in this module, never from input.
    """
    lines = ["def to_dict(self):", "    out = {}"]
    namespace: dict[str, Any] = {"_to_wire": _to_wire}
    for index, spec in enumerate(specs):
        namespace[f"_spec{index}"] = spec
        value = "v" if spec.kind in _PLAIN_KINDS else f"_to_wire(_spec{index}, v)"
        lines.append(f"    v = self.{spec.attr}")
        if spec.always:
            lines.append(f"    out[{spec.key!r}] = {value}")
        else:
            lines.append(f"    if v:\n        out[{spec.key!r}] = {value}")
    lines.append("    return out")
    exec("\n".join(lines), namespace)  # code built from the tables above, never from input
    function: Callable[[Any], dict[str, Any]] = namespace["to_dict"]
    function.__doc__ = _Schema.to_dict.__doc__
    return function


# The type test each kind passes without a call to ``_check`` (which handles the rest: str
# subclasses, the errors); "{v}" is the value's variable.
_FAST_TESTS: dict[str, str] = {
    "str": "type({v}) is str",
    "time": (
        "type({v}) is str and (not {v} or ({v}[:19] in _known_seconds"
        " and _match_timestamp_tail({v}, 19) is not None))"
    ),
    "bool": "type({v}) is bool",
    "int": "type({v}) is int",
    "number": "type({v}) is float or type({v}) is int",
    "object": "type({v}) is dict",
}
_PHASES_BY_VALUE: dict[str, Phase] = {phase.value: phase for phase in Phase}


def _compile_from_dict(cls: type[_Schema]) -> Callable[[Any, Any], Any] | None:
    """A ``from_dict`` unrolled from a payload dataclass's ``_FIELDS`` table.

    The hub validates every payload it receives, and the table-driven loop with the dataclass
    ``__init__`` behind it costs more than decoding the frame did. The unrolled form tests each
    value's type inline, calls ``_check`` only for what it cannot pass (so errors read the
    same), and fills the frozen instance's ``__dict__`` at once. None when the class does not
    fit the pattern (it keeps the generic path).
    """
    specs = cls._FIELDS
    if not dataclasses.is_dataclass(cls) or cls.__dict__.get("__slots__") is not None:
        return None
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    if not specs or set(fields_by_name) != {spec.attr for spec in specs}:
        return None
    namespace: dict[str, Any] = {
        "_generic_from_dict": _generic_from_dict,
        "_check": _check,
        "_known_seconds": _known_seconds,
        "_match_timestamp_tail": _match_timestamp_tail,
        "_PHASES_BY_VALUE": _PHASES_BY_VALUE,
        "_new": object.__new__,
        "_set": object.__setattr__,
        "_NAME": cls._NAME,
        "_CLASS": cls,
    }
    lines = [
        "def from_dict(cls, data):",
        "    if type(data) is not dict or cls is not _CLASS:  # a subclass has its own table",
        "        return _generic_from_dict(cls, data)",
        "    get = data.get",
    ]
    for index, spec in enumerate(specs):
        v = f"v{index}"
        namespace[f"_spec{index}"] = spec
        known = fields_by_name[spec.attr]
        if known.default is not dataclasses.MISSING:
            namespace[f"_default{index}"] = known.default
            default = f"_default{index}"
        elif known.default_factory is not dataclasses.MISSING:  # a fresh value each time
            namespace[f"_factory{index}"] = known.default_factory
            default = f"_factory{index}()"
        else:
            return None  # a required field: only __init__ can say it is missing
        lines.append(f"    {v} = get({spec.key!r})")
        lines.append(f"    if {v} is None:")
        lines.append(f"        {v} = {default}")
        if spec.kind in ("phase", "phase?"):
            lines.append(f"    elif type({v}) is str and {v} in _PHASES_BY_VALUE:")
            lines.append(f"        {v} = _PHASES_BY_VALUE[{v}]")
        elif spec.kind in _FAST_TESTS:
            lines.append(f"    elif {_FAST_TESTS[spec.kind].format(v=v)}:")
            lines.append("        pass")
        lines.append("    else:")
        lines.append(f"        {v} = _check(_NAME, _spec{index}, {v})")
    entries = ", ".join(f"{spec.attr!r}: v{index}" for index, spec in enumerate(specs))
    lines.append("    obj = _new(cls)")
    lines.append(f"    _set(obj, '__dict__', {{{entries}}})")
    if hasattr(cls, "__post_init__"):
        lines.append("    obj.__post_init__()")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # code built from the tables above, never from input
    function: Callable[[Any, Any], Any] = namespace["from_dict"]
    function.__doc__ = _Schema.from_dict.__doc__
    return function


def _fields(*specs: tuple[str, str, _Kind] | tuple[str, str, _Kind, bool]) -> tuple[_Field, ...]:
    return tuple(_Field(*spec) for spec in specs)


# --------------------------------------------------------------------------- log entries


@dataclass(frozen=True)
class LogEntry(_Schema):
    """One log record as the hub stores it (PROTOCOL.md section 4, "A log entry")."""

    timestamp: str = ""
    level: LogLevel | str = LogLevel.INFO
    message: str = ""
    trace_id: str = ""
    span_id: str = ""
    workflow_id: str = ""
    action_id: str = ""
    correlation_id: str = ""
    fields: Mapping[str, Any] = field(default_factory=dict)
    source_file: str = ""
    source_line: int = 0

    _NAME: ClassVar[str] = "log entry"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("timestamp", "timestamp", "time", True),
        ("level", "level", "str", True),
        ("message", "message", "str", True),
        ("trace_id", "trace_id", "str"),
        ("span_id", "span_id", "str"),
        ("workflow_id", "workflow_id", "str"),
        ("action_id", "action_id", "str"),
        ("correlation_id", "correlation_id", "str"),
        ("fields", "fields", "object"),
        ("source_file", "source_file", "str"),
        ("source_line", "source_line", "int"),
    )

    def __post_init__(self) -> None:
        level = self.level
        if level.__class__ is LogLevel:
            return  # made by this package: nothing to convert
        # From the wire, on every record a hub receives: a dict lookup, not LogLevel(level),
        # whose Enum machinery costs more than validating the rest of the entry.
        known = _LOG_LEVELS.get(level) if isinstance(level, str) else None
        if known is None:
            levels = ", ".join(level.value for level in LogLevel)
            raise ProtocolError(
                f"log entry field 'level': unknown log level {level!r} (one of {levels})"
            )
        object.__setattr__(self, "level", known)


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class RegisterPayload(_Schema):
    service_name: str = ""
    service_id: str = ""
    instance_id: str = ""
    capabilities: Sequence[str] | None = None
    version: str = ""
    protocol_version: str = "1.0"
    schema_version: int = 0

    TYPE: ClassVar[MessageType] = MessageType.REGISTER
    _NAME: ClassVar[str] = "register"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("service_name", "service_name", "str", True),
        ("service_id", "service_id", "str"),
        ("instance_id", "instance_id", "str"),
        ("capabilities", "capabilities", "capabilities", True),
        ("version", "version", "str"),
        ("protocol_version", "protocol_version", "str", True),
        ("schema_version", "schema_version", "int"),
    )


@dataclass(frozen=True)
class WorkflowCreatedPayload(_Schema):
    workflow_id: str = ""
    parent_workflow_id: str = ""
    root_workflow_id: str = ""
    action_id: str = ""
    action_type: str = ""

    TYPE: ClassVar[MessageType] = MessageType.WORKFLOW_CREATED
    _NAME: ClassVar[str] = "workflow_created"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str", True),
        ("parent_workflow_id", "parent_workflow_id", "str"),
        ("root_workflow_id", "root_workflow_id", "str"),
        ("action_id", "action_id", "str"),
        ("action_type", "action_type", "str"),
    )


@dataclass(frozen=True)
class PhaseChangedPayload(_Schema):
    """``from_phase`` is None for a workflow's first phase (``"from": ""`` on the wire)."""

    workflow_id: str = ""
    from_phase: Phase | None = None
    to_phase: Phase = Phase.PENDING
    checkpoint_id: str = ""
    reason: str = ""

    TYPE: ClassVar[MessageType] = MessageType.PHASE_CHANGED
    _NAME: ClassVar[str] = "phase_changed"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("from_phase", "from", "phase?", True),
        ("to_phase", "to", "phase", True),
        ("checkpoint_id", "checkpoint_id", "str"),
        ("reason", "reason", "str"),
    )


@dataclass(frozen=True)
class CheckpointPayload(_Schema):
    workflow_id: str = ""
    checkpoint_id: str = ""
    reason: str = ""
    state: Mapping[str, Any] | None = None

    TYPE: ClassVar[MessageType] = MessageType.CHECKPOINT
    _NAME: ClassVar[str] = "checkpoint"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str", True),
        ("checkpoint_id", "checkpoint_id", "str", True),
        ("reason", "reason", "str", True),
        ("state", "state", "object"),
    )


@dataclass(frozen=True)
class ErrorPayload(_Schema):
    workflow_id: str = ""
    error: str = ""
    recoverable: bool = False
    action_id: str = ""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    _NAME: ClassVar[str] = "error"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("error", "error", "str"),
        ("recoverable", "recoverable", "bool", True),
        ("action_id", "action_id", "str"),
    )


@dataclass(frozen=True)
class ProgressPayload(_Schema):
    workflow_id: str = ""
    percent: float = 0
    action_id: str = ""
    stage: str = ""
    message: str = ""
    current_item: int = 0
    total_items: int = 0

    TYPE: ClassVar[MessageType] = MessageType.PROGRESS
    _NAME: ClassVar[str] = "progress"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("percent", "percent", "number", True),
        ("action_id", "action_id", "str"),
        ("stage", "stage", "str"),
        ("message", "message", "str"),
        ("current_item", "current_item", "int"),
        ("total_items", "total_items", "int"),
    )


@dataclass(frozen=True)
class StatusResponsePayload(_Schema):
    workflow_id: str = ""
    phase: Phase = Phase.PENDING
    progress: float = 0
    current_action: str = ""
    message: str = ""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_RESPONSE
    _NAME: ClassVar[str] = "status_response"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str", True),
        ("phase", "phase", "phase", True),
        ("progress", "progress", "number", True),
        ("current_action", "current_action", "str"),
        ("message", "message", "str"),
    )


@dataclass(frozen=True)
class EmptyPayload(_Schema):
    """``ping`` and ``pong`` carry no payload."""

    _NAME: ClassVar[str] = "empty"


@dataclass(frozen=True)
class LogPayload(_Schema):
    """A single ``log``: the entry's keys sit at the top level of the payload."""

    entry: LogEntry = field(default_factory=LogEntry)

    TYPE: ClassVar[MessageType] = MessageType.LOG
    _NAME: ClassVar[str] = "log"

    def to_dict(self) -> dict[str, Any]:
        return self.entry.to_dict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogPayload:
        return cls(entry=LogEntry.from_dict(data))


@dataclass(frozen=True)
class LogBatchPayload(_Schema):
    logs: Sequence[LogEntry] = ()

    TYPE: ClassVar[MessageType] = MessageType.LOG_BATCH
    _NAME: ClassVar[str] = "log_batch"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(("logs", "logs", "logs", True))


@dataclass(frozen=True)
class RegisteredPayload(_Schema):
    service_id: str = ""
    instance_id: str = ""
    message: str = ""
    protocol_version: str = ""
    hub_protocol_version: str = ""

    TYPE: ClassVar[MessageType] = MessageType.REGISTERED
    _NAME: ClassVar[str] = "registered"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("service_id", "service_id", "str"),
        ("instance_id", "instance_id", "str"),
        ("message", "message", "str"),
        ("protocol_version", "protocol_version", "str"),
        ("hub_protocol_version", "hub_protocol_version", "str"),
    )


@dataclass(frozen=True)
class StatusPayload(_Schema):
    workflow_id: str = ""

    TYPE: ClassVar[MessageType] = MessageType.STATUS
    _NAME: ClassVar[str] = "status"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(("workflow_id", "workflow_id", "str"))


@dataclass(frozen=True)
class PausePayload(_Schema):
    workflow_id: str = ""
    reason: str = ""

    TYPE: ClassVar[MessageType] = MessageType.PAUSE
    _NAME: ClassVar[str] = "pause"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("reason", "reason", "str"),
    )


@dataclass(frozen=True)
class ResumePayload(_Schema):
    workflow_id: str = ""
    from_checkpoint: str = ""

    TYPE: ClassVar[MessageType] = MessageType.RESUME
    _NAME: ClassVar[str] = "resume"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("from_checkpoint", "from_checkpoint", "str"),
    )


@dataclass(frozen=True)
class CancelPayload(_Schema):
    workflow_id: str = ""
    reason: str = ""
    force: bool = False

    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    _NAME: ClassVar[str] = "cancel"
    _FIELDS: ClassVar[tuple[_Field, ...]] = _fields(
        ("workflow_id", "workflow_id", "str"),
        ("reason", "reason", "str"),
        ("force", "force", "bool"),
    )


Payload = (
    RegisterPayload
    | WorkflowCreatedPayload
    | PhaseChangedPayload
    | CheckpointPayload
    | ErrorPayload
    | ProgressPayload
    | StatusResponsePayload
    | EmptyPayload
    | LogPayload
    | LogBatchPayload
    | RegisteredPayload
    | StatusPayload
    | PausePayload
    | ResumePayload
    | CancelPayload
)

PAYLOAD_TYPES: Mapping[MessageType, type[Payload]] = {
    MessageType.REGISTER: RegisterPayload,
    MessageType.WORKFLOW_CREATED: WorkflowCreatedPayload,
    MessageType.PHASE_CHANGED: PhaseChangedPayload,
    MessageType.CHECKPOINT: CheckpointPayload,
    MessageType.ERROR: ErrorPayload,
    MessageType.PROGRESS: ProgressPayload,
    MessageType.STATUS_RESPONSE: StatusResponsePayload,
    MessageType.PONG: EmptyPayload,
    MessageType.LOG: LogPayload,
    MessageType.LOG_BATCH: LogBatchPayload,
    MessageType.REGISTERED: RegisteredPayload,
    MessageType.PING: EmptyPayload,
    MessageType.STATUS: StatusPayload,
    MessageType.PAUSE: PausePayload,
    MessageType.RESUME: ResumePayload,
    MessageType.CANCEL: CancelPayload,
}
"""The payload class of each message type."""


def _install_compiled_from_dict() -> None:
    # After the dataclass decorators ran: the compiled code needs each class's defaults.
    for cls in {LogEntry, *PAYLOAD_TYPES.values()}:
        if "from_dict" not in cls.__dict__:  # LogPayload has its own
            compiled = _compile_from_dict(cls)
            if compiled is not None:
                cls.from_dict = classmethod(compiled)  # type: ignore[method-assign,assignment]


_install_compiled_from_dict()


# --------------------------------------------------------------------------- the envelope


@dataclass(frozen=True)
class Message:
    """One protocol message: the envelope, with the payload as its JSON object.

    ``type`` is a ``MessageType`` for known types and the raw string otherwise. ``timestamp``
    is the wire string (empty when absent), kept verbatim so a round trip loses no digits.
    """

    type: MessageType | str
    id: str = field(default_factory=new_message_id)
    workflow_id: str = ""
    timestamp: str = field(default_factory=format_timestamp)
    payload: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        payload: Payload,
        *,
        type: MessageType | None = None,
        id: str | None = None,
        workflow_id: str | None = None,
        timestamp: str | None = None,
    ) -> Message:
        """Build a message from a typed payload.

        The envelope's workflow id defaults to the payload's for the types that carry one
        (``ENVELOPE_WORKFLOW_TYPES``). ``type`` is needed only for ``EmptyPayload`` (ping/pong).
        """
        message_type = type if type is not None else getattr(payload, "TYPE", None)
        if message_type is None:
            raise ProtocolError(f"{payload.__class__.__name__} needs an explicit message type")
        if workflow_id is None:
            workflow_id = ""
            if message_type in ENVELOPE_WORKFLOW_TYPES:
                workflow_id = getattr(payload, "workflow_id", "")
        return cls(
            type=message_type,
            id=id if id is not None else new_message_id(),
            workflow_id=workflow_id,
            timestamp=timestamp if timestamp is not None else format_timestamp(),
            payload=payload.to_dict(),
        )

    def reply(self, payload: Payload, *, type: MessageType | None = None) -> Message:
        """A response correlated with this request: same id (``pong``, ``status_response``)."""
        return Message.create(payload, type=type, id=self.id)

    def typed_payload(self) -> Payload:
        """The payload as its typed class; raises ``ProtocolError`` on an ill-typed field."""
        if not isinstance(self.type, MessageType):
            raise ProtocolError(f"no payload schema for unknown message type {self.type!r}")
        return PAYLOAD_TYPES[self.type].from_dict(self.payload)

    def target_workflow_id(self) -> str:
        """The workflow a command addresses, with PROTOCOL.md's precedence rules.

        pause/resume/cancel prefer ``payload.workflow_id``; status and everything else prefer
        the envelope.
        """
        from_payload = self.payload.get("workflow_id")
        if not isinstance(from_payload, str):
            from_payload = ""
        if self.type in (MessageType.PAUSE, MessageType.RESUME, MessageType.CANCEL):
            return from_payload or self.workflow_id
        return self.workflow_id or from_payload


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"invalid JSON: {name} is not a JSON number")


# The scanner alone: ``JSONDecoder.decode`` adds a regex pass per call that costs more than
# scanning a small frame; ``decode`` checks the surrounding whitespace itself.
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder(parse_constant=_reject_constant)  # type: ignore[arg-type]
)
_JSON_SPACE = " \t\n\r"
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _make_to_json() -> Callable[[Any], str]:
    """``_encoder.encode``, minus the C encoder it builds for every call (a third of the time
    of encoding a small message): one C encoder per thread, made as ``JSONEncoder.iterencode``
    makes it, with its circular-reference check. The check's marker dict is per encoder, so
    per thread, and it is emptied after a failure (the C code leaves markers behind when it
    stops half-way). Interpreters without the ``_json`` accelerator keep ``_encoder.encode``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _encoder.encode

    def new_encoder(markers: dict[int, Any]) -> Callable[[Any, int], Sequence[str]]:
        encoder: Callable[[Any, int], Sequence[str]] = make(
            markers,
            _encoder.default,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            False,
            False,
            False,
        )
        return encoder

    try:
        sample = {"a": [1, 2.5, True, None, "\u00e9"], "b": {}}
        if "".join(new_encoder({})(sample, 0)) != _encoder.encode(sample):
            return _encoder.encode
    except Exception:  # an interpreter whose accelerator takes other arguments
        return _encoder.encode
    local = threading.local()

    def to_json(value: Any) -> str:
        try:
            iterencode, markers = local.encoder
        except AttributeError:
            markers = {}
            iterencode = new_encoder(markers)
            local.encoder = (iterencode, markers)
        try:
            return "".join(iterencode(value, 0))
        except BaseException:
            markers.clear()
            raise

    return to_json


_to_json = _make_to_json()


def decode(text: str | bytes) -> Message:
    """Parse one text frame into a ``Message``; raises ``ProtocolError`` saying what is wrong.

    Only the envelope is checked here. Unknown types decode (a receiver ignores them); payload
    fields are checked by ``Message.typed_payload()``. Every hub and client frame passes
    through here, so the common case (a ``str`` without surrounding whitespace, every envelope
    key well formed) takes the shortest path and anything else the careful one.
    """
    if type(text) is not str:
        text = _frame_text(text)
    try:
        data, end = _scan(text, 0)
    except StopIteration:
        data, end = _scan_spaced(text)
    except (ValueError, RecursionError) as exc:
        raise _json_error(exc) from None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ProtocolError(f"invalid JSON: extra data at char {end}")
    if type(data) is not dict:
        raise ProtocolError(f"a message must be a JSON object, got {_json_type(data)}")
    get = data.get
    message_id = get("id")
    if type(message_id) is not str:
        raise _envelope_error("id", message_id)
    message_type = get("type")
    if type(message_type) is not str or not message_type:
        raise _envelope_error("type", message_type)
    workflow_id = get("workflow_id", "")
    if type(workflow_id) is not str:
        workflow_id = _optional_envelope_string("workflow_id", workflow_id)
    timestamp = get("timestamp", "")
    if type(timestamp) is not str:
        timestamp = _optional_envelope_string("timestamp", timestamp)
    elif timestamp and (
        timestamp[:19] not in _known_seconds or _match_timestamp_tail(timestamp, 19) is None
    ):
        _learn_timestamp(timestamp)  # _check_timestamp, inlined for its fast path
    payload = get("payload")
    if type(payload) is not dict:
        if payload is not None:
            raise ProtocolError(f"envelope 'payload' must be an object, got {_json_type(payload)}")
        payload = {}
    # The frozen dataclass's __init__ sets five fields one object.__setattr__ at a time; one
    # dict does the same for half the cost. Field order and defaults are Message's own.
    message = _new_object(Message)
    _set_attribute(
        message,
        "__dict__",
        {
            "type": _TYPES_BY_VALUE.get(message_type, message_type),
            "id": message_id,
            "workflow_id": workflow_id,
            "timestamp": timestamp,
            "payload": payload,
        },
    )
    return message


_new_object = object.__new__
_set_attribute = object.__setattr__


def _frame_text(frame: object) -> str:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        try:
            return bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"frame is not UTF-8: {exc}") from None
    if isinstance(frame, str):  # a subclass of str: its characters, whatever its __str__ says
        return str.__str__(frame)
    raise ProtocolError(f"frame must be text, got {type(frame).__name__}")


def _scan_spaced(text: str) -> tuple[Any, int]:
    """The scan after leading whitespace (or of a frame that is not a JSON value at all)."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        return _scan(text, start)
    except StopIteration as exc:
        raise ProtocolError(f"invalid JSON: expecting a value at char {exc.value}") from None
    except (ValueError, RecursionError) as exc:
        raise _json_error(exc) from None


def _json_error(exc: ValueError | RecursionError) -> ProtocolError:
    if isinstance(exc, ProtocolError):  # from _reject_constant
        return exc
    if isinstance(exc, RecursionError):
        return ProtocolError("invalid JSON: nested too deeply")
    # JSONDecodeError, or e.g. an integer literal longer than int_max_str_digits.
    return ProtocolError(f"invalid JSON: {exc}")


def _optional_envelope_string(key: str, value: Any) -> str:
    if value is None:
        return ""
    raise ProtocolError(f"envelope {key!r} must be a string, got {_json_type(value)}")


def _envelope_error(key: str, value: Any) -> ProtocolError:
    if value is None:
        return ProtocolError(f"missing {key!r} in envelope")
    if value == "":
        return ProtocolError(f"envelope {key!r} is empty")
    return ProtocolError(f"envelope {key!r} must be a string, got {_json_type(value)}")


def encode(message: Message) -> str:
    """Serialise a message as one compact JSON text frame, omitting empty optional keys."""
    return encode_envelope(
        message.type, message.id, message.workflow_id, message.timestamp, message.payload
    )


def encode_envelope(
    message_type: MessageType | str,
    message_id: str,
    workflow_id: str,
    timestamp: str,
    payload: Mapping[str, Any],
) -> str:
    """``encode`` without a ``Message`` object, for senders that build many frames."""
    envelope: dict[str, Any] = {"id": message_id, "type": message_type}
    if workflow_id:
        envelope["workflow_id"] = workflow_id
    if timestamp:
        envelope["timestamp"] = timestamp
    if payload:
        envelope["payload"] = payload
    try:
        return _to_json(envelope)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"cannot encode {message_type} message: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"cannot encode {message_type} message: nested too deeply") from None
