"""``asyncio.timeout`` where the interpreter has it (3.11 and later), ``asyncio.wait_for`` before.

``wait_for`` runs a coroutine as a task of its own, and resumes its caller through callbacks:
turns of the event loop before the caller goes on, even when what it waited for was already
done or finishes without waiting. On a busy hub a turn of its loop is the time to read every
frame that came in meanwhile: a command's send to its service took p50 1.1 ms, p90 4.3 ms and
p99 8.3 ms that way in figure [8] (docs/performance.md). ``asyncio.timeout`` waits in place.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

_T = TypeVar("_T")

if sys.version_info >= (3, 11):

    async def within(awaitable: Awaitable[_T], timeout: float) -> _T:
        """``await awaitable``, or ``asyncio.TimeoutError`` after ``timeout`` seconds (the
        awaitable then cancelled, as ``wait_for`` does)."""
        async with asyncio.timeout(timeout):
            return await awaitable

else:  # pragma: no cover - the interpreters before 3.11

    async def within(awaitable: Awaitable[_T], timeout: float) -> _T:
        """``await awaitable``, or ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(awaitable, timeout)
