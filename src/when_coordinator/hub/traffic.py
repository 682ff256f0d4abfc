"""What the hub keeps of the traffic with services: accepted and sent messages, bounded."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import NamedTuple, overload

from ..protocol import Message, decode
from .bounds import json_size

__all__ = ["ReceivedLog", "ReceivedMessage", "SentLog", "SentMessage"]


class ReceivedMessage(NamedTuple):
    """A message the hub accepted, with the service it is attributed to ("" if none yet)."""

    service_id: str
    message: Message


class SentMessage(NamedTuple):
    """A message the hub sent to a service."""

    service_id: str
    message: Message


class ReceivedLog(Sequence[ReceivedMessage]):
    """The hub's record of accepted messages, oldest first, bounded by ``record_limit``.

    Each is kept as its service id and the frame's text and decoded again when read (reads
    give equal messages, not the same objects). Ten thousand decoded messages, replaced at the
    rate frames arrive, were objects the garbage collector kept promoting and rescanning: under
    load, collections of tens of milliseconds every few seconds; strings it does not track.
    """

    __slots__ = ("_frames", "_maxlen", "bytes", "evicted", "max_bytes")

    def __init__(self, maxlen: int, max_bytes: int | None = None) -> None:
        self._frames: deque[tuple[str, str]] = deque()
        self._maxlen = max(1, maxlen)
        self.max_bytes = max_bytes
        self.bytes = 0
        """The length of the frames held (one frame larger than ``max_bytes`` is kept alone)."""
        self.evicted = 0

    def append(self, service_id: str, frame: str) -> None:
        frames = self._frames
        frames.append((service_id, frame))
        self.bytes += len(frame)
        limit = self.max_bytes
        while len(frames) > self._maxlen or (
            limit is not None and self.bytes > limit and len(frames) > 1
        ):
            self.bytes -= len(frames.popleft()[1])
            self.evicted += 1

    def __len__(self) -> int:
        return len(self._frames)

    def memory(self) -> dict[str, int]:
        limit = self.max_bytes if self.max_bytes is not None else 0
        return {"bytes": self.bytes, "limit": limit, "count": len(self), "evicted": self.evicted}

    @overload
    def __getitem__(self, index: int) -> ReceivedMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[ReceivedMessage]: ...

    def __getitem__(self, index: int | slice) -> ReceivedMessage | list[ReceivedMessage]:
        if isinstance(index, slice):
            return [_received(item) for item in list(self._frames)[index]]
        return _received(self._frames[index])

    def __iter__(self) -> Iterator[ReceivedMessage]:
        return map(_received, self._frames)


def _received(item: tuple[str, str]) -> ReceivedMessage:
    return ReceivedMessage(item[0], decode(item[1]))


class SentLog:
    """The hub's record of messages sent to services, oldest first, bounded by count and by
    estimated bytes (a payload by its JSON length, plus 256 for the envelope)."""

    __slots__ = ("_sizes", "bytes", "evicted", "max_bytes", "maxlen", "messages")

    def __init__(self, maxlen: int, max_bytes: int) -> None:
        self.messages: deque[SentMessage] = deque()
        self._sizes: deque[int] = deque()
        self.maxlen = max(1, maxlen)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0

    def append(self, sent: SentMessage) -> None:
        size = 256 + (json_size(sent.message.payload) if sent.message.payload else 0)
        self.messages.append(sent)
        self._sizes.append(size)
        self.bytes += size
        while len(self.messages) > self.maxlen or (
            self.bytes > self.max_bytes and len(self.messages) > 1
        ):
            self.messages.popleft()
            self.bytes -= self._sizes.popleft()
            self.evicted += 1

    def memory(self) -> dict[str, int]:
        return {
            "bytes": self.bytes,
            "limit": self.max_bytes,
            "count": len(self.messages),
            "evicted": self.evicted,
        }
