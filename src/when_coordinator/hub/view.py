"""What the operator layer (operator API, queries, metrics) may see and do of a hub.

``HubView`` is the hub as its operator-facing modules use it: read views, the four commands,
health, and ``subscribe`` for a live event stream. They type against this protocol rather than
``Hub`` itself, so they do not import the server module, which imports them: imports in the
hub point one way (server -> operator -> view -> state). ``BusHost`` is the same for the bus
between hub instances (``bus.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ..protocol import Message, StatusResponsePayload
from .changes import Changes
from .dashboard import Dashboard
from .model import ConnectionState, ServiceState, WorkflowState
from .persister import Persister
from .records import Anomaly, StoredLog
from .state import HubState

__all__ = ["BusHost", "HubView", "LatencyView", "Watcher"]


class Watcher(Protocol):
    """A subscriber to the hub's changes (an operator connection)."""

    def push(self, changes: Changes) -> None:
        """Take the changes since the last push; called on the hub's loop, must not block."""


class LatencyView(Protocol):
    """The command latency histograms, as metrics read them."""

    def samples(self) -> Iterable[str]: ...

    def summary(self) -> dict[str, dict[str, dict[str, float]]]: ...


class HubView(Protocol):
    """A running hub as the operator layer sees it (``Hub`` is one)."""

    @property
    def protocol_version(self) -> str: ...

    @property
    def command_timeout(self) -> float: ...

    @property
    def dashboard(self) -> Dashboard: ...

    @property
    def command_latency(self) -> LatencyView: ...

    @property
    def state(self) -> HubState: ...

    @property
    def services(self) -> Mapping[str, ServiceState]: ...

    @property
    def workflows(self) -> Mapping[str, WorkflowState]: ...

    @property
    def connections(self) -> Mapping[str, ConnectionState]: ...

    @property
    def anomalies(self) -> tuple[Anomaly, ...]: ...

    def logs_for(self, workflow_id: str) -> tuple[StoredLog, ...]: ...

    def memory(self) -> dict[str, dict[str, int]]: ...

    def store_health(self) -> dict[str, Any] | None: ...

    def store_status(self, now: float) -> tuple[float, int] | None: ...

    def bus_health(self) -> dict[str, Any] | None: ...

    def subscribe(self, watcher: Watcher) -> None:
        """Push every later change to ``watcher`` (and the pending ones now)."""

    def unsubscribe(self, watcher: Watcher) -> None: ...

    async def pause(
        self, workflow_id: str, reason: str = "", *, service_id: str | None = None
    ) -> Message: ...

    async def resume(
        self, workflow_id: str, from_checkpoint: str = "", *, service_id: str | None = None
    ) -> Message: ...

    async def cancel(
        self,
        workflow_id: str,
        reason: str = "",
        force: bool = False,
        *,
        service_id: str | None = None,
    ) -> Message: ...

    async def status(
        self, workflow_id: str, timeout: float = 5.0, *, service_id: str | None = None
    ) -> StatusResponsePayload: ...


class BusHost(Protocol):
    """What the bus between hub instances (``bus.py``) drives of its hub (``Hub`` is one).

    These are the hub's internals (applying another instance's changes, delivering a command
    another instance wrote), hence their private names: nothing but the bus calls them.
    """

    @property
    def state(self) -> HubState: ...

    @property
    def url(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def command_timeout(self) -> float: ...

    @property
    def _persister(self) -> Persister | None: ...

    def _apply_remote(self, apply: Callable[[], None]) -> None: ...

    def _spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    def _local_services(self) -> set[str]: ...

    async def _deliver_local(self, service_id: str, message: Message) -> None: ...

    async def _status(
        self, workflow_id: str, timeout: float, service_id: str | None, *, relay: bool
    ) -> StatusResponsePayload: ...
