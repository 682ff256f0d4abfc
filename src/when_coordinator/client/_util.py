"""Small helpers the client shares: rate-limited logging and size estimates."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..protocol.payloads import WireLog

__all__ = [
    "RateLimitedLog",
    "WireLog",
    "WireLogBatch",
    "approx_size",
    "describe_error",
    "jsonable",
    "log_size",
    "warn_once",
]


class RateLimitedLog:
    """Log one line per key per ``interval``, saying how many similar lines were held back.

    A hub that floods bad frames, or an outbox that sheds thousands of logs a second, must not
    turn into a flood of local log lines.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-self._interval, 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, message, *args, exc_info=exc_info)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(logger: logging.Logger, key: str, message: str, *args: object) -> None:
    """Log a configuration hint once per process: it does not change by repeating it, and a
    retry loop must not turn it into a flood."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message, *args)


def describe_error(error: object) -> str:
    """``"Type: text"`` for an exception (or the text itself), never raising: an object whose
    ``__str__`` fails gets a fallback naming its type, so reporting an error cannot become
    another error in the caller's code."""
    if isinstance(error, str):
        return error
    name = type(error).__name__
    try:
        text = str(error)
    except Exception:
        return f"{name}: <str() failed>"
    return f"{name}: {text}"


class WireLogBatch(list[WireLog]):
    """Log entries already in wire form (``WireLog``): the log exporter's, with no conversion
    left for the client thread but encoding. Sent as ``log_batch`` messages of at most
    ``max_entries`` each (0: no limit but the frame size), queued together."""

    __slots__ = ("max_entries",)

    def __init__(self, entries: Iterable[WireLog] = (), max_entries: int = 0) -> None:
        super().__init__(entries)
        self.max_entries = max_entries


def log_size(message: str, fields: Mapping[str, Any] | None) -> int:
    """The outbox's estimate for one log entry, also what log batches are split by.

    It runs on the caller's thread, so it is cheap rather than exact: text that is not ASCII
    counts six bytes a character, as JSON escapes it (``\\u00e9``); containers are walked a
    few levels (``approx_size``); other values count 64 bytes.
    """
    size = 160 + (len(message) if message.isascii() else 6 * len(message))
    if fields:
        for key, value in fields.items():
            size += len(key)
            if isinstance(value, str):
                size += len(value) if value.isascii() else 6 * len(value)
            elif value is None or type(value) in _SCALARS:  # before the Mapping ABC: slow
                size += 64
            elif isinstance(value, (list, tuple, Mapping)):
                size += approx_size(value)
            else:
                size += 64
    return size


_SCALARS = frozenset({bool, int, float})


def approx_size(value: Any, depth: int = 0) -> int:
    """A cheap estimate of a value's JSON size, for the outbox's byte bound.

    Exact sizes would need encoding on the caller's thread, which is what the outbox exists to
    avoid; an estimate that counts strings and walks containers a few levels is close enough to
    bound memory.
    """
    if isinstance(value, str):
        return len(value) + 3
    if value is None or isinstance(value, (bool, int, float)):
        return 8
    if depth >= 4:
        return 64
    if isinstance(value, Mapping):
        return 2 + sum(len(str(k)) + 4 + approx_size(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 2 + sum(approx_size(v, depth + 1) + 1 for v in value)
    return 64


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy of user data: unknown objects become their ``str``.

    Log fields come from arbitrary application code (datetimes, exceptions, UUIDs); the hub
    should see them as text rather than lose the whole record.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= 16:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def qualified_name(exc: BaseException) -> str:
    """An exception's fully qualified class name (``error.type`` in the semantic conventions);
    builtins keep their short name."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
