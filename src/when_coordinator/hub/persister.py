"""The hub's writer to its store (SQLite or PostgreSQL): changes collected on the event
loop, written in batches on one worker thread, kept and retried when a write fails."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .bounds import json_size
from .changes import Changes, CheckpointEvent, ErrorEvent, LogEvent, PhaseEvent
from .records import StoredLog
from .state import HubState
from .store import Store, StoreBatch, summary

__all__ = ["Persister"]

_log = logging.getLogger("when_coordinator.hub")

_T = TypeVar("_T")


class Persister:
    """Collects changes on the loop and writes them to the store on one worker thread.

    A batch that fails to write (disk full, file made read-only...) is not dropped: its
    changes go back in front of what arrived since and are retried, with a growing delay up
    to ``_MAX_RETRY_DELAY``, until a write succeeds. What waits is bounded by
    ``HubLimits.store_pending_bytes``: past it the oldest pending logs are dropped (counted)
    and pending history, checkpoint and error rows are given up for a rewrite of those
    workflows' records from the live state (``resync``), which the hub bounds anyway.
    """

    def __init__(
        self,
        state: HubState,
        store: Store,
        interval: float,
        on_health: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_health = on_health
        """Called when the store starts or stops failing (the hub re-checks its waiters)."""
        self.on_phase: Callable[[PhaseEvent], None] | None = None
        """Called with each phase change collected (the PostgreSQL bus tells the other
        instances at once, not a batch later)."""
        self._state = state
        self._store = store
        self._interval = interval
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "when-hub-store")
        self._pending = Changes()
        self._records: list[tuple[str, str, Any, int]] = []
        """(workflow id, kind, record, estimated bytes) rows to append."""
        self._records_bytes = 0
        self._resync: set[str] = set()
        self._logs: deque[tuple[StoredLog, int]] = deque()
        self._logs_bytes = 0
        self._budget = state.limits.store_pending_bytes
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._batch_parts: tuple[Changes, list[Any], deque[tuple[StoredLog, int]], set[str]] = (
            Changes(),
            [],
            deque(),
            set(),
        )
        """What the batch being written was made of, to put back if the write fails."""
        self.writes = 0
        self.errors = 0
        """Batches that failed to write (each is kept and retried)."""
        self.retries = 0
        self.logs_dropped = 0
        """Pending log records dropped at ``store_pending_bytes`` while the store failed."""
        self.resyncs = 0
        self.failing = False
        self.last_error = ""
        self.failing_since = 0.0
        self._pending_since: float | None = None  # monotonic time of the oldest unwritten
        self._writing_since: float | None = None  # ... of the batch being written

    @property
    def store(self) -> Store:
        return self._store

    async def run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    def add(self, changes: Changes) -> None:
        self._pending.merge_ids(changes)
        for event in changes.events:
            if isinstance(event, LogEvent):
                size = event.size or _log_size(event.record)
                self._logs.append((event.record, size))
                self._logs_bytes += size
            elif isinstance(event, PhaseEvent):
                self._record(event.workflow_id, "history", event.change)
                if self.on_phase is not None:
                    self.on_phase(event)
            elif isinstance(event, CheckpointEvent):
                self._record(event.workflow_id, "checkpoints", event.record)
            elif isinstance(event, ErrorEvent):
                self._record(event.workflow_id, "errors", event.record)
        self._bound()
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wake.set()

    def _record(self, workflow_id: str, kind: str, record: Any, size: int | None = None) -> None:
        if workflow_id in self._resync:
            return  # its records will be rewritten whole
        if size is None:
            size = self._state.record_bytes(record)
        self._records.append((workflow_id, kind, record, size))
        self._records_bytes += size

    def _bound(self) -> None:
        """Hold what waits for the store within ``store_pending_bytes`` (see the class)."""
        limit = self._budget
        while self._logs and (
            len(self._logs) > self._store.log_limit
            or self._logs_bytes + self._records_bytes > limit
        ):
            self._logs_bytes -= self._logs.popleft()[1]
            self.logs_dropped += 1
        if self._records_bytes > limit:
            self._resync.update(row[0] for row in self._records)
            self._records.clear()
            self._records_bytes = 0
            self.resyncs += 1

    def _batch(self) -> StoreBatch:
        """Documents for what changed, taken from the live state at one moment."""
        state, pending = self._state, self._pending
        self._pending = Changes()
        batch = StoreBatch()
        for service_id in pending.services:
            service = state.services.get(service_id)
            batch.services[service_id] = service.as_dict() if service is not None else None
        for workflow_id in pending.removed_workflows:
            batch.workflows[workflow_id] = None
        for workflow_id in pending.workflows | self._resync:
            workflow = state.workflows.get(workflow_id)
            batch.workflows[workflow_id] = summary(workflow) if workflow is not None else None
        batch.records = [r[:3] for r in self._records if r[0] in state.workflows]
        for workflow_id in self._resync:
            workflow = state.workflows.get(workflow_id)
            if workflow is not None:
                batch.resync[workflow_id] = {
                    "history": workflow.history,
                    "checkpoints": workflow.checkpoints,
                    "errors": workflow.errors,
                }
        batch.logs = [record for record, _ in self._logs]
        self._batch_parts = (pending, self._records, self._logs, self._resync)
        self._records, self._records_bytes, self._resync = [], 0, set()
        self._logs, self._logs_bytes = deque(), 0
        return batch

    def _requeue(self) -> None:
        """Put a failed batch's changes back in front of what arrived meanwhile."""
        pending, records, logs, resync = self._batch_parts
        pending.merge_ids(self._pending)
        self._pending = pending
        self._resync |= resync
        newer, self._records, self._records_bytes = self._records, [], 0
        for workflow_id, kind, record, size in (*records, *newer):
            self._record(workflow_id, kind, record, size)
        logs.extend(self._logs)
        self._logs = logs
        self._logs_bytes = sum(size for _, size in logs)
        self._bound()

    async def flush(self) -> bool:
        """Write what is pending; False (the changes kept for a retry) if the write failed."""
        async with self._lock:
            batch = self._batch()
            self._writing_since, self._pending_since = self._pending_since, None
            if not batch:
                self._writing_since = None
                return True
            if self.failing:
                self.retries += 1
            try:
                await self.run(lambda: self._store.write(batch))
            except Exception as exc:
                self._requeue()
                if self._writing_since is not None:  # still unwritten since then
                    self._pending_since = min(
                        self._writing_since, self._pending_since or self._writing_since
                    )
                self._writing_since = None
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not self.failing:
                    self.failing, self.failing_since = True, time.time()
                    _log.error("hub store: a write failed (%s); kept for a retry", exc)
                    self._on_health()
                elif self.errors % 100 == 0:
                    _log.error("hub store: %d writes failed; last: %s", self.errors, exc)
                return False
            self._writing_since = None
            self.writes += 1
            if self.failing:
                self.failing = False
                _log.warning("hub store: writing again after %d failed attempts", self.errors)
                self._on_health()
            return True

    def pending(self) -> int:
        p = self._pending
        return (
            len(p.services)
            + len(p.workflows)
            + len(p.removed_workflows)
            + len(self._records)
            + len(self._resync)
            + len(self._logs)
        )

    def status(self, now: float) -> tuple[float, int]:
        """(seconds the oldest unwritten change has waited at ``now``, failed writes)."""
        oldest = min(
            (t for t in (self._pending_since, self._writing_since) if t is not None),
            default=now,
        )
        return max(0.0, now - oldest), self.errors

    def health(self) -> dict[str, Any]:
        return {
            "ok": not self.failing,
            "path": self._store.path,
            "writes": self.writes,
            "failed_writes": self.errors,
            "retries": self.retries,
            "pending": self.pending(),
            "logs_dropped": self.logs_dropped,
            "resyncs": self.resyncs,
            "last_error": self.last_error,
            "failing_since": self.failing_since if self.failing else None,
        }

    async def _loop(self) -> None:
        delay = self._interval
        while True:
            await self._wake.wait()
            await asyncio.sleep(delay)  # let changes coalesce (or the disk recover)
            self._wake.clear()
            if await self.flush():
                delay = self._interval
            else:
                delay = min(_MAX_RETRY_DELAY, max(self._interval, delay * 2))
                self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not await self.flush():
            _log.error(
                "hub store: %d changes could not be written before the hub closed: %s",
                self.pending(),
                self.last_error,
            )
        await self.run(self._store.close)
        self._executor.shutdown(wait=True)


_MAX_RETRY_DELAY = 5.0
"""Seconds between retries of a failing store, at most."""


def _log_size(record: StoredLog) -> int:
    entry = record.entry
    size = 256 + len(entry.message)
    return size + json_size(entry.fields) if entry.fields else size
