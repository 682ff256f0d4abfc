"""Run a ``Hub`` on a background thread, for synchronous code and tests.

``with ThreadedHub(Hub(port=0)) as hub:`` gives a ``ThreadedHub``: the hub's read API, and
blocking versions of its commands and of ``wait_for``. Everything runs on the hub's own event
loop; reads from another thread are taken on that loop and return copies, so a caller never
sees a record half-way through a change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..protocol import Message, StatusResponsePayload
from .errors import HubClosed
from .model import ConnectionState, ServiceState, WorkflowState
from .records import Anomaly, StoredLog

if TYPE_CHECKING:
    from .server import Hub, ReceivedMessage, SentMessage

__all__ = ["ThreadedHub"]

_T = TypeVar("_T")


class ThreadedHub:
    """A ``Hub`` running on a daemon thread with its own event loop.

    Use it as a context manager (or ``start()``/``close()``). The read properties mirror
    ``Hub``'s but return snapshots. ``wait_for(predicate)`` calls ``predicate(self)`` on the
    hub's loop after every change, so reading this handle inside a predicate is safe.
    """

    def __init__(self, hub: Hub, *, start_timeout: float = 10.0) -> None:
        self.hub = hub
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ThreadedHub:
        """Start the thread and the hub; raises what ``Hub.start()`` raised (port in use...)."""
        if self._thread is not None:
            raise RuntimeError("this ThreadedHub was already started")
        self._thread = threading.Thread(target=self._main, name="when-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError(f"the hub did not start within {self._start_timeout:g} s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.hub.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.hub.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the hub (closing its connections and flushing its store) and the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the hub thread did not stop within {timeout:g} s")

    def __enter__(self) -> ThreadedHub:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise HubClosed("the hub thread is not started")
        return self._loop

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def call(self, fn: Callable[[], _T], timeout: float = 10.0) -> _T:
        """Run ``fn()`` on the hub's loop and return its result (directly if already there,
        or once the hub has stopped, when nothing else touches its state)."""
        thread = self._thread
        if self._on_loop() or thread is None or not thread.is_alive():
            return fn()
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def run(self, coro: Awaitable[_T], timeout: float | None = None) -> _T:
        """Run a coroutine on the hub's loop and wait for its result."""
        if self._on_loop():
            raise RuntimeError("ThreadedHub.run() would deadlock when called on the hub's loop")

        async def wrapper() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return self.hub.url

    @property
    def http_url(self) -> str:
        return self.hub.http_url

    @property
    def operator_url(self) -> str:
        return self.hub.operator_url

    @property
    def port(self) -> int:
        return self.hub.port

    # ------------------------------------------------------------------ reads (snapshots)

    @property
    def services(self) -> Mapping[str, ServiceState]:
        return self.call(lambda: {k: v.copy() for k, v in self.hub.services.items()})

    @property
    def workflows(self) -> Mapping[str, WorkflowState]:
        return self.call(lambda: {k: v.copy() for k, v in self.hub.workflows.items()})

    @property
    def connections(self) -> Mapping[str, ConnectionState]:
        return self.call(lambda: {k: v.copy() for k, v in self.hub.connections.items()})

    @property
    def logs(self) -> tuple[StoredLog, ...]:
        return self.call(lambda: self.hub.logs)

    @property
    def logs_evicted(self) -> int:
        return self.call(lambda: self.hub.logs_evicted)

    def logs_for(self, workflow_id: str) -> tuple[StoredLog, ...]:
        return self.call(lambda: self.hub.logs_for(workflow_id))

    @property
    def received(self) -> list[ReceivedMessage]:
        return self.call(lambda: list(self.hub.received))

    @property
    def sent(self) -> list[SentMessage]:
        return self.call(lambda: list(self.hub.sent))

    @property
    def anomalies(self) -> tuple[Anomaly, ...]:
        return self.call(lambda: self.hub.anomalies)

    def memory(self) -> dict[str, dict[str, int]]:
        return self.call(self.hub.memory)

    def store_health(self) -> dict[str, Any] | None:
        return self.call(self.hub.store_health)

    @property
    def watchers(self) -> int:
        return self.call(lambda: self.hub.watchers)

    @property
    def closed_not_reading(self) -> int:
        return self.call(lambda: self.hub.closed_not_reading)

    # ------------------------------------------------------------------ commands

    def pause(
        self, workflow_id: str, reason: str = "", *, service_id: str | None = None
    ) -> Message:
        return self.run(self.hub.pause(workflow_id, reason, service_id=service_id))

    def resume(
        self, workflow_id: str, from_checkpoint: str = "", *, service_id: str | None = None
    ) -> Message:
        return self.run(self.hub.resume(workflow_id, from_checkpoint, service_id=service_id))

    def cancel(
        self,
        workflow_id: str,
        reason: str = "",
        force: bool = False,
        *,
        service_id: str | None = None,
    ) -> Message:
        return self.run(self.hub.cancel(workflow_id, reason, force, service_id=service_id))

    def status(
        self, workflow_id: str, timeout: float = 5.0, *, service_id: str | None = None
    ) -> StatusResponsePayload:
        return self.run(self.hub.status(workflow_id, timeout, service_id=service_id))

    def send(self, service_id: str, message: Message) -> None:
        self.run(self.hub.send(service_id, message))

    def flush(self) -> bool:
        """Write pending changes to the SQLite store now; False if the write failed."""
        return self.run(self.hub.flush())

    def wait_for(self, predicate: Callable[[ThreadedHub], _T], timeout: float = 5.0) -> _T:
        """Block until ``predicate(self)`` is truthy (re-checked on every change); see
        ``Hub.wait_for``. Raises ``TimeoutError``."""

        def check(_hub: Any) -> _T:
            return predicate(self)

        check.__wrapped__ = predicate  # type: ignore[attr-defined]
        return self.run(self.hub.wait_for(check, timeout))
