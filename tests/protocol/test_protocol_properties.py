"""Property tests: every message type survives encode and decode, and obeys section 4's rules.

The strategies build each typed payload from valid field values (unicode, empty strings, zeros,
optional fields absent). Two properties per frame: the payload comes back equal through
``typed_payload()``, and the JSON on the wire follows the omission rules, which are written out
here independently of the encoder's own field tables.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from when_coordinator.protocol import (
    CancelPayload,
    CheckpointPayload,
    EmptyPayload,
    ErrorPayload,
    LogBatchPayload,
    LogEntry,
    LogLevel,
    LogPayload,
    Message,
    MessageType,
    PausePayload,
    Payload,
    Phase,
    PhaseChangedPayload,
    ProgressPayload,
    ProtocolError,
    RegisteredPayload,
    RegisterPayload,
    ResumePayload,
    StatusPayload,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    decode,
    encode,
    new_message_id,
)

# ------------------------------------------------------------------ strategies

text = st.text(max_size=12)
go_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
numbers = st.one_of(
    st.integers(min_value=-(10**9), max_value=10**9),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | go_ints | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
phases = st.sampled_from(Phase)
timestamps = st.sampled_from(
    ["", "2026-11-26T22:41:47.502919837Z", "2026-01-02T03:04:05+01:00", "2024-02-29T23:59:59.5Z"]
)

log_entries = st.builds(
    LogEntry,
    timestamp=timestamps,
    level=st.sampled_from(LogLevel) | st.sampled_from([lv.value for lv in LogLevel]),
    message=text,
    trace_id=text,
    span_id=text,
    workflow_id=text,
    action_id=text,
    correlation_id=text,
    fields=json_objects,
    source_file=text,
    source_line=go_ints,
)

# ``()`` and ``{}`` are written as null / omitted and read back as None: generate the canonical
# form; the normalisation itself is checked in ``test_empty_containers_normalise``. A first
# phase given as None is written and read back as "" (``from_phase``'s wire value).
PAYLOADS: dict[MessageType, st.SearchStrategy[Payload]] = {
    MessageType.REGISTER: st.builds(
        RegisterPayload,
        service_name=text,
        service_id=text,
        instance_id=text,
        capabilities=st.none() | st.lists(text, min_size=1, max_size=4).map(tuple),
        version=text,
        protocol_version=text,
        schema_version=go_ints,
    ),
    MessageType.WORKFLOW_CREATED: st.builds(WorkflowCreatedPayload, text, text, text, text, text),
    MessageType.PHASE_CHANGED: st.builds(
        PhaseChangedPayload,
        workflow_id=text,
        from_phase=st.none() | phases,
        to_phase=phases,
        checkpoint_id=text,
        reason=text,
    ),
    MessageType.CHECKPOINT: st.builds(
        CheckpointPayload,
        workflow_id=text,
        checkpoint_id=text,
        reason=text,
        state=st.none() | st.dictionaries(text, json_values, min_size=1, max_size=4),
    ),
    MessageType.ERROR: st.builds(
        ErrorPayload, workflow_id=text, error=text, recoverable=st.booleans(), action_id=text
    ),
    MessageType.PROGRESS: st.builds(
        ProgressPayload,
        workflow_id=text,
        percent=numbers,
        action_id=text,
        stage=text,
        message=text,
        current_item=go_ints,
        total_items=go_ints,
    ),
    MessageType.STATUS_RESPONSE: st.builds(
        StatusResponsePayload,
        workflow_id=text,
        phase=phases,
        progress=numbers,
        current_action=text,
        message=text,
    ),
    MessageType.PONG: st.just(EmptyPayload()),
    MessageType.LOG: st.builds(LogPayload, entry=log_entries),
    MessageType.LOG_BATCH: st.builds(
        LogBatchPayload, logs=st.lists(log_entries, max_size=4).map(tuple)
    ),
    MessageType.REGISTERED: st.builds(RegisteredPayload, text, text, text, text, text),
    MessageType.PING: st.just(EmptyPayload()),
    MessageType.STATUS: st.builds(StatusPayload, workflow_id=text),
    MessageType.PAUSE: st.builds(PausePayload, workflow_id=text, reason=text),
    MessageType.RESUME: st.builds(ResumePayload, workflow_id=text, from_checkpoint=text),
    MessageType.CANCEL: st.builds(
        CancelPayload, workflow_id=text, reason=text, force=st.booleans()
    ),
}

# ------------------------------------------------------------------ the rules, written out

ENVELOPE_WORKFLOW = {
    "workflow_created",
    "phase_changed",
    "checkpoint",
    "error",
    "progress",
    "status_response",
    "status",
    "pause",
    "resume",
    "cancel",
}
"""Section 4: types whose envelope carries the workflow id (register, pong, logs never do)."""

ALWAYS: dict[str, set[str]] = {
    "register": {"service_name", "capabilities", "protocol_version"},
    "workflow_created": {"workflow_id"},
    "phase_changed": {"from", "to"},
    "checkpoint": {"workflow_id", "checkpoint_id", "reason"},
    "error": {"recoverable"},
    "progress": {"percent"},
    "status_response": {"workflow_id", "phase", "progress"},
    "pong": set(),
    "log": {"timestamp", "level", "message"},
    "log_batch": {"logs"},
    "registered": set(),
    "ping": set(),
    "status": set(),
    "pause": set(),
    "resume": set(),
    "cancel": set(),
}
"""Keys written even when empty."""

_LOG_OPTIONAL = [
    "trace_id",
    "span_id",
    "workflow_id",
    "action_id",
    "correlation_id",
    "fields",
    "source_file",
    "source_line",
]
OPTIONAL: dict[str, list[str]] = {
    "register": ["service_id", "instance_id", "version", "schema_version"],
    "workflow_created": ["parent_workflow_id", "root_workflow_id", "action_id", "action_type"],
    "phase_changed": ["workflow_id", "checkpoint_id", "reason"],
    "checkpoint": ["state"],
    "error": ["workflow_id", "error", "action_id"],
    "progress": ["workflow_id", "action_id", "stage", "message", "current_item", "total_items"],
    "status_response": ["current_action", "message"],
    "pong": [],
    "log": _LOG_OPTIONAL,
    "log_batch": [],
    "registered": [
        "service_id",
        "instance_id",
        "message",
        "protocol_version",
        "hub_protocol_version",
    ],
    "ping": [],
    "status": ["workflow_id"],
    "pause": ["workflow_id", "reason"],
    "resume": ["workflow_id", "from_checkpoint"],
    "cancel": ["workflow_id", "reason", "force"],
}
"""Keys omitted exactly when empty; the attribute has the key's name."""

INT_KEYS = {"schema_version", "current_item", "total_items", "source_line"}


def _check_object(type_: str, source: Any, wire: dict[str, Any]) -> None:
    """One payload object (or log entry) against the rules above."""
    assert ALWAYS[type_] <= wire.keys()
    assert wire.keys() <= ALWAYS[type_] | set(OPTIONAL[type_])
    for key in OPTIONAL[type_]:
        value = getattr(source, key)
        assert (key in wire) == bool(value), key
        if key in wire:
            assert wire[key] == value, key
    for key in INT_KEYS & wire.keys():
        assert type(wire[key]) is int, key


def _check_wire(type_: MessageType, payload: Payload, envelope: dict[str, Any]) -> None:
    name = type_.value
    wire = envelope.get("payload", {})
    assert ("payload" in envelope) == bool(wire)  # an empty payload object is never written
    workflow_id = getattr(payload, "workflow_id", "")
    if name in ENVELOPE_WORKFLOW and workflow_id:
        assert envelope["workflow_id"] == workflow_id
    else:
        assert "workflow_id" not in envelope
    if isinstance(payload, LogPayload):
        _check_object("log", payload.entry, wire)
        return
    _check_object(name, payload, wire)
    if isinstance(payload, RegisterPayload):
        assert wire["capabilities"] == (
            list(payload.capabilities) if payload.capabilities else None
        )
        assert wire["protocol_version"] == payload.protocol_version
    elif isinstance(payload, PhaseChangedPayload):
        assert wire["from"] == str(payload.from_phase)  # "" for the first phase
        assert wire["to"] == payload.to_phase.value
    elif isinstance(payload, StatusResponsePayload):
        assert wire["phase"] == payload.phase.value
        assert wire["progress"] == payload.progress
    elif isinstance(payload, ProgressPayload):
        assert wire["percent"] == payload.percent
    elif isinstance(payload, ErrorPayload):
        assert wire["recoverable"] is payload.recoverable
    elif isinstance(payload, LogBatchPayload):
        assert len(wire["logs"]) == len(payload.logs)
        for entry, item in zip(payload.logs, wire["logs"], strict=True):
            _check_object("log", entry, item)
            assert item["level"] == LogLevel(entry.level).value


# ------------------------------------------------------------------ properties

envelope_ids = st.builds(new_message_id) | text


@pytest.mark.parametrize("type_", list(MessageType), ids=str)
@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_every_type_round_trips(type_: MessageType, data: st.DataObject) -> None:
    payload = data.draw(PAYLOADS[type_], label="payload")
    message_id = data.draw(envelope_ids, label="id")
    stamp = data.draw(timestamps, label="timestamp")
    message = Message.create(payload, type=type_, id=message_id, timestamp=stamp)
    frame = encode(message)
    back = decode(frame)
    assert back == message
    assert back.type is type_
    assert back.typed_payload() == payload
    assert encode(back) == frame
    envelope = json.loads(frame)
    assert envelope["id"] == message_id
    assert ("timestamp" in envelope) == bool(stamp)
    _check_wire(type_, payload, envelope)


def test_strategies_cover_every_type() -> None:
    assert set(PAYLOADS) == set(MessageType)
    assert set(ALWAYS) == set(OPTIONAL) == {t.value for t in MessageType}


def test_empty_containers_normalise() -> None:
    """Empty and absent are the same on the wire, so they read back as the canonical empty."""
    register = RegisterPayload(service_name="s", capabilities=())
    assert decode(encode(Message.create(register))).typed_payload() == RegisterPayload("s")
    checkpoint = CheckpointPayload("w", "c", "r", state={})
    assert decode(encode(Message.create(checkpoint))).typed_payload() == CheckpointPayload(
        "w", "c", "r"
    )
    entry = LogEntry(level="warn", fields={})
    back = decode(encode(Message.create(LogPayload(entry)))).typed_payload()
    assert back == LogPayload(LogEntry(level=LogLevel.WARN))


# ------------------------------------------------------------------ robustness


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_decode_of_arbitrary_input_only_raises_protocol_error(frame: str | bytes) -> None:
    try:
        message = decode(frame)
    except ProtocolError:
        return
    assert isinstance(message.id, str)
    assert isinstance(message.type, str)
    assert message.type


_known_keys = sorted(
    {key for keys in ALWAYS.values() for key in keys}
    | {key for keys in OPTIONAL.values() for key in keys}
    | {"logs", "entry"}
)


@settings(max_examples=300, deadline=None)
@given(
    type_=st.sampled_from(MessageType),
    payload=st.dictionaries(
        st.sampled_from(_known_keys) | text,
        json_values | st.lists(json_objects | json_values, max_size=3),
        max_size=6,
    ),
)
def test_typed_payload_of_arbitrary_json_only_raises_protocol_error(
    type_: MessageType, payload: dict[str, Any]
) -> None:
    """A hostile hub can send any JSON; a consumer must only ever see ``ProtocolError``."""
    built = Message(type=type_, id="a", payload=payload)
    try:
        typed = decode(encode(built)).typed_payload()
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as caught:  # the same verdict without the wire
            built.typed_payload()
        assert str(caught.value) == str(exc)  # noqa: PT017 - two verdicts compared
        return
    # Whatever was accepted re-encodes to a frame that reads back to the same wire form.
    again = decode(encode(Message.create(typed, type=type_))).typed_payload()
    assert again.to_dict() == typed.to_dict()
