"""Frames the reference Go client really exchanged must survive our decode and encode unchanged.

The transcript is the closest thing to ground truth for the wire format: if a frame from it does
not round-trip exactly (same keys, same values, same JSON types), a when-v3 hub would see a
difference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from when_coordinator.protocol import (
    LogBatchPayload,
    LogLevel,
    LogPayload,
    Message,
    MessageType,
    Phase,
    PhaseChangedPayload,
    ProtocolError,
    RegisterPayload,
    decode,
    encode,
)

WIRE = Path(__file__).resolve().parents[3] / "shared" / "wire"
TRANSCRIPT = WIRE / "reference-client-transcript.jsonl"
INT_KEYS = frozenset({"schema_version", "source_line", "current_item", "total_items"})
ID_SHAPE = re.compile(r"msg-[a-z0-9]{12}-\d{1,6}")


def _load(path: Path = TRANSCRIPT) -> list[tuple[str, str]]:
    """(direction, frame) of every application frame; open/close records are not frames."""
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    return [(r["dir"], r["frame"]) for r in records if r["dir"] in ("in", "out")]


FRAMES = _load()
RECORDED = [item for path in sorted(WIRE.glob("*.jsonl")) for item in _load(path)]
"""Every frame of every recording: the transcript and the Go client against our hub."""
KNOWN = [(d, f) for d, f in FRAMES if json.loads(f)["type"] in {t.value for t in MessageType}]


def _frame_id(item: tuple[str, str]) -> str:
    direction, frame = item
    data = json.loads(frame)
    return f"{direction}-{data['type']}-{data['id']}"


def _same_json(left: Any, right: Any) -> bool:
    """Equality that also tells 50 from 50.0 and true from 1, which ``==`` does not."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same_json, left, right))
    return bool(left == right)


def _int_values(data: Any) -> list[tuple[str, Any]]:
    """Every value, at any depth, under a key that is an integer on the Go side."""
    found: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in INT_KEYS:
                found.append((key, value))
            found.extend(_int_values(value))
    elif isinstance(data, list):
        for item in data:
            found.extend(_int_values(item))
    return found


def test_transcript_has_every_kind_of_frame() -> None:
    """Guards the parametrised tests below against a truncated or missing transcript."""
    types = {json.loads(frame)["type"] for _, frame in FRAMES}
    assert len(FRAMES) >= 36
    assert types == {t.value for t in MessageType} | {"no_such_type"}


def test_every_recording_is_read() -> None:
    assert len(RECORDED) >= len(FRAMES) + 100


@pytest.mark.parametrize("item", RECORDED, ids=_frame_id)
def test_frame_round_trips_exactly(item: tuple[str, str]) -> None:
    _, frame = item
    again = json.loads(encode(decode(frame)))
    assert again == json.loads(frame)
    assert _same_json(again, json.loads(frame))
    for key, value in _int_values(again):
        assert type(value) is int, key


def test_integer_keys_are_present_in_the_transcript() -> None:
    """The int check above must have something to check, or it proves nothing."""
    keys = {key for _, frame in FRAMES for key, _ in _int_values(json.loads(frame))}
    assert {"schema_version", "source_line"} <= keys


@pytest.mark.parametrize("item", KNOWN, ids=_frame_id)
def test_frame_round_trips_through_typed_payload(item: tuple[str, str]) -> None:
    _, frame = item
    message = decode(frame)
    assert isinstance(message.type, MessageType)
    rebuilt = Message.create(
        message.typed_payload(),
        type=message.type,
        id=message.id,
        workflow_id=message.workflow_id,
        timestamp=message.timestamp,
    )
    assert _same_json(json.loads(encode(rebuilt)), json.loads(frame))


def test_unknown_type_decodes_but_has_no_payload_schema() -> None:
    (frame,) = [f for _, f in FRAMES if json.loads(f)["type"] == "no_such_type"]
    message = decode(frame)
    assert message.type == "no_such_type"
    assert not isinstance(message.type, MessageType)
    assert message.id == "hub-9"
    assert message.workflow_id == "wf-1"
    with pytest.raises(ProtocolError, match="no_such_type"):
        message.typed_payload()


def test_reference_client_ids_have_the_documented_shape() -> None:
    """Our id regex (section 2) is checked against ids the Go client drew, not against ours."""
    client_ids = [json.loads(f)["id"] for d, f in FRAMES if d == "in"]
    # The pong and the status_response reuse the hub's ids.
    own = [i for i in client_ids if not i.startswith("hub-")]
    assert len(own) == len(client_ids) - 2
    for message_id in own:
        assert ID_SHAPE.fullmatch(message_id), message_id
        assert int(message_id.rsplit("-", 1)[1]) <= 999_999


def test_typed_payloads_carry_the_transcript_values() -> None:
    """Spot checks that typed decoding reads values, not just shapes."""
    by_type: dict[str, list[Message]] = {}
    for _, frame in FRAMES:
        message = decode(frame)
        by_type.setdefault(str(message.type), []).append(message)

    register = by_type["register"][0].typed_payload()
    assert register == RegisterPayload(
        service_name="goservice",
        service_id="svc-go-1",
        instance_id="inst-1",
        capabilities=("build", "deploy"),
        version="1.2.3",
        protocol_version="1.0",
        schema_version=7,
    )
    batch = by_type["log_batch"][0].typed_payload()
    assert isinstance(batch, LogBatchPayload)
    assert [e.message for e in batch.logs] == ["batched 0", "batched 1", "batched 2"]
    assert all(e.level is LogLevel.DEBUG for e in batch.logs)

    hooked = by_type["log"][2].typed_payload()
    assert isinstance(hooked, LogPayload)
    assert hooked.entry.source_line == 250
    assert hooked.entry.fields == {"other": "o"}
    assert by_type["log"][2].workflow_id == ""  # the entry has one, the envelope never does

    paused = [
        p
        for m in by_type["phase_changed"]
        if isinstance(p := m.typed_payload(), PhaseChangedPayload) and p.to_phase is Phase.PAUSED
    ]
    assert paused[0].from_phase is Phase.PAUSING
    assert paused[0].checkpoint_id == "cp-1"
    assert paused[0].reason == "operator pause"
