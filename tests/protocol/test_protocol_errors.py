"""Bad input gets a ``ProtocolError`` whose message names what is wrong, and nothing else.

A receiver drops and logs such frames (PROTOCOL.md section 4), so the message is all an operator
gets: each case checks that it names the offending key or construct. Valid edge cases sit beside
them so that the checks cannot pass by rejecting everything.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import pytest

from when_coordinator.protocol import (
    EmptyPayload,
    Message,
    MessageType,
    PausePayload,
    PayloadError,
    ProgressPayload,
    ProtocolError,
    decode,
    encode,
    parse_timestamp,
)

GOOD_TS = "2026-11-26T22:41:47.502919837Z"


def _frame(**envelope: Any) -> str:
    base: dict[str, Any] = {"id": "msg-abc", "type": "progress", "timestamp": GOOD_TS}
    base.update(envelope)
    return json.dumps(base)


# ------------------------------------------------------------------ frames decode rejects

BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("empty", "", "invalid JSON"),
    ("only-space", "  \n ", "invalid JSON"),
    ("not-json", "{id: 1}", "invalid JSON"),
    ("truncated", '{"id":"a","type":"ping"', "invalid JSON"),
    ("nan", '{"id":"a","type":"progress","payload":{"percent":NaN}}', "NaN"),
    ("infinity", '{"id":"a","type":"progress","payload":{"percent":Infinity}}', "Infinity"),
    ("minus-infinity", '{"id":"a","type":"x","payload":{"p":-Infinity}}', "-Infinity"),
    ("trailing-garbage", '{"id":"a","type":"ping"} x', "extra data"),
    ("two-objects", '{"id":"a","type":"ping"}{"id":"b","type":"ping"}', "extra data"),
    ("huge-int", '{"id":"a","type":"x","payload":{"n":' + "9" * 5000 + "}}", "invalid JSON"),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("top-list", '[{"id":"a","type":"ping"}]', "JSON object, got array"),
    ("top-string", '"ping"', "JSON object, got string"),
    ("top-number", "42", "JSON object, got number 42"),
    ("top-null", "null", "JSON object, got null"),
    ("top-bool", "true", "JSON object, got boolean"),
    ("missing-id", '{"type":"ping"}', "missing 'id'"),
    ("null-id", '{"id":null,"type":"ping"}', "missing 'id'"),
    ("int-id", '{"id":7,"type":"ping"}', "'id' must be a string, got number 7"),
    ("missing-type", '{"id":"a"}', "missing 'type'"),
    ("empty-type", '{"id":"a","type":""}', "'type' is empty"),
    ("list-type", '{"id":"a","type":["ping"]}', "'type' must be a string, got array"),
    ("int-workflow-id", '{"id":"a","type":"ping","workflow_id":3}', "'workflow_id' must be"),
    ("obj-workflow-id", '{"id":"a","type":"ping","workflow_id":{}}', "'workflow_id' must be"),
    ("int-timestamp", '{"id":"a","type":"ping","timestamp":17}', "'timestamp' must be a string"),
    ("list-payload", '{"id":"a","type":"ping","payload":[]}', "'payload' must be an object"),
    ("str-payload", '{"id":"a","type":"ping","payload":"x"}', "'payload' must be an object"),
    ("not-utf8", b'{"id":"a","type":"ping","workflow_id":"\xff\xfe"}', "not UTF-8"),
    ("latin1", '{"id":"a","type":"ping","workflow_id":"caf\xe9"}'.encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize(
    ("frame", "expected"), [(f, e) for _, f, e in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES]
)
def test_bad_frame_is_rejected_with_a_clear_message(frame: str | bytes, expected: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert expected in str(caught.value)


def test_non_text_input_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="frame must be text, got int"):
        decode(42)  # type: ignore[arg-type]


BAD_TIMESTAMPS = [
    ("date-only", "2026-11-26"),
    ("no-offset", "2026-11-26T22:41:47"),
    ("slashes", "2026/11/26T22:41:47Z"),
    ("short-year", "26-11-26T22:41:47Z"),
    ("month-13", "2026-13-01T00:00:00Z"),
    ("month-00", "2026-00-01T00:00:00Z"),
    ("feb-30", "2026-02-30T00:00:00Z"),
    ("feb-29-not-leap", "2025-02-29T00:00:00Z"),
    ("apr-31", "2026-04-31T00:00:00Z"),
    ("hour-24", "2026-01-01T24:00:00Z"),
    ("minute-60", "2026-01-01T00:60:00Z"),
    ("ten-digits", "2026-01-01T00:00:00.1234567890Z"),
    ("empty-fraction", "2026-01-01T00:00:00.Z"),
    ("offset-24", "2026-01-01T00:00:00+24:00"),
    ("offset-no-colon", "2026-01-01T00:00:00+0100"),
    ("offset-minute-60", "2026-01-01T00:00:00+01:60"),
    ("trailing-space", "2026-01-01T00:00:00Z "),
    ("garbage", "yesterday"),
    ("arabic-indic-digits", "\u0662\u0660\u0662\u0666-01-01T00:00:00Z"),
    ("fullwidth-fraction", "2026-01-01T00:00:00.\uff15Z"),
]


@pytest.mark.parametrize(
    "stamp", [s for _, s in BAD_TIMESTAMPS], ids=[n for n, _ in BAD_TIMESTAMPS]
)
def test_bad_envelope_timestamp_is_rejected(stamp: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(timestamp=stamp))
    assert "timestamp" in str(caught.value)
    assert repr(stamp) in str(caught.value)
    with pytest.raises(ProtocolError):
        parse_timestamp(stamp)


def test_bad_date_is_rejected_after_a_good_one_on_the_same_day() -> None:
    """The validator caches valid dates; a cached date must not let a bad time through."""
    decode(_frame(timestamp="2027-03-04T01:02:03Z"))
    with pytest.raises(ProtocolError, match="timestamp"):
        decode(_frame(timestamp="2027-03-04T24:02:03Z"))


BAD_TAILS = ["", ".Z", ".1234567890Z", "+24:00", "+0100", "+01:60", "Z ", ".5", "x", ".\u0665Z"]


@pytest.mark.parametrize("tail", BAD_TAILS)
def test_bad_fraction_or_offset_is_rejected_in_a_second_already_seen(tail: str) -> None:
    """The validator remembers valid seconds; what follows them is checked every time."""
    assert decode(_frame(timestamp="2027-05-06T07:08:09.5Z")).timestamp
    with pytest.raises(ProtocolError, match="timestamp"):
        decode(_frame(timestamp="2027-05-06T07:08:09" + tail))
    with pytest.raises(ProtocolError, match="timestamp"):
        decode(_frame(type="log", payload={"timestamp": "2027-05-06T07:08:09" + tail}))


# ------------------------------------------------------------------ ill-typed payload fields

BAD_PAYLOADS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("int-as-string", "progress", {"current_item": "3"}, ["'current_item'", "integer"]),
    ("int-as-float", "progress", {"total_items": 3.0}, ["'total_items'", "integer", "3.0"]),
    ("schema-float", "register", {"schema_version": 3.0}, ["'schema_version'", "3.0"]),
    ("schema-bool", "register", {"schema_version": True}, ["'schema_version'", "boolean"]),
    ("line-as-string", "log", {"level": "info", "source_line": "12"}, ["'source_line'"]),
    ("percent-bool", "progress", {"percent": True}, ["'percent'", "number", "boolean"]),
    ("percent-string", "progress", {"percent": "50"}, ["'percent'", "number"]),
    ("progress-bool", "status_response", {"progress": False}, ["'progress'", "boolean"]),
    ("recoverable-str", "error", {"recoverable": "yes"}, ["'recoverable'", "boolean"]),
    ("force-int", "cancel", {"force": 1}, ["'force'", "boolean"]),
    ("str-as-int", "pause", {"reason": 5}, ["'reason'", "string"]),
    ("unknown-to", "phase_changed", {"to": "sleeping"}, ["'to'", "unknown phase", "sleeping"]),
    ("unknown-from", "phase_changed", {"from": "Paused"}, ["'from'", "unknown phase"]),
    ("phase-int", "status_response", {"phase": 3}, ["'phase'", "phase string"]),
    ("capabilities-str", "register", {"capabilities": "build"}, ["'capabilities'", "list"]),
    ("capabilities-int", "register", {"capabilities": ["a", 1]}, ["'capabilities'"]),
    ("state-list", "checkpoint", {"state": [1]}, ["'state'", "object"]),
    ("fields-str", "log", {"level": "info", "fields": "x"}, ["'fields'", "object"]),
    ("bad-level", "log", {"level": "verbose"}, ["'level'", "verbose", "warn"]),
    ("level-int", "log", {"level": 3}, ["'level'", "string"]),
    ("log-timestamp", "log", {"level": "info", "timestamp": "now"}, ["'timestamp'", "now"]),
    ("logs-object", "log_batch", {"logs": {}}, ["'logs'", "list"]),
    (
        "batch-bad-level",
        "log_batch",
        {"logs": [{"level": "info"}, {"level": "debug"}, {"level": "loud"}]},
        ["'logs'[2]", "'level'", "loud"],
    ),
    (
        "batch-entry-not-object",
        "log_batch",
        {"logs": [{"level": "info"}, "oops"]},
        ["'logs'[1]", "object"],
    ),
    (
        "batch-entry-bad-line",
        "log_batch",
        {"logs": [{"level": "info", "source_line": 1.5}]},
        ["'logs'[0]", "'source_line'"],
    ),
]


@pytest.mark.parametrize(
    ("type_", "payload", "expected"),
    [(t, p, e) for _, t, p, e in BAD_PAYLOADS],
    ids=[n for n, _, _, _ in BAD_PAYLOADS],
)
def test_ill_typed_payload_field_names_the_key(
    type_: str, payload: dict[str, Any], expected: list[str]
) -> None:
    """Decoding types the payload: the frame is refused, and a message built from the same
    object is refused by ``typed_payload()`` in the same words."""
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(type=type_, payload=payload))  # the envelope is fine
    for part in expected:
        assert part in str(caught.value)
    built = Message(type=MessageType(type_), payload=payload)
    with pytest.raises(ProtocolError) as again:
        built.typed_payload()
    assert str(again.value) == str(caught.value)


def test_unknown_type_has_no_typed_payload() -> None:
    message = decode(_frame(type="telemetry_v9", payload={"x": 1}))
    assert message.type == "telemetry_v9"
    with pytest.raises(ProtocolError, match="unknown message type 'telemetry_v9'"):
        message.typed_payload()


def test_empty_payload_without_a_type_is_refused() -> None:
    with pytest.raises(ProtocolError, match="explicit message type"):
        Message.create(EmptyPayload())


def test_non_finite_percent_cannot_be_encoded() -> None:
    """JSON has no NaN; sending one would make the hub reject the whole frame."""
    message = Message.create(ProgressPayload(workflow_id="w", percent=float("nan")))
    with pytest.raises(ProtocolError, match="progress"):
        encode(message)


def test_unserialisable_payload_value_cannot_be_encoded() -> None:
    message = Message(type=MessageType.CHECKPOINT, payload={"state": {"at": object()}})
    with pytest.raises(ProtocolError, match="checkpoint"):
        encode(message)


def test_a_cycle_or_runaway_nesting_cannot_be_encoded() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = looped
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    for state in (looped, deep):
        message = Message(type=MessageType.CHECKPOINT, payload={"state": state})
        with pytest.raises(ProtocolError, match="checkpoint"):
            encode(message)
    assert (
        encode(Message(type=MessageType.PING, id="a", timestamp="")) == '{"id":"a","type":"ping"}'
    )


class _Opaque:
    """Not JSON; weakly referable, so a test can see whether anything still holds it."""


def test_a_failed_encoding_leaves_nothing_behind_for_the_next() -> None:
    """The encoder is reused, and its circular-reference markers hold what they mark: a
    failure half-way through nested containers must not leave them behind (a leak, and ids
    that could make a later object look circular)."""
    for _ in range(50):
        opaque = _Opaque()
        alive = weakref.ref(opaque)
        bad = {"outer": {"inner": [opaque]}}
        with pytest.raises(ProtocolError, match="not JSON serializable"):
            encode(Message(type=MessageType.CHECKPOINT, payload={"state": bad}))
        del bad, opaque
        assert alive() is None
        good = {"outer": {"inner": [1]}}
        text = encode(Message(type=MessageType.CHECKPOINT, id="a", payload={"state": good}))
        assert json.loads(text)["payload"]["state"] == good


def test_threads_encoding_the_same_objects_at_once_all_succeed() -> None:
    shared = {"state": {"rows": list(range(50)), "nested": {"k": [{"v": i} for i in range(20)]}}}
    expected = json.dumps(shared, separators=(",", ":"))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(500):
                text = encode(Message(type=MessageType.CHECKPOINT, id="a", payload=shared))
                assert text.endswith(f',"payload":{expected}}}')
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[0]


# ------------------------------------------------------------------ valid edge cases


@pytest.mark.parametrize("digits", range(10))
def test_timestamps_with_zero_to_nine_fraction_digits_decode(digits: int) -> None:
    fraction = "." + "123456789"[:digits] if digits else ""
    stamp = f"2026-11-26T22:41:47{fraction}Z"
    message = decode(_frame(timestamp=stamp))
    assert message.timestamp == stamp  # kept verbatim, no digit lost
    assert json.loads(encode(message))["timestamp"] == stamp
    assert parse_timestamp(stamp).microsecond == int("123456789"[: min(digits, 6)].ljust(6, "0"))


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-26T22:41:47+00:00",
        "2026-11-26T22:41:47-00:00",
        "2026-11-26T22:41:47.5+05:30",
        "2026-11-26T22:41:47.123-11:45",
        "2026-11-26T22:41:47+23:59",
        "2026-11-26T22:41:47-23:59",
        "2026-11-26t22:41:47z",
        "2024-02-29T23:59:60Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
    ],
)
def test_any_rfc3339_offset_decodes(stamp: str) -> None:
    assert decode(_frame(timestamp=stamp)).timestamp == stamp
    assert parse_timestamp(stamp).tzinfo is not None


def test_missing_timestamp_is_allowed_and_stays_missing() -> None:
    message = decode('{"id":"a","type":"ping"}')
    assert message.timestamp == ""
    assert json.loads(encode(message)) == {"id": "a", "type": "ping"}


def test_null_optional_envelope_keys_read_as_absent() -> None:
    message = decode('{"id":"a","type":"ping","workflow_id":null,"timestamp":null,"payload":null}')
    assert (message.workflow_id, message.timestamp, message.payload) == ("", "", EmptyPayload())
    assert message.type is MessageType.PING


def test_whitespace_around_the_frame_is_allowed() -> None:
    message = decode(' \n\t\r{"id":"a","type":"pong"} \r\n\t ')
    assert (message.id, message.type) == ("a", MessageType.PONG)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_input_is_decoded_as_utf8(wrap: type[Any]) -> None:
    frame = '{"id":"a","type":"pause","payload":{"reason":"caf\u00e9 \u2603 \U0001f600"}}'
    message = decode(wrap(frame.encode("utf-8")))
    assert message.payload == PausePayload(reason="caf\u00e9 \u2603 \U0001f600")


def test_unknown_envelope_and_payload_keys_are_ignored() -> None:
    """A newer hub may add keys; an older client must keep working."""
    message = decode(
        _frame(type="pause", extra=1, payload={"workflow_id": "w", "reason": "r", "new": [1]})
    )
    assert message.typed_payload() == PausePayload(workflow_id="w", reason="r")


def test_a_bad_payload_is_a_payload_error_and_a_bad_envelope_is_not() -> None:
    """A receiver counts "bad payload" apart from "not a message" by the class."""
    with pytest.raises(PayloadError, match="'reason'"):
        decode(_frame(type="pause", payload={"reason": 5}))
    with pytest.raises(ProtocolError) as caught:
        decode(_frame(type="pause", workflow_id=5))
    assert not isinstance(caught.value, PayloadError)
