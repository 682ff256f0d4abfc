"""Queued entries to frames, and the split of large log batches: pure functions."""

from __future__ import annotations

import uuid

import pytest

from when_coordinator import Config, Coordinator, PhaseManager
from when_coordinator.client._util import WireLog, WireLogBatch
from when_coordinator.client.encoding import encode_entry, phase_changed_payload, split_log_batch
from when_coordinator.client.outbox import Entry
from when_coordinator.protocol import CheckpointPayload, LogEntry, MessageType, decode

NOW = 1_700_000_000_000_000_000
TS = "2023-11-14T22:13:20.000000000Z"


def test_a_batch_over_the_budget_is_split_in_order_keeping_its_kind() -> None:
    wire = WireLogBatch(WireLog(TS, "info", f"m{n}") for n in range(5))
    parts = list(split_log_batch(wire, [40, 40, 40, 200, 10], budget=100))
    assert [([item.message for item in part], size) for part, size in parts] == [
        (["m0", "m1"], 80),
        (["m2"], 40),
        (["m3"], 200),  # alone over the budget: sent alone (the frame limit judges it)
        (["m4"], 10),
    ]
    assert all(type(part) is WireLogBatch for part, _ in parts)
    entries = tuple(LogEntry(message=f"e{n}") for n in range(3))
    ((whole, size),) = split_log_batch(entries, [10, 10, 10], budget=100)
    assert whole is entries
    assert size == 30


def test_a_wire_batch_is_cut_into_messages_of_its_max_entries_then_by_size() -> None:
    """One export's records, queued at once: ``max_batch`` entries a message, and a part over
    the size budget split further within its own entries (as when sent one part a call)."""
    wire = WireLogBatch((WireLog(TS, "info", f"m{n}") for n in range(7)), max_entries=3)
    parts = list(split_log_batch(wire, [10, 10, 90, 10, 10, 10, 10], budget=100))
    assert [([item.message for item in part], size) for part, size in parts] == [
        (["m0", "m1"], 20),
        (["m2"], 90),
        (["m3", "m4", "m5"], 30),
        (["m6"], 10),
    ]
    assert all(type(part) is WireLogBatch for part, _ in parts)


def test_a_checkpoint_state_json_cannot_hold_is_sent_as_text() -> None:
    token = uuid.UUID(int=7)
    payload = CheckpointPayload("wf-1", "cp-1", "", {"token": token, "n": 1})
    frame = encode_entry(Entry(MessageType.CHECKPOINT, "wf-1", payload, 200, NOW))
    message = decode(frame)
    assert message.payload["state"] == {"token": str(token), "n": 1}
    assert message.timestamp.startswith("2023-11-14T22:13:20")


def test_a_phase_changed_entry_reports_the_transition_it_was_made_for() -> None:
    phases = PhaseManager()
    phases.register_workflow("wf-1")
    state = phases.transition_to("wf-1", "pre-flight", "go")
    entry = Entry(
        MessageType.PHASE_CHANGED, "wf-1", phase_changed_payload(state), 200, NOW, state.sequence
    )
    message = decode(encode_entry(entry))
    assert message.workflow_id == "wf-1"
    assert (message.payload["from"], message.payload["to"]) == ("pending", "pre-flight")
    assert entry.phase_sequence == state.sequence


def test_send_wire_log_batch_refuses_what_is_not_a_wire_batch_at_the_call() -> None:
    coordinator = Coordinator(Config(service_name="wire-test"))  # no hub: nothing connects
    try:
        entries = [WireLog(TS, "info", "x")]
        with pytest.raises(TypeError):
            coordinator.send_wire_log_batch(entries, [10])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="one size per entry"):
            coordinator.send_wire_log_batch(WireLogBatch(entries), [])
        assert coordinator.send_wire_log_batch(WireLogBatch(), [])
        assert not coordinator.send_wire_log_batch(WireLogBatch(entries), [10])  # no hub
        assert coordinator.stats().drop_reasons == {"not sending: no hub": 1}
    finally:
        coordinator.close()
