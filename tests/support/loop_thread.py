"""Test servers that run on an asyncio loop of their own thread, and the one way to wait for
what they record."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["LoopThread", "wait_on"]

_S = TypeVar("_S", bound="LoopThread")


def wait_on(
    cond: threading.Condition,
    check: Callable[[], object],
    timeout: float,
    what: object,
    poll: float | None = None,
) -> None:
    """Wait on ``cond`` until ``check()`` is true; ``AssertionError`` naming ``what`` after
    ``timeout`` s. ``poll`` caps each wait, for state whose changes nobody notifies."""
    deadline = time.monotonic() + timeout
    with cond:
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            cond.wait(remaining if poll is None else min(remaining, poll))


class LoopThread:
    """``with`` starts the server and returns once ``_main`` has set ``started`` (it listens);
    leaving the block sets ``_stop`` on its loop and joins the thread. ``_main`` sets
    ``_loop`` and ``_stop`` and notifies ``_cond`` when something happens."""

    thread_name = "loop-thread"
    poll: float | None = None

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self: _S) -> _S:
        started = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(started)), name=self.thread_name, daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError(f"{self.thread_name} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self, started: threading.Event) -> None:
        raise NotImplementedError

    def wait_for(
        self: _S, predicate: Callable[[_S], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        wait_on(self._cond, lambda: predicate(self), timeout, what or predicate, self.poll)
