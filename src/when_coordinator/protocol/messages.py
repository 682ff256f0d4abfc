"""The message envelope, ``encode`` and ``decode`` (PROTOCOL.md sections 2 and 4).

Sans-I/O: nothing here opens a socket, starts a thread or keeps time on its own.

``decode`` reads a frame in one call into msgspec's C decoder: the envelope and the typed
payload of its type together (a tagged union on ``type``), so what a receiver gets is
validated and typed. A frame of a type this version does not know is read by a second C
decoder, of the bare envelope, with its payload as a plain object for the caller to ignore.
A frame both refuse goes through the careful path, which parses it again with ``json`` and
names the key and the value that are wrong; it also reads what the fast paths are strict
about but the spec allows (a ``null`` read as absent in a known type's payload, a number too
large for a float)."""

from __future__ import annotations

import functools
import json
import operator
import threading
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .errors import PayloadError, ProtocolError
from .ids import new_message_id
from .payloads import (
    ENVELOPE_WORKFLOW_TYPES,
    PAYLOAD_TYPES,
    CancelPayload,
    CheckpointPayload,
    EmptyPayload,
    ErrorPayload,
    LogBatchPayload,
    LogEntry,
    LogLevel,
    LogPayload,
    MessageType,
    PausePayload,
    Payload,
    PhaseChangedPayload,
    ProgressPayload,
    RegisteredPayload,
    RegisterPayload,
    ResumePayload,
    StatusPayload,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    check_payload_timestamps,
    convert,
    json_type,
)
from .timestamps import (
    _Z_SHAPES,
    _ZERO_DIGITS,
    _seconds_seen,
    all_timestamps,
    check_timestamp,
    format_timestamp,
    is_timestamp_seen,
    match_timestamp,
    parse_timestamp,
)

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
    "PayloadError",
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

_TYPES_BY_VALUE: dict[str, MessageType] = {t.value: t for t in MessageType}


class Message(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One protocol message: the envelope and its payload.

    ``type`` is a ``MessageType`` for known types and the raw string otherwise. ``payload`` is
    the typed payload (``typed_payload()`` names its class) for a decoded known type; the JSON
    object for an unknown type or when code builds a message from a dict. ``timestamp`` is
    the wire string (empty when absent), kept verbatim so a round trip loses no digits; a
    message built directly has none, ``Message.create`` stamps the current time.
    """

    id: str = msgspec.field(default_factory=new_message_id)
    type: MessageType | str
    workflow_id: str = ""
    timestamp: str = ""
    payload: Payload | Mapping[str, Any] = msgspec.field(default_factory=dict)

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
        """Build a message from a typed payload, with a fresh id and the current time.

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
            payload=payload,
        )

    def reply(self, payload: Payload, *, type: MessageType | None = None) -> Message:
        """A response correlated with this request: same id (``pong``, ``status_response``)."""
        return Message.create(payload, type=type, id=self.id)

    def typed_payload(self) -> Payload:
        """The payload as its typed class; raises ``ProtocolError`` on an ill-typed field.

        Free for a decoded message (decoding typed it); a payload given as a dict is checked
        here, as ``decode`` would have checked it.
        """
        message_type = self.type
        if not isinstance(message_type, MessageType):
            raise ProtocolError(f"no payload schema for unknown message type {message_type!r}")
        cls = PAYLOAD_TYPES[message_type]
        payload = self.payload
        if payload.__class__ is cls:
            return payload
        result: Payload = convert(cls, payload, f"{message_type.value} payload")
        return result

    def target_workflow_id(self) -> str:
        """The workflow a command addresses, with PROTOCOL.md's precedence rules.

        pause/resume/cancel prefer ``payload.workflow_id``; status and everything else prefer
        the envelope.
        """
        payload = self.payload
        if isinstance(payload, Mapping):
            from_payload = payload.get("workflow_id")
        else:
            from_payload = getattr(payload, "workflow_id", "")
        if not isinstance(from_payload, str):
            from_payload = ""
        if self.type in (MessageType.PAUSE, MessageType.RESUME, MessageType.CANCEL):
            return from_payload or self.workflow_id
        return self.workflow_id or from_payload


# --------------------------------------------------------------------------- encode


def _encode_hook(value: Any) -> Any:
    if value.__class__ is LogPayload:
        return value.entry  # a log message's payload is its entry, keys at the top level
    raise TypeError(f"a {type(value).__name__} is not JSON serializable")


_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)
_EMPTY_PAYLOAD_TAIL = b',"payload":{}}'


def encode(message: Message) -> str:
    """Serialise a message as one compact JSON text frame, omitting empty optional keys."""
    try:
        data = _encoder.encode(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {message.type} message: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"cannot encode {message.type} message: nested too deeply") from None
    if b"null" in data:
        _refuse_non_finite(message)
    if data.endswith(_EMPTY_PAYLOAD_TAIL):
        # A typed payload with nothing to write: the spec omits an empty payload. ``payload``
        # is the envelope's last field, so its empty object is exactly this tail.
        data = data[: -len(_EMPTY_PAYLOAD_TAIL)] + b"}"
    return data.decode("utf-8")


def _refuse_non_finite(message: Message) -> None:
    """msgspec writes NaN and infinities as null; JSON has no such numbers, and a value that
    silently became null is a lie, so they are refused as the ``json`` module refuses them.
    Checked only when the frame has a null at all, which almost no frame has."""
    try:
        json.dumps(msgspec.to_builtins(message, enc_hook=_encode_hook), allow_nan=False)
    except ValueError as exc:
        raise ProtocolError(f"cannot encode {message.type} message: {exc}") from None


def encode_envelope(
    message_type: MessageType | str,
    message_id: str,
    workflow_id: str,
    timestamp: str,
    payload: Payload | Mapping[str, Any],
) -> str:
    """``encode`` of a message given as its parts."""
    return encode(
        Message(
            type=message_type,
            id=message_id,
            workflow_id=workflow_id,
            timestamp=timestamp,
            payload=payload,
        )
    )


# --------------------------------------------------------------------------- decode


def _envelope_class(message_type: MessageType) -> type[msgspec.Struct]:
    """The decoding shape of one message type: the envelope around its payload Struct.

    An absent payload reads as the type's empty payload: one shared instance, as payloads are
    immutable (a fresh one for ``log``, whose entry holds a ``fields`` dict).
    """
    is_log = message_type is MessageType.LOG
    payload_type = LogEntry if is_log else PAYLOAD_TYPES[message_type]
    empty: Any = msgspec.field(default_factory=LogEntry) if is_log else payload_type()
    return msgspec.defstruct(
        f"_{message_type.name.title().replace('_', '')}Frame",
        [
            ("id", str),
            ("workflow_id", str, ""),
            ("timestamp", str, ""),
            ("payload", payload_type, empty),
        ],
        kw_only=True,
        gc=False,  # lives for one decode call: nothing refers to it, it is in no cycle
        tag_field="type",
        tag=message_type.value,
        module=__name__,
    )


_FRAME_TYPES: dict[type[msgspec.Struct], MessageType] = {}
"""The message type of each frame class; filled with the decoder, at the first ``decode``."""
_decoder_lock = threading.Lock()


def _build_decoders() -> None:
    """Build the frame classes and the decoders on first use: creating 17 classes and resolving
    every Struct's types is import time that a process which never decodes, a CLI call, need
    not pay."""
    global _decode_frame, _decode_any  # noqa: PLW0603 - set once, to the decoders' methods
    with _decoder_lock:
        if not _FRAME_TYPES:
            frames = {_envelope_class(message_type): message_type for message_type in MessageType}
            union = functools.reduce(operator.or_, frames)
            decoder = msgspec.json.Decoder(union)
            _decode_any = msgspec.json.Decoder(_any_frame_class()).decode
            _FRAME_TYPES.update(frames)  # before the decoder is published: decode reads both
            _decode_frame = decoder.decode


def _first_decode(text: str | bytes) -> Any:
    _build_decoders()
    return _decode_frame(text)


def _first_decode_any(text: str | bytes) -> Any:
    _build_decoders()
    return _decode_any(text)


_decode_frame: Callable[[str | bytes], Any] = _first_decode
_decode_any: Callable[[str | bytes], Any] = _first_decode_any
_LOG = MessageType.LOG
_LOG_BATCH = MessageType.LOG_BATCH
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, TypeError, RecursionError)
_astuple = msgspec.structs.astuple
# A log message's payload without LogPayload.__init__ (a Python call): the instance, then its
# slot set through the slot's own descriptor (LogPayload's __setattr__ refuses every write).
_new_log_payload = LogPayload.__new__
_set_log_entry: Callable[[LogPayload, LogEntry], None] = vars(LogPayload)["entry"].__set__


def decode(text: str | bytes) -> Message:
    """Parse one text frame into a ``Message``; raises ``ProtocolError`` saying what is wrong.

    Unknown types decode (a receiver ignores them), with the payload as a plain object.
    """
    # The hot path of every receiver: locals and module constants only (an Enum's attribute
    # lookup runs Python code), and each timestamp checked in C where it can be. A string
    # msgspec decoded is valid UTF-8, so ``encode()`` cannot fail and is the cheapest encoding;
    # a non-ASCII character becomes bytes of 0x80 and above, which no shape has.
    try:
        frame: Any = _decode_frame(text)
    except msgspec.ValidationError:  # valid JSON: a type this version does not know, or a fault
        return _decode_unknown(text)
    except _DECODE_ERRORS:
        return _decode_carefully(text)
    # One C call for the fields (a Struct's attribute is a generic lookup each), and the type
    # by the frame's class (type() of one argument is a fast path of the interpreter).
    message_type = _FRAME_TYPES[type(frame)]
    message_id, workflow_id, timestamp, payload = _astuple(frame)
    if message_type is _LOG_BATCH:
        logs = payload.logs
        if len(logs) > _FEW_LOGS:
            if not all_timestamps([timestamp, *[entry.timestamp for entry in logs]]):
                _check_timestamps(timestamp, payload, "log_batch payload")
        elif not _all_seen([timestamp, *[entry.timestamp for entry in logs]]):
            _check_timestamps(timestamp, payload, "log_batch payload")
    elif message_type is _LOG:
        stamp = payload.timestamp
        if not (
            timestamp[:19] in _seconds_seen
            and stamp[:19] in _seconds_seen
            and timestamp.encode().translate(_ZERO_DIGITS) in _Z_SHAPES
            and stamp.encode().translate(_ZERO_DIGITS) in _Z_SHAPES
        ) and not (is_timestamp_seen(timestamp) and is_timestamp_seen(stamp)):
            _check_timestamps(timestamp, payload, "log payload")
        entry = payload
        payload = _new_log_payload(LogPayload)
        _set_log_entry(payload, entry)
    elif not (
        # is_timestamp_seen's first test, inline: a Python call is a third of its cost
        timestamp[:19] in _seconds_seen and timestamp.encode().translate(_ZERO_DIGITS) in _Z_SHAPES
    ) and not is_timestamp_seen(timestamp):
        raise ProtocolError(f"envelope 'timestamp': {_not_rfc3339(timestamp)}")
    return Message(
        id=message_id,
        type=message_type,
        workflow_id=workflow_id,
        timestamp=timestamp,
        payload=payload,
    )


_FEW_LOGS = 4
"""Up to this many entries, a batch's timestamps are checked one by one against the seconds
already seen; past it, ``all_timestamps`` (a fixed cost of about four single checks) is cheaper."""


def _all_seen(stamps: list[str]) -> bool:
    """``is_timestamp_seen`` of every one of ``stamps``, its first test inline."""
    for stamp in stamps:
        if not (
            stamp[:19] in _seconds_seen and stamp.encode().translate(_ZERO_DIGITS) in _Z_SHAPES
        ) and not is_timestamp_seen(stamp):
            return False
    return True


def _any_frame_class() -> type[msgspec.Struct]:
    """The envelope of any type, its payload a plain object: how an unknown type is read.

    ``null`` reads as absent, as in the careful path; what this refuses, the careful path
    explains.
    """
    return msgspec.defstruct(
        "_AnyFrame",
        [
            ("id", str),
            ("type", str),
            ("workflow_id", str | None, None),
            ("timestamp", str | None, None),
            ("payload", dict[str, Any] | None, None),
        ],
        gc=False,
        module=__name__,
    )


def _decode_unknown(text: str | bytes) -> Message:
    """A frame that is JSON but fits no known type: a type this version does not know decodes
    here, in C, with the result the careful path gives it; anything else goes there."""
    try:
        frame = _decode_any(text)
    except _DECODE_ERRORS:
        return _decode_carefully(text)
    type_name = frame.type
    timestamp = frame.timestamp or ""
    if not type_name or type_name in _TYPES_BY_VALUE or not is_timestamp_seen(timestamp):
        return _decode_carefully(text)  # a known type with a fault, or a bad timestamp: explained
    payload = frame.payload
    return Message(
        id=frame.id,
        type=type_name,
        workflow_id=frame.workflow_id or "",
        timestamp=timestamp,
        payload={} if payload is None else payload,
    )


def _check_timestamps(timestamp: str, payload: object, where: str) -> None:
    """The exact check, one timestamp at a time, after ``all_timestamps`` said no: it finds
    the wrong one and says why (or finds none: a leap second, an empty one)."""
    if match_timestamp(timestamp) is None:
        raise ProtocolError(f"envelope 'timestamp': {_not_rfc3339(timestamp)}")
    check_payload_timestamps(payload, where)


def _not_rfc3339(timestamp: str) -> str:
    try:
        check_timestamp(timestamp)
    except ProtocolError as exc:
        return str(exc)
    return f"timestamp {timestamp!r} is not valid"  # not reached: is_timestamp said no


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"invalid JSON: {name} is not a JSON number")


_parse = json.JSONDecoder(parse_constant=_reject_constant).decode


def _decode_carefully(text: object) -> Message:
    """Decode a frame the fast path refused: read what the spec allows, explain the rest."""
    source = _frame_text(text)
    try:
        data = _parse(source)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc.msg.lower()} (char {exc.pos})") from None
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than int_max_str_digits
        raise ProtocolError(f"invalid JSON: {exc}") from None
    if type(data) is not dict:
        raise ProtocolError(f"a message must be a JSON object, got {json_type(data)}")
    message_id = data.get("id")
    if type(message_id) is not str:
        raise _envelope_error("id", message_id)
    type_name = data.get("type")
    if type(type_name) is not str or not type_name:
        raise _envelope_error("type", type_name)
    workflow_id = _optional_string(data, "workflow_id")
    timestamp = _optional_string(data, "timestamp")
    if timestamp:
        try:
            check_timestamp(timestamp)
        except ProtocolError as exc:
            raise ProtocolError(f"envelope 'timestamp': {exc}") from None
    payload = data.get("payload")
    if payload is None:
        payload = {}
    elif type(payload) is not dict:
        raise ProtocolError(f"envelope 'payload' must be an object, got {json_type(payload)}")
    message_type = _TYPES_BY_VALUE.get(type_name)
    typed: Payload | dict[str, Any] = payload
    if message_type is not None:
        typed = convert(PAYLOAD_TYPES[message_type], payload, f"{type_name} payload")
    return Message(
        id=message_id,
        type=message_type or type_name,
        workflow_id=workflow_id,
        timestamp=timestamp,
        payload=typed,
    )


def _frame_text(frame: object) -> str:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        try:
            return bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"frame is not UTF-8: {exc}") from None
    if isinstance(frame, str):  # a subclass of str: its characters, whatever its __str__ says
        return str.__str__(frame)
    raise ProtocolError(f"frame must be text, got {type(frame).__name__}")


def _optional_string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise ProtocolError(f"envelope {key!r} must be a string, got {json_type(value)}")
    return value


def _envelope_error(key: str, value: Any) -> ProtocolError:
    if value is None:
        return ProtocolError(f"missing {key!r} in envelope")
    if value == "":
        return ProtocolError(f"envelope {key!r} is empty")
    return ProtocolError(f"envelope {key!r} must be a string, got {json_type(value)}")
