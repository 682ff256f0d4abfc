"""Turning queued entries into frames: pure functions, run on the client's thread.

Application threads queue the protocol's payload Structs (or a ready ``Message``, or log
entries) without encoding anything; the connection's thread encodes each entry once, here, and
keeps the frame so that a resend after a drop is byte for byte the same message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from ..phase_manager import PhaseState
from ..protocol import (
    ENVELOPE_WORKFLOW_TYPES,
    CheckpointPayload,
    LogEntry,
    Message,
    MessageType,
    PhaseChangedPayload,
    ProtocolError,
    encode,
    encode_envelope,
    format_timestamp,
    new_message_id,
)
from ._util import WireLog, WireLogBatch, jsonable, log_size
from .outbox import Entry

__all__ = [
    "encode_entry",
    "log_entry_size",
    "phase_changed_message",
    "phase_changed_payload",
    "split_log_batch",
]


def log_entry_size(entry: LogEntry) -> int:
    """The outbox's size estimate of one log entry (see ``log_size``)."""
    return log_size(entry.message, entry.fields)


LogBatch = tuple[LogEntry, ...] | WireLogBatch


def split_log_batch(
    batch: LogBatch, sizes: Sequence[int], budget: int
) -> Iterator[tuple[LogBatch, int]]:
    """Parts of a batch (of the batch's own kind) with their estimated sizes, each at most
    ``budget`` unless one entry alone is larger: a frame over the frame limit is dropped,
    so a large batch goes out as several ``log_batch`` frames rather than not at all. A
    ``WireLogBatch`` is first cut into parts of its ``max_entries``."""
    if isinstance(batch, WireLogBatch) and 0 < batch.max_entries < len(batch):
        limit = batch.max_entries
        for start in range(0, len(batch), limit):
            end = start + limit
            yield from _split_by_size(WireLogBatch(batch[start:end]), sizes[start:end], budget)
        return
    yield from _split_by_size(batch, sizes, budget)


def _split_by_size(
    batch: LogBatch, sizes: Sequence[int], budget: int
) -> Iterator[tuple[LogBatch, int]]:
    total = sum(sizes)
    if total <= budget or len(batch) == 1:
        yield batch, total
        return
    start, size = 0, 0
    for end, entry_size in enumerate(sizes):
        if size and size + entry_size > budget:
            yield _log_part(batch, start, end), size
            start, size = end, 0
        size += entry_size
    yield _log_part(batch, start, len(batch)), size


def _log_part(batch: LogBatch, start: int, end: int) -> LogBatch:
    if isinstance(batch, WireLogBatch):
        return WireLogBatch(batch[start:end])  # a slice of one is a plain list
    return batch[start:end]


def phase_changed_payload(state: PhaseState) -> PhaseChangedPayload:
    """The ``phase_changed`` payload that reports the transition ``state`` ended in."""
    return PhaseChangedPayload(
        workflow_id=state.workflow_id,
        from_phase=state.previous_phase,
        to_phase=state.phase,
        checkpoint_id=state.checkpoint_id,
        reason=state.reason,
    )


def phase_changed_message(state: PhaseState, time_ns: int) -> Message:
    """A ``phase_changed`` re-asserting ``state`` (the replay after a registration)."""
    return Message.create(phase_changed_payload(state), timestamp=format_timestamp(time_ns))


def encode_entry(entry: Entry) -> str:
    """Encode a queued entry as its frame.

    Application data (checkpoint state, log fields) is encoded as it is; only when that fails
    is it made JSON-safe (unknown objects become their ``str``) and encoded again, so the
    common case pays for one pass.
    """
    body = entry.body
    if isinstance(body, Message):
        return encode(body)
    try:
        return _encode_payload(entry, sanitize=False)
    except ProtocolError:
        if entry.type not in _SANITISED:
            raise
        return _encode_payload(entry, sanitize=True)


_SANITISED = frozenset({MessageType.CHECKPOINT, MessageType.LOG, MessageType.LOG_BATCH})


def _log_entry_dict(entry: LogEntry, timestamp: str, sanitize: bool) -> dict[str, Any]:
    if sanitize and entry.fields:
        entry = msgspec.structs.replace(entry, fields=jsonable(entry.fields))
    wire = entry.to_dict()
    if not entry.timestamp:
        wire["timestamp"] = timestamp
    return wire


def _sanitized_wire(wire: WireLog) -> WireLog:
    fields = wire.fields
    return msgspec.structs.replace(wire, fields=jsonable(fields)) if fields else wire


def _encode_payload(entry: Entry, *, sanitize: bool) -> str:
    body, kind = entry.body, entry.type
    timestamp = format_timestamp(entry.time_ns)
    payload: Any
    if isinstance(body, LogEntry):
        payload = _log_entry_dict(body, timestamp, sanitize)
    elif type(body) is WireLogBatch:
        payload = {"logs": [_sanitized_wire(item) for item in body] if sanitize else body}
    elif isinstance(body, tuple):
        payload = {"logs": [_log_entry_dict(item, timestamp, sanitize) for item in body]}
    elif isinstance(body, CheckpointPayload) and sanitize and body.state:
        payload = msgspec.structs.replace(body, state=jsonable(body.state)).to_dict()
    elif body is not None and not isinstance(body, (Message, list)):
        payload = body.to_dict()
    else:
        raise ProtocolError(f"no encoder for queued {kind!r}")
    workflow_id = entry.workflow_id if kind in ENVELOPE_WORKFLOW_TYPES else ""
    return encode_envelope(kind, new_message_id(), workflow_id, timestamp, payload)
