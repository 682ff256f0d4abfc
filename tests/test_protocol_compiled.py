"""Each payload's unrolled ``to_dict`` says exactly what its ``_FIELDS`` table says."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_protocol_properties import PAYLOADS, log_entries
from when_coordinator.protocol import LogEntry, MessageType, Payload
from when_coordinator.protocol.messages import _generic_to_dict


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
