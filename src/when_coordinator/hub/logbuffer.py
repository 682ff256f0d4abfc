"""The hub's log buffers: bounded by count and bytes, kept as flat tuples the GC ignores."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..protocol import LogEntry, LogLevel
from .bounds import ITEM_OVERHEAD, json_size
from .records import StoredLog

__all__ = ["LogBuffer", "PackedLog", "pack", "packed_size", "unpack"]

PackedLog = tuple[Any, ...]


def pack(record: StoredLog) -> PackedLog:
    """A record as one flat tuple of strings and numbers, its fields as key, value, ...

    The garbage collector stops tracking a tuple of such values the first time it sees it,
    whereas every ``StoredLog`` and ``LogEntry`` object stays tracked: a hub holding a hundred
    thousand records as objects pays for scanning them all in every full collection (pauses of
    a hundred milliseconds and more under load), and nothing for them as tuples. Nesting (a
    dict, or a tuple of pairs) would keep the record tracked for several collections more.
    """
    e = record.entry
    level = e.level.value if isinstance(e.level, LogLevel) else e.level
    head = (
        record.service_id,
        record.at,
        e.timestamp,
        level,
        e.message,
        e.trace_id,
        e.span_id,
        e.workflow_id,
        e.action_id,
        e.correlation_id,
        e.source_file,
        e.source_line,
    )
    return head + tuple(itertools.chain.from_iterable(e.fields.items())) if e.fields else head


def unpack(packed: PackedLog) -> StoredLog:
    service_id, at, timestamp, level, message, trace_id, span_id, *rest = packed
    workflow_id, action_id, correlation_id, source_file, source_line, *fields = rest
    entry = LogEntry(
        timestamp=timestamp,
        level=level,
        message=message,
        trace_id=trace_id,
        span_id=span_id,
        workflow_id=workflow_id,
        action_id=action_id,
        correlation_id=correlation_id,
        fields=dict(zip(fields[::2], fields[1::2], strict=True)),
        source_file=source_file,
        source_line=source_line,
    )
    return StoredLog(entry, service_id, at)


def packed_size(packed: PackedLog) -> int:
    """Estimated bytes of a packed record: its strings by length, nested field values by
    their JSON length, and a fixed overhead per value."""
    size = ITEM_OVERHEAD
    for value in packed:
        if isinstance(value, str):
            size += len(value) + 16
        elif isinstance(value, (int, float)) or value is None:
            size += 16
        else:
            size += json_size(value) + 16
    return size


class LogBuffer:
    """A buffer of log records bounded by count and by bytes that counts what it evicted.

    Records are kept packed (see ``pack``) and rebuilt as ``StoredLog`` when read, so reads
    give equal records, not the same objects. ``max_bytes`` bounds the estimated size
    (``packed_size``); one record larger than the bound is kept alone.
    """

    __slots__ = ("bytes", "entries", "evicted", "max_bytes", "maxlen", "sizes", "total")

    def __init__(self, maxlen: int, max_bytes: int | None = None) -> None:
        self.entries: deque[PackedLog] = deque()
        self.sizes: deque[int] = deque()
        self.maxlen = max(0, maxlen)
        self.max_bytes = max_bytes
        self.bytes = 0
        """Estimated bytes held."""
        self.evicted = 0
        """Records pushed out by newer ones."""
        self.total = 0
        """Records ever appended."""

    def append(self, record: StoredLog) -> None:
        packed = pack(record)
        self.append_packed(packed, packed_size(packed))

    def append_packed(self, packed: PackedLog, size: int) -> int:
        """Append; returns the bytes evicted to make room."""
        self.total += 1
        if self.maxlen == 0:
            self.evicted += 1
            return size
        self.entries.append(packed)
        self.sizes.append(size)
        self.bytes += size
        freed = 0
        limit = self.max_bytes
        while len(self.entries) > self.maxlen or (
            limit is not None and self.bytes > limit and len(self.entries) > 1
        ):
            freed += self.pop_oldest()
        return freed

    def pop_oldest(self) -> int:
        """Evict the oldest record; returns its size."""
        self.entries.popleft()
        size = self.sizes.popleft()
        self.bytes -= size
        self.evicted += 1
        return size

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[StoredLog]:
        return map(unpack, self.entries)
