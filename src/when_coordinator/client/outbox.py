"""The bounded outbox between application threads and the connection (PROTOCOL.md section 6).

Application threads only ``put``; the connection's thread ``take``s, sends, and later either
``confirm``s what the hub acknowledged or ``requeue``s it after a drop. Memory is bounded by
message count and by approximate bytes, including what is sent but not yet acknowledged.

Progress is a latest-value report: a ``progress`` for a workflow whose previous ``progress``
is still queued (not yet sent) replaces that one where it stands, unless a workflow-state
message of the same workflow was queued after it (which would then arrive out of order). A
burst of updates therefore costs the hub one message per workflow, and each replacement is
counted in ``coalesced``.

When full, the outbox sheds in a fixed order that protects workflow state: the oldest log
first, then a superseded progress of the same workflow, then the oldest progress, and the oldest
workflow-state message (``workflow_created``, ``phase_changed``, ``checkpoint``, ``error``) only
when nothing else is left. Every message accepted is eventually delivered or counted as
dropped, so ``accepted == delivered + dropped + queued + inflight`` always holds.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec

from ..protocol import (
    CheckpointPayload,
    ErrorPayload,
    LogEntry,
    Message,
    MessageType,
    PhaseChangedPayload,
    ProgressPayload,
    WorkflowCreatedPayload,
)
from ._util import WireLogBatch

__all__ = [
    "LANE_LOG",
    "LANE_PROGRESS",
    "LANE_STATE",
    "Entry",
    "Outbox",
    "OutboxCounters",
    "QueuedBody",
    "lane_of",
]

LANE_STATE = 0
LANE_PROGRESS = 1
LANE_LOG = 2

_LANES: dict[str, int] = {
    MessageType.PROGRESS: LANE_PROGRESS,
    MessageType.LOG: LANE_LOG,
    MessageType.LOG_BATCH: LANE_LOG,
}


def lane_of(message_type: MessageType | str) -> int:
    """Everything that is not progress or a log is kept like workflow state."""
    return _LANES.get(message_type, LANE_STATE)


QueuedBody = (
    Message
    | WorkflowCreatedPayload
    | PhaseChangedPayload
    | CheckpointPayload
    | ErrorPayload
    | ProgressPayload
    | LogEntry
    | tuple[LogEntry, ...]
    | WireLogBatch
)
"""What an entry holds until it is encoded: the protocol's own payload Struct for the typed
``send_*`` calls (encoded into an envelope on the client's thread), a ready ``Message`` for
``send()``, and log entries (``LogEntry`` Structs, or the exporter's wire-form dicts)."""


class Entry:
    """One queued message, not yet encoded: encoding happens on the connection's thread.

    ``frame`` is set once it is encoded (``body`` is then released), so a message sent again
    after a drop keeps its id and the hub can recognise the duplicate. Two numbers, two
    meanings: ``order`` is the entry's place in the outbox (set by ``Outbox.put``; sending is
    in this order across lanes), ``phase_sequence`` the ``PhaseState.sequence`` of the
    transition a ``phase_changed`` reports (-1 for anything else), used so a replay after a
    reconnect never duplicates a transition still queued.
    """

    __slots__ = (
        "body",
        "dropped",
        "frame",
        "lane",
        "order",
        "phase_sequence",
        "size",
        "time_ns",
        "type",
        "workflow_id",
    )

    type: MessageType | str
    workflow_id: str
    body: QueuedBody | None
    size: int
    time_ns: int
    phase_sequence: int
    lane: int
    order: int
    dropped: bool
    frame: str | None

    def __init__(
        self,
        message_type: MessageType | str,
        workflow_id: str,
        body: QueuedBody | None,
        size: int,
        time_ns: int,
        phase_sequence: int = -1,
    ) -> None:
        self.type = message_type
        self.workflow_id = workflow_id
        self.body = body
        self.size = size
        self.time_ns = time_ns
        self.phase_sequence = phase_sequence
        self.lane = _LANES.get(message_type, LANE_STATE)  # lane_of(), inlined: every message
        self.order = 0
        self.dropped = False
        self.frame = None


class OutboxCounters(NamedTuple):
    """A consistent snapshot of an ``Outbox``'s counters (see ``Outbox.counters``)."""

    accepted: int
    delivered: int
    dropped: dict[str, int]
    drop_reasons: dict[str, int]
    queued: int
    inflight: int
    bytes: int
    coalesced: int


class Outbox:
    """Thread-safe, never blocking, bounded by ``max_messages`` and ``max_bytes``."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._lanes: tuple[deque[Entry], ...] = (deque(), deque(), deque())
        self._inflight: deque[Entry] = deque()
        self._latest_progress: dict[str, Entry] = {}  # queued, not in flight
        self._latest_state: dict[str, int] = {}  # order of a workflow's newest queued state entry
        self._pending_phase: dict[str, int] = {}
        self._tombstones = 0
        self._count = 0  # live entries in lanes and in flight
        self._bytes = 0
        self._inflight_bytes = 0
        self._order = 0
        self._waiting = False
        self._holding = 0  # ``wakeups_held`` blocks in progress
        self._on_wakeup: Callable[[], None] | None = None
        self.accepted = 0
        self.delivered = 0
        self.dropped: Counter[str] = Counter()
        self.drop_reasons: Counter[str] = Counter()
        self.dropped_total = 0
        self.coalesced = 0

    # ------------------------------------------------------------------ producer side

    def put(self, entry: Entry) -> bool:
        """Queue ``entry``, shedding by policy if full; False when ``entry`` itself was shed."""
        wake = None
        with self._lock:
            if entry.lane == LANE_PROGRESS and self._coalesce(entry):
                return True  # the consumer was already woken for the entry it replaced
            self.accepted += 1
            if entry.size > self.max_bytes:
                self._count_drop(entry, "larger than the outbox byte bound")
                return False
            # Shed as many as it takes: one large entry may need several small ones to go.
            while self._count + 1 > self.max_messages or self._bytes + entry.size > self.max_bytes:
                if not self._shed_for(entry):
                    self._count_drop(entry, "outbox full")
                    return False
            self._order += 1
            entry.order = self._order
            self._lanes[entry.lane].append(entry)
            self._count += 1
            self._bytes += entry.size
            if entry.lane == LANE_PROGRESS:
                self._latest_progress[entry.workflow_id] = entry
            elif entry.lane == LANE_STATE and entry.workflow_id:
                self._latest_state[entry.workflow_id] = entry.order
                if entry.phase_sequence >= 0:
                    self._pending_phase[entry.workflow_id] = entry.phase_sequence
            if self._waiting and not self._holding:
                self._waiting = False
                wake = self._on_wakeup
        if wake is not None:
            wake()
        return True

    @contextlib.contextmanager
    def wakeups_held(self) -> Iterator[None]:
        """Put several entries with one wake-up of the consumer, after the last.

        Woken at the first of them, the client's thread takes the GIL from the producer to
        send one frame and ask for its acknowledgement, and again for the next: the parts of
        one log export went out as that many writes and pings. Puts from other threads in
        the meantime wait for the same wake-up, a few puts later.
        """
        with self._lock:
            self._holding += 1
        try:
            yield
        finally:
            wake = None
            with self._lock:
                self._holding -= 1
                if self._waiting and not self._holding:
                    self._waiting = False
                    wake = self._on_wakeup
            if wake is not None:
                wake()

    def _coalesce(self, entry: Entry) -> bool:
        """Merge ``entry`` into its workflow's queued progress, if that keeps order.

        Only ``send_progress`` bodies (``ProgressPayload``) merge, into an entry never sent (a
        resend must stay what the hub may already have). The stage and action of the older
        update are kept when the newer one has none, as the hub itself keeps them, so the hub
        ends up where both updates would have left it.
        """
        queued = self._latest_progress.get(entry.workflow_id)
        if (
            queued is None
            or not entry.workflow_id
            or queued.frame is not None
            or type(queued.body) is not ProgressPayload
            or type(entry.body) is not ProgressPayload
            or self._latest_state.get(entry.workflow_id, 0) > queued.order
        ):
            return False
        growth = entry.size - queued.size
        if growth > 0 and self._bytes + growth > self.max_bytes:
            return False  # let put() shed for it
        old, new = queued.body, entry.body
        if (not new.action_id and old.action_id) or (not new.stage and old.stage):
            new = msgspec.structs.replace(
                new, action_id=new.action_id or old.action_id, stage=new.stage or old.stage
            )
        queued.body = new
        queued.time_ns = entry.time_ns
        queued.size = entry.size
        self._bytes += growth
        self.coalesced += 1
        return True

    def reject(self, message_type: MessageType | str, reason: str) -> None:
        """Count a message that was refused before it could be queued."""
        with self._lock:
            self.accepted += 1
            self.dropped[str(message_type)] += 1
            self.drop_reasons[reason] += 1
            self.dropped_total += 1

    def _shed_for(self, incoming: Entry) -> bool:
        """Drop one queued entry to make room for ``incoming``; False if it should go instead."""
        logs, progress, state = self._lanes[LANE_LOG], self._lanes[LANE_PROGRESS], self._lanes[0]
        victim: Entry | None = None
        if self._first_live(logs):
            victim = logs.popleft()
        elif incoming.lane == LANE_LOG:
            return False
        elif incoming.lane == LANE_PROGRESS and incoming.workflow_id in self._latest_progress:
            victim = self._latest_progress.pop(incoming.workflow_id)
            victim.dropped = True  # superseded: tombstoned where it stands, skipped later
            self._tombstones += 1
            self._forget(victim, "superseded by newer progress")
            self._compact()
            return True
        elif self._first_live(progress):
            victim = progress.popleft()
        elif incoming.lane == LANE_PROGRESS:
            return False
        elif self._first_live(state):
            victim = state.popleft()
        else:
            return False  # everything left is in flight: nothing can be shed
        self._forget(victim, "outbox full")
        return True

    def _first_live(self, lane: deque[Entry]) -> bool:
        while lane and lane[0].dropped:
            lane.popleft()
            self._tombstones -= 1
        return bool(lane)

    def _compact(self) -> None:
        progress = self._lanes[LANE_PROGRESS]
        if self._tombstones > 64 and self._tombstones > len(progress) // 2:
            live = [entry for entry in progress if not entry.dropped]
            progress.clear()
            progress.extend(live)
            self._tombstones = 0

    def _forget(self, entry: Entry, reason: str) -> None:
        """Account for a queued entry that is dropped; the caller already unlinked it."""
        self._count -= 1
        self._bytes -= entry.size
        self._untrack(entry)
        self._count_drop(entry, reason)

    def _untrack(self, entry: Entry) -> None:
        if entry.lane == LANE_PROGRESS:
            if self._latest_progress.get(entry.workflow_id) is entry:
                del self._latest_progress[entry.workflow_id]
        else:
            self._unqueue_state(entry)
            pending = self._pending_phase
            if entry.phase_sequence >= 0 and pending.get(entry.workflow_id) == entry.phase_sequence:
                del pending[entry.workflow_id]

    def _unqueue_state(self, entry: Entry) -> None:
        if entry.lane == LANE_STATE and self._latest_state.get(entry.workflow_id) == entry.order:
            del self._latest_state[entry.workflow_id]

    def _count_drop(self, entry: Entry, reason: str) -> None:
        self.dropped[str(entry.type)] += 1
        self.drop_reasons[reason] += 1
        self.dropped_total += 1

    # ------------------------------------------------------------------ consumer side

    def set_wakeup(self, wakeup: Callable[[], None] | None) -> None:
        """Called (from any thread) when an entry arrives while the consumer waits."""
        with self._lock:
            self._on_wakeup = wakeup

    def take(self) -> Entry | None:
        """The oldest queued entry, moved in flight; None (and arm the wakeup) when empty."""
        with self._lock:
            best: Entry | None = None
            for lane in self._lanes:
                if self._first_live(lane) and (best is None or lane[0].order < best.order):
                    best = lane[0]
            if best is None:
                self._waiting = True
                return None
            self._lanes[best.lane].popleft()
            if best.lane == LANE_PROGRESS:
                if self._latest_progress.get(best.workflow_id) is best:
                    del self._latest_progress[best.workflow_id]
            else:
                self._unqueue_state(best)
            self._inflight.append(best)
            self._inflight_bytes += best.size
            return best

    def discard(self, entry: Entry, reason: str) -> None:
        """Drop an in-flight entry that cannot be sent (it failed to encode, say)."""
        with self._lock:
            try:
                self._inflight.remove(entry)
            except ValueError:
                return
            self._inflight_bytes -= entry.size
            self._forget(entry, reason)

    def confirm(self, count: int) -> None:
        """The hub has received the oldest ``count`` in-flight entries."""
        with self._lock:
            for _ in range(min(count, len(self._inflight))):
                entry = self._inflight.popleft()
                self._count -= 1
                self._bytes -= entry.size
                self._inflight_bytes -= entry.size
                self._untrack(entry)
                self.delivered += 1

    def largest_inflight_frame(self) -> int:
        """The length of the longest frame sent and not yet acknowledged (0 if none)."""
        with self._lock:
            return max((len(e.frame) for e in self._inflight if e.frame is not None), default=0)

    def requeue(self) -> int:
        """After a drop, put every unacknowledged entry back at the front, in order."""
        with self._lock:
            moved = len(self._inflight)
            self._inflight_bytes = 0
            while self._inflight:
                entry = self._inflight.pop()
                self._lanes[entry.lane].appendleft(entry)
                if entry.lane == LANE_PROGRESS:
                    if entry.workflow_id not in self._latest_progress:
                        self._latest_progress[entry.workflow_id] = entry
                elif (
                    entry.lane == LANE_STATE
                    and entry.workflow_id
                    and entry.order > self._latest_state.get(entry.workflow_id, 0)
                ):
                    # Back in the queue, it again orders the workflow's later progress.
                    self._latest_state[entry.workflow_id] = entry.order
            return moved

    def clear(self, reason: str) -> None:
        """Drop everything, counted (used when the client gives up or is closed)."""
        with self._lock:
            for lane in (*self._lanes, self._inflight):
                while lane:
                    entry = lane.popleft()
                    if not entry.dropped:
                        self._forget(entry, reason)
            self._tombstones = 0
            self._inflight_bytes = 0

    # ------------------------------------------------------------------ reads

    def counters(self) -> OutboxCounters:
        """Every counter at one moment, so ``accepted == delivered + dropped + queued +
        inflight`` holds in what is returned even while other threads put and take."""
        with self._lock:
            inflight = len(self._inflight)
            return OutboxCounters(
                accepted=self.accepted,
                delivered=self.delivered,
                dropped=dict(self.dropped),
                drop_reasons=dict(self.drop_reasons),
                queued=self._count - inflight,
                inflight=inflight,
                bytes=self._bytes,
                coalesced=self.coalesced,
            )

    def phase_pending(self, workflow_id: str, phase_sequence: int) -> bool:
        """Whether that transition of the workflow is queued or in flight."""
        with self._lock:
            return self._pending_phase.get(workflow_id) == phase_sequence

    @property
    def queued(self) -> int:
        with self._lock:
            return self._count - len(self._inflight)

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    @property
    def inflight_bytes(self) -> int:
        """Approximate bytes of the entries in flight."""
        with self._lock:
            return self._inflight_bytes

    @property
    def pending(self) -> int:
        """Queued plus in flight: what is not yet delivered nor dropped."""
        with self._lock:
            return self._count

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __iter__(self) -> Iterator[Entry]:
        """A snapshot of the queued entries in sending order (for tests and debugging)."""
        with self._lock:
            live = [e for lane in self._lanes for e in lane if not e.dropped]
        return iter(sorted(live, key=lambda e: e.order))
