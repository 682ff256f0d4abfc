"""Concrete wire shapes (PROTOCOL.md sections 2 and 4), message ids and timestamps.

The expected JSON is written out by hand from the spec, so a change in the encoder that a hub
would notice fails here even if encode and decode still agree with each other.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import threading
import time
from datetime import datetime, timedelta, timezone
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
    format_timestamp,
    new_message_id,
    parse_timestamp,
)

TS = "2026-11-26T22:41:47.502919837Z"
ID_SHAPE = re.compile(r"^msg-[a-z0-9]{12}-\d{1,6}$")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _wire(payload: Payload, type_: MessageType | None = None) -> dict[str, Any]:
    """The decoded JSON object of the frame ``payload`` becomes."""
    message = Message.create(payload, type=type_, id="msg-x", timestamp=TS)
    result: dict[str, Any] = json.loads(encode(message))
    return result


# ------------------------------------------------------------------ omission rules, by type


def test_register_minimal() -> None:
    assert _wire(RegisterPayload(service_name="svc")) == {
        "id": "msg-x",
        "type": "register",
        "timestamp": TS,
        "payload": {"service_name": "svc", "capabilities": None, "protocol_version": "1.0"},
    }


def test_register_full_keeps_schema_version_an_int() -> None:
    wire = _wire(
        RegisterPayload(
            service_name="svc",
            service_id="id",
            instance_id="i",
            capabilities=("a", "b"),
            version="1",
            protocol_version="1.1",
            schema_version=3,
        )
    )
    assert "workflow_id" not in wire
    assert wire["payload"] == {
        "service_name": "svc",
        "service_id": "id",
        "instance_id": "i",
        "capabilities": ["a", "b"],
        "version": "1",
        "protocol_version": "1.1",
        "schema_version": 3,
    }
    assert type(wire["payload"]["schema_version"]) is int


@pytest.mark.parametrize("empty", [None, (), []])
def test_register_capabilities_are_null_when_empty(empty: Any) -> None:
    payload = _wire(RegisterPayload(service_name="", capabilities=empty))["payload"]
    assert "capabilities" in payload
    assert payload["capabilities"] is None
    assert payload["service_name"] == ""  # always present, even empty


def test_register_with_empty_service_name_still_sends_it() -> None:
    assert _wire(RegisterPayload())["payload"]["service_name"] == ""


def test_workflow_created() -> None:
    assert _wire(WorkflowCreatedPayload(workflow_id="wf")) == {
        "id": "msg-x",
        "type": "workflow_created",
        "workflow_id": "wf",
        "timestamp": TS,
        "payload": {"workflow_id": "wf"},
    }
    full = WorkflowCreatedPayload("wf-2", "wf-1", "wf-0", "act", "ETL")
    assert _wire(full)["payload"] == {
        "workflow_id": "wf-2",
        "parent_workflow_id": "wf-1",
        "root_workflow_id": "wf-0",
        "action_id": "act",
        "action_type": "ETL",
    }


def test_phase_changed_first_phase_has_empty_from() -> None:
    wire = _wire(PhaseChangedPayload(workflow_id="wf", to_phase=Phase.PENDING))
    assert wire["workflow_id"] == "wf"
    assert wire["payload"] == {"workflow_id": "wf", "from": "", "to": "pending"}


def test_phase_changed_full() -> None:
    payload = PhaseChangedPayload("wf", Phase.PAUSING, Phase.PAUSED, "cp-1", "operator pause")
    assert _wire(payload)["payload"] == {
        "workflow_id": "wf",
        "from": "pausing",
        "to": "paused",
        "checkpoint_id": "cp-1",
        "reason": "operator pause",
    }
    assert decode(encode(Message.create(payload))).typed_payload() == payload


def test_checkpoint_keeps_its_three_keys_even_empty() -> None:
    assert _wire(CheckpointPayload())["payload"] == {
        "workflow_id": "",
        "checkpoint_id": "",
        "reason": "",
    }
    assert _wire(CheckpointPayload("w", "c", "r", {"k": [1]}))["payload"]["state"] == {"k": [1]}


def test_error_recoverable_is_always_present() -> None:
    assert _wire(ErrorPayload(workflow_id="w", error="boom"))["payload"] == {
        "workflow_id": "w",
        "error": "boom",
        "recoverable": False,
    }
    assert _wire(ErrorPayload(recoverable=True, action_id="a"))["payload"] == {
        "recoverable": True,
        "action_id": "a",
    }


def test_progress_percent_is_always_present_and_counts_are_ints() -> None:
    assert _wire(ProgressPayload(workflow_id="w"))["payload"] == {"workflow_id": "w", "percent": 0}
    payload = _wire(ProgressPayload("w", 12.5, "a", "load", "m", current_item=3, total_items=10))[
        "payload"
    ]
    assert payload == {
        "workflow_id": "w",
        "percent": 12.5,
        "action_id": "a",
        "stage": "load",
        "message": "m",
        "current_item": 3,
        "total_items": 10,
    }
    assert type(payload["current_item"]) is int
    assert type(payload["total_items"]) is int


def test_whole_percent_is_written_as_the_reference_writes_it() -> None:
    assert '"percent":50,' in encode(Message.create(ProgressPayload("w", 50, stage="s")))


def test_status_response_keeps_phase_and_progress() -> None:
    assert _wire(StatusResponsePayload())["payload"] == {
        "workflow_id": "",
        "phase": "pending",
        "progress": 0,
    }
    full = StatusResponsePayload("w", Phase.EXECUTION, 25.5, "extract", "ok")
    assert _wire(full)["payload"] == {
        "workflow_id": "w",
        "phase": "execution",
        "progress": 25.5,
        "current_action": "extract",
        "message": "ok",
    }


@pytest.mark.parametrize("type_", [MessageType.PING, MessageType.PONG])
def test_ping_and_pong_have_no_payload(type_: MessageType) -> None:
    assert _wire(EmptyPayload(), type_) == {"id": "msg-x", "type": type_.value, "timestamp": TS}


def test_log_puts_the_entry_keys_at_the_top_of_the_payload() -> None:
    entry = LogEntry(timestamp=TS, level=LogLevel.WARN, message="m", workflow_id="wf")
    wire = _wire(LogPayload(entry))
    assert "workflow_id" not in wire  # never on the envelope of a log
    assert wire["payload"] == {
        "timestamp": TS,
        "level": "warn",
        "message": "m",
        "workflow_id": "wf",
    }


def test_log_entry_omits_empty_keys_and_keeps_the_three_required() -> None:
    assert LogEntry().to_dict() == {"timestamp": "", "level": "info", "message": ""}
    full = LogEntry(TS, "error", "m", "t", "s", "w", "a", "c", {"k": 1}, "f.py", 7)
    assert full.to_dict() == {
        "timestamp": TS,
        "level": "error",
        "message": "m",
        "trace_id": "t",
        "span_id": "s",
        "workflow_id": "w",
        "action_id": "a",
        "correlation_id": "c",
        "fields": {"k": 1},
        "source_file": "f.py",
        "source_line": 7,
    }
    assert full.level is LogLevel.ERROR


def test_log_batch() -> None:
    entries = (LogEntry(TS, "debug", "a", workflow_id="w"), LogEntry(TS, "fatal", "b"))
    wire = _wire(LogBatchPayload(entries))
    assert "workflow_id" not in wire
    assert wire["payload"] == {
        "logs": [
            {"timestamp": TS, "level": "debug", "message": "a", "workflow_id": "w"},
            {"timestamp": TS, "level": "fatal", "message": "b"},
        ]
    }
    assert _wire(LogBatchPayload())["payload"] == {"logs": []}


def test_hub_commands() -> None:
    assert _wire(RegisteredPayload(service_id="s", hub_protocol_version="1.1"))["payload"] == {
        "service_id": "s",
        "hub_protocol_version": "1.1",
    }
    assert _wire(StatusPayload("w")) == {
        "id": "msg-x",
        "type": "status",
        "workflow_id": "w",
        "timestamp": TS,
        "payload": {"workflow_id": "w"},
    }
    resume = _wire(ResumePayload("w", "cp"))["payload"]
    assert resume == {"workflow_id": "w", "from_checkpoint": "cp"}
    assert _wire(CancelPayload("w", "r"))["payload"] == {"workflow_id": "w", "reason": "r"}
    assert _wire(CancelPayload("w", force=True))["payload"] == {"workflow_id": "w", "force": True}


# ------------------------------------------------------------------ the envelope


def test_envelope_workflow_id_is_omitted_when_empty() -> None:
    wire = _wire(ProgressPayload(percent=1))
    assert "workflow_id" not in wire
    assert decode(json.dumps(wire)).workflow_id == ""


def test_explicit_envelope_workflow_id_wins() -> None:
    message = Message.create(StatusPayload(), workflow_id="wf-env")
    assert message.workflow_id == "wf-env"
    assert message.payload == StatusPayload()
    assert json.loads(encode(message)).keys() == {"id", "type", "workflow_id", "timestamp"}


def test_create_fills_a_fresh_id_and_a_current_timestamp() -> None:
    before = time.time_ns() // 1000
    message = Message.create(ProgressPayload("w", 1))
    after = time.time_ns() // 1000
    assert ID_SHAPE.match(message.id)
    stamp = parse_timestamp(message.timestamp)
    assert before <= (stamp - EPOCH) // timedelta(microseconds=1) <= after
    assert message.id != Message.create(ProgressPayload("w", 1)).id


def test_reply_reuses_the_request_id() -> None:
    ping = decode('{"id":"hub-2","type":"ping"}')
    pong = ping.reply(EmptyPayload(), type=MessageType.PONG)
    assert (pong.id, pong.type, pong.workflow_id) == ("hub-2", MessageType.PONG, "")
    status = decode('{"id":"hub-3","type":"status","workflow_id":"wf-1"}')
    response = status.reply(StatusResponsePayload("wf-1", Phase.EXECUTION, 25.5))
    assert (response.id, response.type, response.workflow_id) == (
        "hub-3",
        MessageType.STATUS_RESPONSE,
        "wf-1",
    )


@pytest.mark.parametrize(
    ("frame", "target"),
    [
        ('{"id":"a","type":"pause","workflow_id":"env","payload":{"workflow_id":"pl"}}', "pl"),
        ('{"id":"a","type":"resume","workflow_id":"env","payload":{"workflow_id":"pl"}}', "pl"),
        ('{"id":"a","type":"cancel","workflow_id":"env","payload":{"workflow_id":"pl"}}', "pl"),
        ('{"id":"a","type":"cancel","workflow_id":"env","payload":{"reason":"r"}}', "env"),
        ('{"id":"a","type":"status","workflow_id":"env","payload":{"workflow_id":"pl"}}', "env"),
        ('{"id":"a","type":"status","payload":{"workflow_id":"pl"}}', "pl"),
    ],
)
def test_command_target_precedence(frame: str, target: str) -> None:
    """Section 4: pause/resume/cancel prefer the payload, status the envelope."""
    assert decode(frame).target_workflow_id() == target


def test_command_target_of_an_untyped_payload_ignores_a_non_string() -> None:
    message = Message(type=MessageType.PAUSE, workflow_id="env", payload={"workflow_id": 7})
    assert message.target_workflow_id() == "env"
    assert Message(type="pause_v2", payload={"workflow_id": 7}).target_workflow_id() == ""


def test_type_and_phase_strings_encode_as_plain_strings() -> None:
    frame = encode(Message.create(PhaseChangedPayload("w", Phase.PAUSED, Phase.RESUMING)))
    assert '"type":"phase_changed"' in frame
    assert '"from":"paused","to":"resuming"' in frame
    assert " " not in frame.replace("T", "")  # compact separators


def test_unicode_survives_encoding() -> None:
    text = 'caf\u00e9 \u2603 \U0001f600 \u0000 "quoted" \\ <&>'
    message = Message.create(ProgressPayload("wf-\u00e9", 1, message=text))
    again = decode(encode(message))
    assert isinstance(again.payload, ProgressPayload)
    assert again.payload.message == text
    assert again.workflow_id == "wf-\u00e9"


def test_message_objects_are_immutable() -> None:
    message = Message.create(ProgressPayload("w", 1))
    with pytest.raises(AttributeError):
        message.id = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ProgressPayload().percent = 5  # type: ignore[misc]


def test_bad_log_level_in_python_code_is_refused() -> None:
    with pytest.raises(ProtocolError, match="'level'"):
        LogEntry(level="trace")


# ------------------------------------------------------------------ message ids


def test_ids_have_the_reference_shape_and_are_unique() -> None:
    ids = [new_message_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    for message_id in ids:
        assert ID_SHAPE.match(message_id), message_id
        assert int(message_id.rsplit("-", 1)[1]) <= 999_999
    # 12 random characters: every allowed character class appears in 100k ids.
    letters = "".join(i[4:16] for i in ids)
    assert any(c.isdigit() for c in letters)
    assert any(c.isalpha() for c in letters)


def test_id_counter_wraps_below_a_million() -> None:
    """The suffix must stay within 0..999999 for ever, so it has to wrap, not grow."""
    previous = int(new_message_id().rsplit("-", 1)[1])
    for _ in range(1_000_001):
        suffix = int(new_message_id().rsplit("-", 1)[1])
        assert suffix <= 999_999
        if suffix < previous:
            assert suffix == 0
            return
        previous = suffix
    pytest.fail("the id suffix never wrapped in a million ids")


def test_ids_are_unique_across_threads() -> None:
    threads_count, per_thread = 8, 20_000
    barrier = threading.Barrier(threads_count)
    results: list[list[str]] = [[] for _ in range(threads_count)]

    def draw(out: list[str]) -> None:
        barrier.wait(timeout=10)
        out.extend(new_message_id() for _ in range(per_thread))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    everything = [i for out in results for i in out]
    assert len(everything) == threads_count * per_thread
    assert len(set(everything)) == len(everything)
    assert all(ID_SHAPE.match(i) for i in everything)


# ------------------------------------------------------------------ timestamps

MAX_NS = (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc) - EPOCH) // timedelta(
    microseconds=1
) * 1000 + 999_999_999


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_NS))
def test_format_timestamp_is_rfc3339_utc_with_nanoseconds(time_ns: int) -> None:
    text = format_timestamp(time_ns)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", text), text
    assert int(text[20:29]) == time_ns % 1_000_000_000
    assert parse_timestamp(text) == EPOCH + timedelta(microseconds=time_ns // 1000)


def test_format_timestamp_alternating_seconds() -> None:
    """The formatter caches the seconds part; alternating seconds must not reuse it wrongly."""
    second = 1_700_000_000 * 10**9
    for ns in (second, second + 10**9 + 1, second + 5, second + 2 * 10**9):
        assert parse_timestamp(format_timestamp(ns)) == EPOCH + timedelta(microseconds=ns // 1000)


def test_format_timestamp_defaults_to_now() -> None:
    before = time.time_ns() // 1000
    stamp = parse_timestamp(format_timestamp())
    after = time.time_ns() // 1000
    assert before <= (stamp - EPOCH) // timedelta(microseconds=1) <= after


@st.composite
def _rfc3339(draw: st.DrawFn) -> tuple[str, datetime]:
    """A valid RFC 3339 string with 0-9 fraction digits and any offset, and its meaning."""
    when = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = draw(st.text("0123456789", min_size=digits, max_size=digits))
    offset_minutes = draw(st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1))
    use_z = draw(st.booleans())
    if use_z:
        suffix, tz = draw(st.sampled_from(["Z", "z"])), timezone.utc
    else:
        sign = "-" if offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(offset_minutes), 60)
        suffix, tz = f"{sign}{hours:02d}:{minutes:02d}", timezone(timedelta(minutes=offset_minutes))
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
        f"{'.' + fraction if fraction else ''}{suffix}"
    )
    micros = int(fraction[:6].ljust(6, "0"))
    return text, when.replace(microsecond=micros, tzinfo=tz)


@settings(max_examples=500, deadline=None)
@given(_rfc3339())
def test_parse_timestamp_reads_any_valid_form(case: tuple[str, datetime]) -> None:
    text, expected = case
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert decode(json.dumps({"id": "a", "type": "ping", "timestamp": text})).timestamp == text


def test_messages_and_payloads_survive_pickling() -> None:
    """Process pools and copies carry them: ``LogPayload`` is not a Struct, and immutable."""
    entry = LogEntry(TS, LogLevel.WARN, "m", fields={"k": [1]})
    for payload in (LogPayload(entry), PhaseChangedPayload("w", None, Phase.PENDING)):
        message = decode(encode(Message.create(payload)))
        assert pickle.loads(pickle.dumps(message)) == message
        assert copy.deepcopy(message.payload) == payload
    with pytest.raises(AttributeError):
        LogPayload(entry).entry = entry
