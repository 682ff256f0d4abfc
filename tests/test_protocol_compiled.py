"""Each payload's unrolled ``to_dict`` and ``from_dict`` say exactly what its ``_FIELDS`` table
says."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_protocol_properties import PAYLOADS, json_values, log_entries
from when_coordinator.protocol import (
    PAYLOAD_TYPES,
    EmptyPayload,
    LogEntry,
    LogPayload,
    MessageType,
    Payload,
    ProgressPayload,
    ProtocolError,
)
from when_coordinator.protocol.messages import _Field, _generic_from_dict, _generic_to_dict


@pytest.mark.parametrize("message_type", list(PAYLOADS), ids=str)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_compiled_to_dict_matches_the_table(message_type: MessageType, data: st.DataObject) -> None:
    payload: Payload = data.draw(PAYLOADS[message_type])
    if message_type is MessageType.LOG:
        return  # LogPayload writes its entry's keys: covered by the LogEntry case below
    assert payload.to_dict() == _generic_to_dict(payload)


@settings(max_examples=300, deadline=None)
@given(entry=log_entries)
def test_compiled_log_entry_to_dict_matches_the_table(entry: LogEntry) -> None:
    assert entry.to_dict() == _generic_to_dict(entry)


COMPILED = sorted(
    {LogEntry, *PAYLOAD_TYPES.values()} - {LogPayload},  # LogPayload reads its entry's keys
    key=lambda cls: cls.__name__,
)


def _outcome(cls: type[Any], data: Any) -> tuple[str, Any]:
    """What ``from_dict`` makes of ``data``: the object with its field types, or the error."""
    try:
        made = cls.from_dict(data)
    except ProtocolError as exc:
        return "error", str(exc)
    return "made", (made, [type(value) for value in vars(made).values()])


def _reference(cls: type[Any], data: Any) -> tuple[str, Any]:
    try:
        made = _generic_from_dict(cls, data)
    except ProtocolError as exc:
        return "error", str(exc)
    return "made", (made, [type(value) for value in vars(made).values()])


def test_every_payload_class_but_the_special_ones_has_a_compiled_from_dict() -> None:
    for cls in COMPILED:
        if cls is EmptyPayload:
            continue  # no fields: the generic loop is already nothing
        assert "from_dict" in vars(cls), cls  # installed on the class itself, not _Schema's


# Values of every JSON type, with those a type test could confuse: bools beside ints,
# ints beside floats, phase names, timestamps and near-timestamps, empty containers.
tricky_values = st.one_of(
    json_values,
    st.sampled_from(
        [True, False, 0, 1, -1, 2.5, 0.0, "", "execution", "Execution", "completed", [], {}]
    ),
    st.sampled_from(
        ["2026-11-27T15:20:34.5Z", "2026-11-27T15:20:34.5", "2026-02-30T00:00:00Z", "now"]
    ),
)


def _mutated(data: st.DataObject, cls: type[Any], wire: dict[str, Any]) -> dict[str, Any]:
    """The wire form with one of the class's keys (present or not), or an unknown key, set to
    any value."""
    key = data.draw(st.sampled_from([*(spec.key for spec in cls._FIELDS), "unknown"]))
    return {**wire, key: data.draw(tricky_values)}


@pytest.mark.parametrize("message_type", list(PAYLOADS), ids=str)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_compiled_from_dict_matches_the_table(
    message_type: MessageType, data: st.DataObject
) -> None:
    """Valid payloads, then the same with one key set to another value: the compiled and the
    table-driven ``from_dict`` make equal objects (field types too) or the same error."""
    if message_type is MessageType.LOG:
        return  # LogPayload reads its entry's keys: covered by the LogEntry case below
    payload: Payload = data.draw(PAYLOADS[message_type])
    cls = type(payload)
    wire = payload.to_dict()
    assert _outcome(cls, wire) == _reference(cls, wire)
    mutated = _mutated(data, cls, wire)
    assert _outcome(cls, mutated) == _reference(cls, mutated)


@settings(max_examples=400, deadline=None)
@given(entry=log_entries, data=st.data())
def test_compiled_log_entry_from_dict_matches_the_table(
    entry: LogEntry, data: st.DataObject
) -> None:
    wire = entry.to_dict()
    assert _outcome(LogEntry, wire) == _reference(LogEntry, wire)
    mutated = _mutated(data, LogEntry, wire)
    assert _outcome(LogEntry, mutated) == _reference(LogEntry, mutated)


def test_compiled_from_dict_makes_fresh_defaults_and_takes_any_mapping() -> None:
    first, second = LogEntry.from_dict({}), LogEntry.from_dict({})
    assert first.fields == {}
    assert first.fields is not second.fields
    frozen = MappingProxyType({"workflow_id": "wf-1", "percent": 5})
    assert ProgressPayload.from_dict(frozen) == ProgressPayload(workflow_id="wf-1", percent=5)
    with pytest.raises(ProtocolError, match="must be an object"):
        ProgressPayload.from_dict([])  # type: ignore[arg-type]


EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    7,
    -1,
    2**70,
    2.5,
    0.0,
    "",
    "text",
    "execution",
    "EXECUTION",
    "2026-11-27T15:20:34.5Z",
    "2026-11-27T15:20:34.5",
    "2026-11-27T15:20:34.1234567890Z",
    "2026-02-30T00:00:00Z",
    [],
    ["a", "b"],
    ["a", 1],
    {},
    {"k": "v"},
    [{"level": "info", "message": "m"}],
    [{"level": "loud"}],
    [1],
]


@pytest.mark.parametrize("cls", COMPILED, ids=lambda cls: cls.__name__)
def test_compiled_from_dict_matches_the_table_for_every_field_and_edge_value(
    cls: type[Any],
) -> None:
    """Each field of each class, set to each value a type test could confuse (bools for ints,
    ints for floats, phase names, timestamps whose second is already known)."""
    base = cls().to_dict()
    for spec in cls._FIELDS:
        for value in EDGE_VALUES:
            data = {**base, spec.key: value}
            assert _outcome(cls, data) == _reference(cls, data), (spec.key, value)


def test_a_subclass_with_a_table_of_its_own_is_read_by_that_table() -> None:
    """The compiled ``from_dict`` belongs to its class; a subclass that adds fields (and its
    own ``_FIELDS``) gets the table-driven reading of them, as before."""

    @dataclass(frozen=True)
    class TimedProgress(ProgressPayload):
        eta_seconds: int = 0

        _FIELDS: ClassVar[tuple[_Field, ...]] = (
            *ProgressPayload._FIELDS,
            _Field("eta_seconds", "eta_seconds", "int"),
        )

    made = TimedProgress.from_dict({"workflow_id": "wf-1", "percent": 5, "eta_seconds": 30})
    assert type(made) is TimedProgress
    assert (made.workflow_id, made.percent, made.eta_seconds) == ("wf-1", 5, 30)
    assert made.to_dict()["eta_seconds"] == 30
    with pytest.raises(ProtocolError, match="eta_seconds"):
        TimedProgress.from_dict({"workflow_id": "wf-1", "eta_seconds": "soon"})
