"""``decode``'s cheaper paths answer exactly what its careful path and the pattern answer.

An unknown type is read by a second msgspec decoder instead of ``json``; a log's two timestamps,
a small batch's and a batch within one second are checked against the seconds already seen.
Each case here compares the cheap path with the careful one, or puts one wrong value at every
place a cheap path could miss it.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import msgspec
import pytest

from when_coordinator.protocol import (
    LogEntry,
    LogPayload,
    Message,
    PayloadError,
    ProtocolError,
    decode,
    encode,
)
from when_coordinator.protocol.messages import _decode_carefully
from when_coordinator.protocol.timestamps import all_timestamps, is_timestamp

SECOND = "2026-11-26T22:42:03"
GOOD = SECOND + ".750073459Z"


def _unknown(**envelope: Any) -> str:
    return json.dumps({"id": "m-1", "type": "telemetry_v9", **envelope})


UNKNOWN_FRAMES = [
    _unknown(),
    _unknown(timestamp=GOOD, workflow_id="wf-1", payload={"a": 1}),
    _unknown(timestamp=None, workflow_id=None, payload=None),
    _unknown(timestamp="", payload={}),
    _unknown(timestamp="2026-11-26T23:42:03.5+01:00"),
    _unknown(id="", payload={"big": 10**40, "f": 0.1, "neg": -0.0, "t": [True, None]}),
    _unknown(payload={"nested": {"deep": [1, {"x": "\u00e9\u2603\U0001f600"}]}}),
    _unknown(extra_key="ignored", payload={"n": 1.7976931348623157e308}),
    '{"id":"m-1","type":"ping","type":"telemetry_v9"}',  # the last of a repeated key counts
]


@pytest.mark.parametrize("frame", UNKNOWN_FRAMES)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_an_unknown_type_decodes_as_the_careful_path_reads_it(frame: str, as_bytes: bool) -> None:
    text: str | bytes = frame.encode() if as_bytes else frame
    fast, careful = decode(text), _decode_carefully(text)
    assert fast == careful
    assert type(fast.type) is str
    assert fast.type == "telemetry_v9"
    assert isinstance(fast.payload, dict)
    assert isinstance(careful.payload, dict)
    assert {k: type(v) for k, v in fast.payload.items()} == {
        k: type(v) for k, v in careful.payload.items()
    }
    assert fast.payload == (json.loads(frame).get("payload") or {})


UNKNOWN_REFUSED = [
    (_unknown(timestamp="2026-11-26T22:42:03.1234567890Z"), "envelope 'timestamp'"),
    (_unknown(timestamp=SECOND + ".5+24:00"), "envelope 'timestamp'"),
    (_unknown(timestamp="2026-02-30T22:42:03Z"), "envelope 'timestamp'"),
    (_unknown(payload=[1]), "envelope 'payload' must be an object, got array"),
    (_unknown(workflow_id=5), "envelope 'workflow_id' must be a string"),
    (_unknown(id=None), "missing 'id'"),
    (json.dumps({"id": "m-1", "type": ""}), "envelope 'type' is empty"),
    (_unknown(payload={"x": float("inf")}).replace("Infinity", "1e400"), ""),  # read as inf
]


@pytest.mark.parametrize(("frame", "expected"), UNKNOWN_REFUSED)
def test_what_the_unknown_path_refuses_gets_the_careful_answer(frame: str, expected: str) -> None:
    try:
        careful: Message | str = _decode_carefully(frame)
    except ProtocolError as exc:
        careful = str(exc)
    try:
        fast: Message | str = decode(frame)
    except ProtocolError as exc:
        fast = str(exc)
    assert fast == careful
    if expected:
        assert isinstance(fast, str)
        assert expected in fast


def _batch(stamps: list[str], envelope: str = GOOD) -> str:
    logs = [{"timestamp": s, "level": "info", "message": f"m{i}"} for i, s in enumerate(stamps)]
    return json.dumps(
        {"id": "m-1", "type": "log_batch", "timestamp": envelope, "payload": {"logs": logs}}
    )


@pytest.mark.parametrize("size", [1, 2, 4, 5, 20])
@pytest.mark.parametrize(
    "wrong",
    [
        SECOND + ".1234567890Z",  # ten fraction digits
        "2026-02-30T22:42:03.5Z",  # a day February does not have, in another second
        "2026-11-26T22:60:03.5Z",  # a minute of 60
        SECOND + ".\uff15Z",  # a fullwidth digit
        SECOND + ".5",  # no offset
    ],
)
def test_every_entry_of_a_batch_is_checked(size: int, wrong: str) -> None:
    assert not is_timestamp(wrong)
    stamps = [f"{SECOND}.{i + 1}Z" for i in range(size)]
    assert len(decode(_batch(stamps)).payload.logs) == size  # type: ignore[union-attr]
    for index in range(size):
        bad = [*stamps[:index], wrong, *stamps[index + 1 :]]
        with pytest.raises(PayloadError, match=rf"'logs'\[{index}\]\['timestamp'\]"):
            decode(_batch(bad))


def test_a_batch_within_one_invalid_second_is_refused() -> None:
    stamps = [f"2026-02-29T10:00:00.{i}Z" for i in range(1, 8)]  # 2026 is no leap year
    assert not all_timestamps(stamps)
    with pytest.raises(PayloadError, match=r"'logs'\[0\]"):
        decode(_batch(stamps))
    leap = [s.replace("2026", "2028") for s in stamps]
    assert all_timestamps(leap)
    assert decode(_batch(leap)).payload.logs[-1].timestamp == leap[-1]  # type: ignore[union-attr]


def test_a_batch_over_several_seconds_and_shapes_decodes() -> None:
    stamps = [
        "2026-11-26T22:42:03Z",
        "2026-11-26T22:42:04.5Z",
        "2026-11-26t22:42:05.123456789z",
        "2026-11-26 22:42:06+05:30",
        "2026-11-26T23:59:60Z",  # a leap second: RFC 3339 allows it
        "",
    ]
    message = decode(_batch(stamps))
    assert [e.timestamp for e in message.payload.logs] == stamps  # type: ignore[union-attr]


def _log(envelope: str, stamp: str) -> str:
    entry = {"timestamp": stamp, "level": "warn", "message": "m"}
    return json.dumps({"id": "m-1", "type": "log", "timestamp": envelope, "payload": entry})


def test_both_timestamps_of_a_log_are_checked_in_a_second_already_seen() -> None:
    assert decode(_log(GOOD, GOOD)).payload.entry.timestamp == GOOD  # type: ignore[union-attr]
    for stamp in ("2026-11-26T22:42:03.5+01:00", "", SECOND + "Z"):
        assert decode(_log(GOOD, stamp)).payload.entry.timestamp == stamp  # type: ignore[union-attr]
    for wrong in (SECOND + ".1234567890Z", SECOND + ".5+0100", SECOND + ".\u0665Z"):
        with pytest.raises(PayloadError, match="log payload field 'timestamp'"):
            decode(_log(GOOD, wrong))
        with pytest.raises(ProtocolError, match="envelope 'timestamp'"):
            decode(_log(wrong, GOOD))


def test_a_decoded_log_payload_is_a_whole_log_payload() -> None:
    message = decode(_log(GOOD, GOOD))
    payload = message.payload
    assert type(payload) is LogPayload
    assert payload == LogPayload(LogEntry(timestamp=GOOD, level="warn", message="m"))
    assert pickle.loads(pickle.dumps(payload)) == payload
    with pytest.raises(AttributeError):
        payload.entry = LogEntry()
    assert decode(encode(message)) == message


def test_an_absent_payload_is_the_empty_payload_and_a_log_gets_its_own() -> None:
    ping = decode('{"id": "m-1", "type": "ping"}')
    assert ping.payload == decode('{"id": "m-2", "type": "ping", "payload": {}}').payload
    first = decode('{"id": "m-1", "type": "log"}').payload
    second = decode('{"id": "m-2", "type": "log"}').payload
    assert first == second
    assert first.entry.fields is not second.entry.fields  # type: ignore[union-attr]


def test_wire_log_is_log_entry_without_its_checks() -> None:
    """The log exporter's ``WireLog`` is made from ``LogEntry``'s fields: the same names,
    order and omissions, so it encodes as the ``LogEntry`` of the same values."""
    from when_coordinator.protocol.payloads import LogEntry, WireLog  # noqa: PLC0415

    names = [(f.name, f.encode_name) for f in msgspec.structs.fields(LogEntry)]
    assert [(f.name, f.encode_name) for f in msgspec.structs.fields(WireLog)] == names
    full = ("2026-12-03T12:00:00.5Z", "warn", "m", "t" * 32, "s" * 16, "wf", "a", "c")
    for values in (full[:3], (*full, {"k": 1}, "f.py", 7)):
        assert msgspec.json.encode(WireLog(*values)) == msgspec.json.encode(LogEntry(*values))
