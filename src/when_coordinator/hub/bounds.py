"""The hub's memory bounds in bytes, and the estimates they are measured with.

Counts alone do not bound memory: within the default frame limit (1 MiB) and rate limit, a
client can make every retained item a megabyte. Every collection the hub keeps is therefore
bounded by an estimate of its size as well, and what a bound pushes out is counted.

Sizes are estimates of the retained text (strings by length, nested JSON values by their
encoded JSON length) plus a fixed overhead per item; Python's own overhead on nested values
comes on top, so treat the limits as the budget for payload, not as the process size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["ITEM_OVERHEAD", "HubLimits", "cut", "json_size"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class HubLimits:
    """Byte budgets of the hub's retained state; see docs/hub.md ("Memory bounds").

    The sum of the defaults (about 530 MiB, plus one frame per bound that a single item may
    exceed) is what a hub with the default limits may hold whatever its clients send.
    """

    log_buffer_bytes: int = 64 * MiB
    """The hub-wide log buffer (oldest records evicted first)."""
    workflow_log_buffer_bytes: int = 1 * MiB
    """One workflow's log buffer."""
    workflow_logs_bytes: int = 64 * MiB
    """All workflow log buffers together: the workflows that logged least recently lose their
    oldest records first."""
    workflow_bytes: int = 2 * MiB
    """One workflow's phase history, checkpoints, errors and anomalies (checkpoint ``state``
    objects apart): its oldest records are dropped first."""
    workflows_bytes: int = 256 * MiB
    """All workflows together (records and text fields): past it whole workflows are
    forgotten, in the order ``max_workflows`` uses (finished ones first)."""
    checkpoint_state_bytes: int = 64 * MiB
    """The ``state`` objects of all checkpoints: past it the oldest states are dropped (the
    checkpoint record stays, without ``state``), oldest holder first."""
    received_bytes: int = 16 * MiB
    """The raw frames the hub keeps for inspection (``Hub.received``), and apart the same
    again for the messages it sent (``Hub.sent``)."""
    store_pending_bytes: int = 64 * MiB
    """Changes waiting for the SQLite store (while a write fails, say): past it the oldest
    pending logs are dropped (counted) and pending records are rewritten from the live
    state instead."""
    max_text: int = 16_384
    """A free-text field a service reports (progress message, stage, reason, error text...)
    is kept up to this many characters; longer ones are cut and counted."""
    max_id: int = 1_024
    """Workflow and checkpoint ids longer than this are refused (an invalid frame)."""

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HubLimits.{name} must be a positive integer, not {value!r}")


ITEM_OVERHEAD = 64
"""Bytes counted per retained item besides its text (object headers, references)."""


_encode = msgspec.json.Encoder(enc_hook=str).encode
"""msgspec, not ``json.dumps``: the hub sizes every log entry's fields with it, and the
standard library's encoder was the largest single cost of a busy hub's loop."""


def json_size(value: Any) -> int:
    """The encoded JSON length of a decoded JSON value (what it cost on the wire, UTF-8)."""
    if value is None:
        return 4
    if isinstance(value, str):
        return len(value) + 2
    try:
        return len(_encode(value))
    except (ValueError, TypeError, RecursionError, OverflowError):
        return len(repr(value))


def cut(text: str, limit: int) -> str:
    """``text`` shortened to ``limit`` characters, with a marker saying so."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 20)] + f"... [{len(text)} chars]"
