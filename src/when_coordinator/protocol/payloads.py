"""Every payload of the protocol as one msgspec ``Struct`` (PROTOCOL.md section 4).

Each class is the whole schema of its wire shape: field order, wire names, types and the
omission rules. ``omit_defaults`` leaves out a key whose value is its default; a key that the
spec writes *always* has a ``default_factory`` instead, which msgspec never treats as "the
default" (an empty ``str()`` is still written). Go's nil slices and maps that the Go side writes
as ``null`` are ``| None`` (only ``capabilities``); Go's ``omitempty`` maps are omitted when
empty. Validation (types, ints that are never ``3.0``, enums) runs in msgspec's C code when a
frame is decoded; ``from_dict`` applies the same checks to a decoded JSON object.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, KeysView, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import msgspec

from .errors import PayloadError, ProtocolError
from .phases import Phase
from .timestamps import check_timestamp, check_timestamps

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
    "MessageType",
    "PausePayload",
    "Payload",
    "PhaseChangedPayload",
    "ProgressPayload",
    "RegisterPayload",
    "RegisteredPayload",
    "ResumePayload",
    "StatusPayload",
    "StatusResponsePayload",
    "WireLog",
    "WireStruct",
    "WorkflowCreatedPayload",
]


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


_LOG_LEVELS: dict[str, LogLevel] = {level.value: level for level in LogLevel}
# A "from" phase as given (a wire string, a Phase, "" or None) to what is stored.
_FROM_PHASES: dict[object, Phase | str] = {
    "": "",
    None: "",
    **{phase.value: phase for phase in Phase},
    **{phase: phase for phase in Phase},
}
_force_setattr = msgspec.structs.force_setattr

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

if TYPE_CHECKING:
    # What code may pass and read. msgspec reads the runtime aliases below instead: a level
    # given as a string and a "from" phase are normalised by ``__post_init__``.
    _Level = LogLevel | str
    _FromPhase = Phase | Literal[""] | None  # None is stored as ""
    _Capabilities = Sequence[str] | None
    _Logs = Sequence["LogEntry"]
else:
    _Level = LogLevel
    _FromPhase = str
    _Capabilities = tuple[str, ...] | None
    _Logs = tuple["LogEntry", ...]


# "Always" keys: a factory is never msgspec's default, so the key is written even when empty.
def _none() -> None:
    return None


def _version_1_0() -> str:
    return "1.0"


def _info() -> LogLevel:
    return LogLevel.INFO


def _first_phase() -> Literal[""]:
    return ""


def _pending() -> Phase:
    return Phase.PENDING


def _no_logs() -> tuple[LogEntry, ...]:
    return ()


_ALWAYS_STR: Any = msgspec.field(default_factory=str)
_ALWAYS_FALSE: Any = msgspec.field(default_factory=bool)
_ALWAYS_ZERO: Any = msgspec.field(default_factory=int)

_W = TypeVar("_W", bound="WireStruct")


class WireStruct(msgspec.Struct, frozen=True, omit_defaults=True):
    """Base of the wire shapes: immutable, and written with PROTOCOL.md's omission rules."""

    _NAME: ClassVar[str] = "payload"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object for the wire, with the omission rules applied.

        Values JSON has no type for are written as msgspec writes them (a ``datetime`` as
        RFC 3339, a ``set`` as an array...); one it cannot write is a ``ProtocolError``.
        """
        try:
            result: dict[str, Any] = msgspec.to_builtins(self)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"cannot encode {self._NAME}: {exc}") from None
        return result

    @classmethod
    def from_dict(cls: type[_W], data: Any) -> _W:
        """Validate a decoded JSON object; absent or null fields take their defaults."""
        if isinstance(data, cls):
            return data
        where = "log entry" if cls is LogEntry else f"{cls._NAME} payload"
        result: _W = convert(cls, data, where)
        return result

    # A read-only view by wire key, for code that reads a payload as the JSON object it is
    # (``payload["to"]``), as it reads the payload of a type it has no class for.
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> KeysView[str]:
        return self.to_dict().keys()

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


class LogEntry(WireStruct, frozen=True):
    """One log record as the hub stores it (PROTOCOL.md section 4, "A log entry")."""

    timestamp: str = _ALWAYS_STR
    level: _Level = msgspec.field(default_factory=_info)
    message: str = _ALWAYS_STR
    trace_id: str = ""
    span_id: str = ""
    workflow_id: str = ""
    action_id: str = ""
    correlation_id: str = ""
    fields: Mapping[str, Any] = msgspec.field(default_factory=dict)
    source_file: str = ""
    source_line: int = 0

    _NAME: ClassVar[str] = "log entry"

    def __post_init__(self) -> None:
        level = self.level
        if level.__class__ is LogLevel:
            return  # decoded, or made with a LogLevel: nothing to convert
        known = _LOG_LEVELS.get(level) if isinstance(level, str) else None
        if known is None:
            levels = ", ".join(level.value for level in LogLevel)
            raise ProtocolError(
                f"log entry field 'level': unknown log level {level!r} (one of {levels})"
            )
        msgspec.structs.force_setattr(self, "level", known)


def _unchecked(cls: type[msgspec.Struct], name: str, doc: str) -> type[msgspec.Struct]:
    """A Struct with ``cls``'s fields (names, wire names, order, defaults, so the same
    omissions) and no checks: made from ``cls``, so the schema is still written once."""
    spec = []
    for field in msgspec.structs.fields(cls):
        default = (
            msgspec.field(default_factory=field.default_factory, name=field.encode_name)
            if field.default_factory is not msgspec.NODEFAULT
            else msgspec.field(default=field.default, name=field.encode_name)
        )
        spec.append((field.name, field.type, default))

    def to_dict(self: msgspec.Struct) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result

    namespace = {"__doc__": doc, "to_dict": to_dict}
    return msgspec.defstruct(
        name, spec, omit_defaults=True, gc=False, module=__name__, namespace=namespace
    )


if TYPE_CHECKING:
    WireLog = LogEntry
else:
    WireLog = _unchecked(
        LogEntry,
        "WireLog",
        """``LogEntry`` without its checks, for entries made from trusted values: the log
        exporter makes one per SDK record on a thread that shares the GIL with the
        application's logging, positionally in C, with ``level`` as its wire text (a
        ``LogEntry`` converts and checks it in Python). Encodes as the ``LogEntry`` of the
        same values.""",
    )


class RegisterPayload(WireStruct, frozen=True, gc=False):
    service_name: str = _ALWAYS_STR
    service_id: str = ""
    instance_id: str = ""
    capabilities: _Capabilities = msgspec.field(default_factory=_none)
    version: str = ""
    protocol_version: str = msgspec.field(default_factory=_version_1_0)
    schema_version: int = 0

    TYPE: ClassVar[MessageType] = MessageType.REGISTER
    _NAME: ClassVar[str] = "register"

    def to_dict(self) -> dict[str, Any]:
        result = super().to_dict()
        if self.capabilities is not None:  # a JSON array reads back as a list
            result["capabilities"] = list(self.capabilities)
        return result

    def __post_init__(self) -> None:
        # Go writes no capabilities as null; a list given by code compares equal to a decoded one.
        capabilities = self.capabilities
        if (capabilities is not None and capabilities.__class__ is not tuple) or capabilities == ():
            msgspec.structs.force_setattr(self, "capabilities", tuple(capabilities or ()) or None)


class WorkflowCreatedPayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = _ALWAYS_STR
    parent_workflow_id: str = ""
    root_workflow_id: str = ""
    action_id: str = ""
    action_type: str = ""

    TYPE: ClassVar[MessageType] = MessageType.WORKFLOW_CREATED
    _NAME: ClassVar[str] = "workflow_created"


class PhaseChangedPayload(WireStruct, frozen=True, gc=False):
    """``from_phase`` is ``""`` for a workflow's first phase, as on the wire (None is accepted)."""

    workflow_id: str = ""
    from_phase: _FromPhase = msgspec.field(default_factory=_first_phase, name="from")
    to_phase: Phase = msgspec.field(default_factory=_pending, name="to")
    checkpoint_id: str = ""
    reason: str = ""

    TYPE: ClassVar[MessageType] = MessageType.PHASE_CHANGED
    _NAME: ClassVar[str] = "phase_changed"

    def __post_init__(self) -> None:
        # Run for every decoded phase_changed (msgspec reads "from" as a string): one lookup.
        source: object = self.from_phase
        try:
            known = _FROM_PHASES[source]
        except (KeyError, TypeError):  # TypeError: unhashable
            names = ", ".join(p.value for p in Phase)
            message = f"field 'from': unknown phase {source!r} (one of {names})"
            raise ProtocolError(message) from None
        if known is not source:
            _force_setattr(self, "from_phase", known)


class CheckpointPayload(WireStruct, frozen=True):
    workflow_id: str = _ALWAYS_STR
    checkpoint_id: str = _ALWAYS_STR
    reason: str = _ALWAYS_STR
    state: Mapping[str, Any] | None = None

    TYPE: ClassVar[MessageType] = MessageType.CHECKPOINT
    _NAME: ClassVar[str] = "checkpoint"

    def __post_init__(self) -> None:
        if self.state is not None and not self.state:  # Go omits an empty map: it reads as none
            msgspec.structs.force_setattr(self, "state", None)


class ErrorPayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""
    error: str = ""
    recoverable: bool = _ALWAYS_FALSE
    action_id: str = ""

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    _NAME: ClassVar[str] = "error"


class ProgressPayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""
    percent: int | float = _ALWAYS_ZERO
    action_id: str = ""
    stage: str = ""
    message: str = ""
    current_item: int = 0
    total_items: int = 0

    TYPE: ClassVar[MessageType] = MessageType.PROGRESS
    _NAME: ClassVar[str] = "progress"


class StatusResponsePayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = _ALWAYS_STR
    phase: Phase = msgspec.field(default_factory=_pending)
    progress: int | float = _ALWAYS_ZERO
    current_action: str = ""
    message: str = ""

    TYPE: ClassVar[MessageType] = MessageType.STATUS_RESPONSE
    _NAME: ClassVar[str] = "status_response"


class EmptyPayload(WireStruct, frozen=True, gc=False):
    """``ping`` and ``pong`` carry no payload."""

    _NAME: ClassVar[str] = "empty"


class LogBatchPayload(WireStruct, frozen=True):
    logs: _Logs = msgspec.field(default_factory=_no_logs)

    TYPE: ClassVar[MessageType] = MessageType.LOG_BATCH
    _NAME: ClassVar[str] = "log_batch"

    def to_dict(self) -> dict[str, Any]:
        return {"logs": [entry.to_dict() for entry in self.logs]}  # a JSON array: a list

    def __post_init__(self) -> None:
        if self.logs.__class__ is not tuple:  # a list given by code equals the decoded tuple
            msgspec.structs.force_setattr(self, "logs", tuple(self.logs))


class RegisteredPayload(WireStruct, frozen=True, gc=False):
    service_id: str = ""
    instance_id: str = ""
    message: str = ""
    protocol_version: str = ""
    hub_protocol_version: str = ""

    TYPE: ClassVar[MessageType] = MessageType.REGISTERED
    _NAME: ClassVar[str] = "registered"


class StatusPayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""

    TYPE: ClassVar[MessageType] = MessageType.STATUS
    _NAME: ClassVar[str] = "status"


class PausePayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""
    reason: str = ""

    TYPE: ClassVar[MessageType] = MessageType.PAUSE
    _NAME: ClassVar[str] = "pause"


class ResumePayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""
    from_checkpoint: str = ""

    TYPE: ClassVar[MessageType] = MessageType.RESUME
    _NAME: ClassVar[str] = "resume"


class CancelPayload(WireStruct, frozen=True, gc=False):
    workflow_id: str = ""
    reason: str = ""
    force: bool = False

    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    _NAME: ClassVar[str] = "cancel"


class LogPayload:
    """A single ``log``: the payload *is* one ``LogEntry``, its keys at the top level.

    Not a wire shape of its own (the entry is) but the type that says "a log message's
    payload", so that ``Message.typed_payload()`` has one class per message type. A plain
    class, not a Struct: the encoder's hook writes its ``entry`` in its place.
    """

    __slots__ = ("entry",)

    entry: LogEntry
    TYPE: ClassVar[MessageType] = MessageType.LOG
    _NAME: ClassVar[str] = "log"

    def __init__(self, entry: LogEntry | None = None) -> None:
        object.__setattr__(self, "entry", LogEntry() if entry is None else entry)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"LogPayload is immutable: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not LogPayload:
            return NotImplemented
        return self.entry == other.entry

    def __hash__(self) -> int:
        return hash((LogPayload, self.entry))

    def __repr__(self) -> str:
        return f"LogPayload({self.entry!r})"

    def __reduce__(self) -> tuple[type[LogPayload], tuple[LogEntry]]:
        return (LogPayload, (self.entry,))  # pickle and copy: through __init__, not setattr

    def to_dict(self) -> dict[str, Any]:
        return self.entry.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self.entry[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.entry.get(key, default)

    def keys(self) -> KeysView[str]:
        return self.entry.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.entry

    def __iter__(self) -> Iterator[str]:
        return iter(self.entry)

    def __len__(self) -> int:
        return len(self.entry)

    @classmethod
    def from_dict(cls, data: Any) -> LogPayload:
        if isinstance(data, cls):
            return data
        return cls(convert(LogEntry, data, "log payload"))


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


# --------------------------------------------------------------------------- checks


def check_payload_timestamps(payload: object, where: str) -> None:
    """The timestamps inside a decoded payload, in one call per payload.

    They are plain strings in the Structs (the wire text, kept whole): a pattern on the field
    would cost msgspec a Python call per entry, more than decoding the entry.
    """
    if payload.__class__ is LogPayload:
        payload = payload.entry
    if payload.__class__ is LogEntry:
        stamp = payload.timestamp
        if stamp:
            try:
                check_timestamp(stamp)
            except ProtocolError as exc:
                raise PayloadError(f"{where} field 'timestamp': {exc}") from None
    elif payload.__class__ is LogBatchPayload:
        logs = payload.logs
        bad = check_timestamps([entry.timestamp for entry in logs])
        if bad >= 0:
            try:
                check_timestamp(logs[bad].timestamp)
            except ProtocolError as exc:
                raise PayloadError(f"{where} field 'logs'[{bad}]['timestamp']: {exc}") from None


def _without_nulls(data: Mapping[str, Any]) -> dict[str, Any]:
    """A null the spec does not write reads as absent (Go's decoder reads it as zero)."""
    return {k: v for k, v in data.items() if v is not None or k == "capabilities"}


def convert(cls: type[Any], data: Any, where: str) -> Any:
    """``data``, a decoded JSON object, as ``cls``; or a ``ProtocolError`` naming the field.

    ``where`` starts the error message ("progress payload").
    """
    if cls is LogPayload:
        return LogPayload(convert(LogEntry, data, where))
    if not isinstance(data, Mapping):
        raise PayloadError(f"{where} must be an object, got {json_type(data)}")
    cleaned = _without_nulls(data)
    logs = cleaned.get("logs")
    if cls is LogBatchPayload and isinstance(logs, list):
        cleaned["logs"] = [_without_nulls(i) if isinstance(i, Mapping) else i for i in logs]
    try:
        result = msgspec.convert(cleaned, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise explain(exc, cls, where, cleaned) from None
    except RecursionError:
        raise PayloadError(f"{where}: nested too deeply") from None
    check_payload_timestamps(result, where)
    return result


def json_type(value: Any) -> str:
    """How an error message names a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


# Only for an error message: compiled (and cached by ``re``) at the first, not at import.
_ERROR = r"(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?"
_STEP = r"\.([^.\[]+)|\[(\d+)\]"
_EXPECTED = r"Expected `(?P<type>[^`]+)`, got `[^`]+`"
_KINDS = {
    "str": "a string",
    "int": "an integer",
    "bool": "a boolean",
    "int | float": "a number",
    "float": "a number",
    "object": "an object",
    "object | null": "an object",
    "array": "a list",
    "array | null": "a list of strings or null",
}


def explain(exc: msgspec.ValidationError, cls: type[Any], where: str, data: Any) -> PayloadError:
    """msgspec's error, reworded to name the payload, the field and the value it got."""
    match = re.fullmatch(_ERROR, str(exc), re.S)
    assert match is not None  # the pattern matches any text
    reason, path = match["reason"], match["path"] or ""
    value, leaf, first = data, cls, True
    for key, index in re.findall(_STEP, path):
        if key:
            where += f" field '{key}'" if first else f"['{key}']"
            first = False
            value = value.get(key) if isinstance(value, Mapping) else None
            leaf = _field_type(leaf, key)
        else:
            where += f"[{index}]"
            value = value[int(index)] if isinstance(value, list) else None
            leaf = _item_type(leaf)
    expected = re.fullmatch(_EXPECTED, reason)
    if expected is not None:
        kind = _KINDS.get(expected["type"], f"`{expected['type']}`")
        if leaf is Phase:
            kind = "a phase string"
        return PayloadError(f"{where} must be {kind}, got {json_type(value)}")
    if reason.startswith("Invalid enum value") and leaf in (Phase, LogLevel):
        choices = ", ".join(member.value for member in leaf)
        what = "phase" if leaf is Phase else "log level"
        return PayloadError(f"{where}: unknown {what} {value!r} (one of {choices})")
    return PayloadError(f"{where}: {reason}")


def _field_type(cls: Any, key: str) -> Any:
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        for info in msgspec.structs.fields(cls):
            if info.encode_name == key:
                return info.type
    return None


def _item_type(container: Any) -> Any:
    args = getattr(container, "__args__", ())
    return args[0] if args else None
