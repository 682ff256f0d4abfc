"""What ``Coordinator.stats()`` returns: one consistent snapshot of a client's counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CoordinatorStats"]


@dataclass(frozen=True)
class CoordinatorStats:
    """Counters of one coordinator; ``sent == delivered + dropped + queued + inflight``.

    ``url`` is the hub URL of the current connection, without credentials ("" while not
    connected): with several URLs in ``when_url``, the one the client failed over to.

    ``sent`` counts every message the application handed over, ``dropped_by_kind`` the ones shed
    (by message type) and ``drop_reasons`` why. A progress update that replaced the same
    workflow's progress while that was still queued is not a message of its own: it counts in
    ``coalesced``, not in ``sent``. Inbound frames the client refused are counted in
    ``inbound_dropped`` by reason.
    """

    sent: int
    delivered: int
    dropped: int
    dropped_by_kind: Mapping[str, int]
    drop_reasons: Mapping[str, int]
    queued: int
    inflight: int
    queued_bytes: int
    connected: bool
    registered: bool
    connects: int
    reconnects: int
    connect_failures: int
    received: int
    inbound_dropped: Mapping[str, int]
    coalesced: int = 0
    connect_errors: Mapping[str, int] = field(default_factory=dict)
    """Failed connection attempts by the exception's qualified class name."""
    url: str = ""
