"""The reference hub's server: the hub side of PROTOCOL.md on a websockets asyncio server.

One port serves everything:

- ``/v1/coordination`` and ``/ws/coordination``: the coordination protocol for services;
- ``/v1/operator``: the operator WebSocket (commands and a live event stream);
- ``/``: the web dashboard (``dashboard/``), with its sign-in at ``/v1/session``;
- ``GET /healthz``, ``GET /v1/...`` and ``POST /v1/workflows/<id>/<command>``: the operator's
  HTTP JSON API (see ``operator.py`` and docs/hub.md);
- ``GET /metrics``: Prometheus text (``metrics.py``), behind the token unless
  ``metrics_public``; any other path is a 404.

With a token, every request but ``GET /healthz`` and the dashboard's page shell and sign-in
(``routing.DASHBOARD_ROUTES``) is authenticated before it is routed, whatever its path; the
path is parsed once, by ``routing.parse_target``.

All state lives in a ``HubState`` changed only on the event loop, one received frame at a time;
after each frame the hub re-evaluates ``wait_for`` predicates, feeds operator watchers and
queues changes for the optional SQLite store, whose writes run on a worker thread.

Bad clients are contained per connection: frames that are binary, not JSON or ill-typed are
dropped and counted with their reason; frames over ``max_frame_bytes`` close that connection
with 1009; a token bucket per connection drops (and counts) frames beyond ``rate_limit`` per
second and closes with 1008 when drops within one second reach ``flood_close_after``. The loop
yields between a connection's frames every few dozen, so a flood cannot starve the others.

``Hub`` is assembled from ``front.HttpFront`` (authentication and routing),
``endpoint.ServiceEndpoint`` (the coordination connections) and ``command_path.CommandPath``
(pause, resume, cancel, status); this module keeps the lifecycle, the read views and
publishing changes (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve

from .._compat.allocator import keep_reads_off_mmap
from .._compat.websockets import DirectConnection
from .bounds import HubLimits
from .bus import Bus, InProcessBus
from .command_path import CommandPath
from .dashboard import Dashboard
from .database import is_postgres, make_store
from .endpoint import Peer, PendingStatus, ServiceEndpoint
from .errors import HubClosed, HubError, ServiceUnavailable
from .front import CredentialRedactingLogger, HttpFront, check_token
from .metrics import CommandLatency
from .model import ConnectionState, ServiceState, WorkflowState
from .persister import Persister
from .records import Anomaly, StoredLog
from .sendguard import SendBufferGuard
from .state import HubState
from .traffic import ReceivedLog, ReceivedMessage, SentLog, SentMessage
from .versions import HUB_PROTOCOL_VERSION
from .view import BusHost, HubView, Watcher
from .waiting import Waiters

__all__ = [
    "COORDINATION_PATHS",
    "OPERATOR_PATH",
    "Hub",
    "ReceivedLog",
    "ReceivedMessage",
    "SentMessage",
]

_log = logging.getLogger("when_coordinator.hub")

COORDINATION_PATHS = ("/v1/coordination", "/ws/coordination")
OPERATOR_PATH = "/v1/operator"

_T = TypeVar("_T")


class Hub(HttpFront, ServiceEndpoint, CommandPath):
    """The reference when-v3 hub: an asyncio WebSocket server plus its state and commands.

    ``async with Hub(port=0) as hub:`` starts it on a free port (``hub.url``); from synchronous
    code use ``with ThreadedHub(Hub(port=0)) as hub:``. The read views (``services``,
    ``workflows``, ``connections``, ``logs``, ``received``) show live records that change on
    the hub's event loop; ``wait_for`` is how to synchronise with them.

    ``token``: when set, every client (services and operators) must send
    ``Authorization: Bearer <token>``; others get HTTP 401 at the handshake.
    ``read_token``: a second token operators may use to watch but not steer.
    ``trace_url``: the dashboard's link to a tracing backend, ``{trace_id}`` replaced.
    ``db``: a SQLite file that keeps services, workflows and logs across restarts.
    ``ping_interval``: seconds between JSON pings to each service; a service whose oldest
    unanswered ping is older than ``pong_timeout`` (default: ``ping_interval``) is ``late``.
    ``send_buffer_bytes``, ``send_buffer_timeout``: a connection (service or operator) whose
    unsent bytes stay above the first for longer than the second has stopped reading and is
    closed (1008); so is one that a command could not be written to within
    ``command_timeout``.
    ``limits``: the byte bounds of everything the hub keeps (``HubLimits``; see ``memory()``).
    ``db_max_bytes``: a bound on the SQLite file (writes past it fail like on a full disk).
    ``db`` may also be a ``postgresql://`` URL: several instances then share the database and
    act as one (see ``bus.py``); ``instance_id`` names this one (default: random),
    ``lease_timeout`` is how long its services outlive a silent instance, ``retention`` the
    seconds finished workflows and logs are kept in PostgreSQL besides the count bounds.
    ``metrics_public``: serve ``GET /metrics`` (Prometheus text) without the token.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        read_token: str | None = None,
        trace_url: str = "",
        db: str | os.PathLike[str] | None = None,
        ping_interval: float = 30.0,
        pong_timeout: float | None = None,
        max_frame_bytes: int = 1 << 20,
        log_buffer: int = 10_000,
        workflow_log_buffer: int = 1_000,
        record_limit: int = 10_000,
        max_workflows: int = 10_000,
        rate_limit: float = 5_000.0,
        rate_burst: int = 10_000,
        flood_close_after: int | None = 20_000,
        command_timeout: float = 5.0,
        send_buffer_bytes: int = 1 << 20,
        send_buffer_timeout: float = 20.0,
        store_interval: float = 0.2,
        protocol_version: str = HUB_PROTOCOL_VERSION,
        limits: HubLimits | None = None,
        db_max_bytes: int | None = None,
        instance_id: str | None = None,
        lease_timeout: float = 15.0,
        retention: float | None = None,
        metrics_public: bool = False,
    ) -> None:
        if ping_interval <= 0:
            raise ValueError("ping_interval must be > 0 seconds")
        if rate_limit <= 0 or rate_burst < 1:
            raise ValueError("rate_limit must be > 0 and rate_burst >= 1")
        check_token(token)
        check_token(read_token, "read_token")
        self._guard = SendBufferGuard(send_buffer_bytes, send_buffer_timeout)
        self._host = host
        self._requested_port = port
        self.dashboard = Dashboard(token, read_token, trace_url=trace_url)
        """The web dashboard at ``/``, and who may watch or steer (``dashboard.access``)."""
        self._db = db
        self._db_max_bytes = db_max_bytes
        self._ping_interval = float(ping_interval)
        self._pong_timeout = float(pong_timeout if pong_timeout is not None else ping_interval)
        self._max_frame_bytes = max_frame_bytes
        self._rate = float(rate_limit)
        self._burst = float(rate_burst)
        self._flood_close_after = flood_close_after
        self.command_timeout = command_timeout
        self.protocol_version = protocol_version
        self._state = HubState(
            hub_protocol_version=protocol_version,
            log_buffer=log_buffer,
            workflow_log_buffer=workflow_log_buffer,
            max_workflows=max_workflows,
            limits=limits,
        )
        self.limits = self._state.limits
        self._received = ReceivedLog(max(1, record_limit), self.limits.received_bytes)
        self._sent = SentLog(max(1, record_limit), self.limits.received_bytes)
        self._peers: dict[str, Peer] = {}
        self._open: set[ServerConnection] = set()
        self._connection_ids = itertools.count(1)
        self._pending: dict[str, PendingStatus] = {}
        self._waiters = Waiters()
        self._subscribers: set[Watcher] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self._closed: asyncio.Event | None = None
        self._persister: Persister | None = None
        self._log_buffer = log_buffer
        self._store_interval = store_interval
        self._instance_id = instance_id
        self._lease_timeout = lease_timeout
        self._retention = retention
        self._bus: Bus = InProcessBus()
        self.metrics_public = metrics_public
        self.command_latency = CommandLatency()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Hub:
        """Bind the port (restoring the SQLite state first when ``db`` is set)."""
        if self._server is not None:
            raise HubError("hub already started")
        keep_reads_off_mmap()
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        if self._db is not None:
            store, self._instance_id = make_store(
                self._db,
                instance_id=self._instance_id,
                log_limit=self._log_buffer,
                max_bytes=self._db_max_bytes,
                retention=self._retention,
                lease_timeout=self._lease_timeout,
            )
            self._persister = Persister(self._state, store, self._store_interval, self._publish)
            try:
                snapshot = await self._persister.run(store.load)
            except (sqlite3.Error, RuntimeError) as exc:
                await self._persister.close()
                self._persister = None
                if is_postgres(self._db):
                    raise HubError(str(exc)) from exc
                raise HubError(f"cannot use the hub database {store.path}: {exc}") from exc
            self._state.restore(snapshot)
            self._state.take_changes()
            self._persister.start()
        try:
            self._server = await serve(
                self._handler,
                self._host,
                self._requested_port,
                process_request=self._process_request,
                max_size=self._max_frame_bytes,
                compression=None,
                create_connection=DirectConnection,  # services' messages taken as read
                logger=CredentialRedactingLogger(
                    logging.getLogger("when_coordinator.hub.websockets"), {}
                ),
            )
        except BaseException:
            if self._persister is not None:
                await self._persister.close()
            raise
        self._port = int(self._server.sockets[0].getsockname()[1])
        if self._persister is not None and is_postgres(self._db):
            from .bus import PostgresBus  # noqa: PLC0415
            from .pgstore import PostgresStore  # noqa: PLC0415

            store = self._persister.store
            assert isinstance(store, PostgresStore)
            self._bus = PostgresBus(self, store)
            try:
                await self._bus.start()
            except BaseException:
                await self.close()
                raise
        self._spawn(self._ping_loop())
        self._spawn(self._guard_loop())
        if self._host in ("", "0.0.0.0", "::"):  # self.url dials loopback: say so
            _log.info("hub listening on all interfaces, port %d (locally %s)", self._port, self.url)
        else:
            _log.info("hub listening on %s", self.url)
        return self

    async def close(self) -> None:
        """Close every connection (1001), fail pending commands and waiters, flush the store."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        await self._bus.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ServiceUnavailable("the hub closed"))
        self._waiters.fail_all(HubClosed("the hub closed while waiting"))
        if self._persister is not None:
            self._persister.add(self._state.take_changes())
            await self._persister.close()
        assert self._closed is not None
        self._closed.set()
        _log.info("hub on port %d closed", self._port)

    async def serve_forever(self) -> None:
        """Wait until ``close()`` is called (from a signal handler, say)."""
        if self._closed is None:
            raise HubClosed("start() the hub first")
        await self._closed.wait()

    async def __aenter__(self) -> Hub:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._server is not None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ addresses

    @property
    def host(self) -> str:
        """A host clients can dial (the wildcard addresses map to loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self._host, self._host)
        return f"[{host}]" if ":" in host else host

    @property
    def port(self) -> int:
        """The bound port (the real one when started with ``port=0``)."""
        if self._port == 0:
            raise HubClosed("the hub is not started")
        return self._port

    @property
    def url(self) -> str:
        """The coordination URL services connect to."""
        return f"ws://{self.host}:{self.port}{COORDINATION_PATHS[0]}"

    @property
    def http_url(self) -> str:
        """The base of the operator HTTP API (what ``--hub`` takes)."""
        return f"http://{self.host}:{self.port}"

    @property
    def operator_url(self) -> str:
        return f"ws://{self.host}:{self.port}{OPERATOR_PATH}"

    # ------------------------------------------------------------------ read views

    @property
    def state(self) -> HubState:
        """The underlying state (change it only through the hub)."""
        return self._state

    @property
    def services(self) -> Mapping[str, ServiceState]:
        return MappingProxyType(self._state.services)

    @property
    def workflows(self) -> Mapping[str, WorkflowState]:
        return MappingProxyType(self._state.workflows)

    @property
    def connections(self) -> Mapping[str, ConnectionState]:
        """Coordination connections, open and recently closed, by connection id."""
        return MappingProxyType(self._state.connections)

    @property
    def logs(self) -> tuple[StoredLog, ...]:
        """The hub-wide log buffer, oldest first."""
        return tuple(self._state.logs)

    @property
    def logs_evicted(self) -> int:
        """Log records the hub-wide buffer has pushed out."""
        return self._state.logs.evicted

    def logs_for(self, workflow_id: str) -> tuple[StoredLog, ...]:
        """One workflow's log buffer, oldest first."""
        return self._state.logs_for(workflow_id)

    @property
    def received(self) -> ReceivedLog:
        """Every accepted message in arrival order (bounded by ``record_limit``)."""
        return self._received

    @property
    def sent(self) -> deque[SentMessage]:
        """Every message sent to services (registered, ping, commands), in order."""
        return self._sent.messages

    @property
    def anomalies(self) -> tuple[Anomaly, ...]:
        """The most recent anomalies of the whole hub."""
        return tuple(self._state.anomalies)

    def memory(self) -> dict[str, dict[str, int]]:
        """Each retained collection's estimated bytes, its byte bound and what the bound
        evicted (see ``HubLimits``); served in ``/healthz``."""
        return {
            **self._state.memory(),
            "received": self._received.memory(),
            "sent": self._sent.memory(),
        }

    @property
    def watchers(self) -> int:
        """Operator connections currently subscribed to the event stream."""
        return len(self._subscribers)

    # ------------------------------------------------------------------ synchronisation

    async def wait_for(self, predicate: Callable[[Hub], _T], timeout: float = 5.0) -> _T:
        """Wait until ``predicate(hub)`` is truthy and return its value.

        The predicate is evaluated now and after every state change (each received frame,
        connection, ping round), synchronously, so no intermediate state is missed. An
        exception in it (say ``KeyError`` before a workflow exists) counts as false.
        Raises ``TimeoutError`` naming the predicate and its last exception.
        """
        return await self._waiters.wait(lambda: predicate(self), timeout, predicate)

    def _publish(self) -> None:
        """After any change: feed watchers and the store, then re-check waiters."""
        if self._persister is None and not self._subscribers:
            self._state.discard_changes()  # the common case, after every frame
        else:
            changes = self._state.take_changes()
            if changes:
                if self._persister is not None:
                    self._persister.add(changes)
                    if not self._subscribers:
                        self._state.give_back(changes)  # merged: reused by the next take
                for session in tuple(self._subscribers):
                    session.push(changes)
        if self._waiters:
            self._waiters.check_all()

    def _apply_remote(self, apply: Callable[[], None]) -> None:
        """Apply what another instance persisted: shown to watchers and waiters, not
        written back (this instance's own changes go to the store first)."""
        self._publish()
        apply()
        changes = self._state.take_changes()
        if changes:
            for session in tuple(self._subscribers):
                session.push(changes)
        self._waiters.check_all()

    def _local_services(self) -> set[str]:
        """The services whose connection this instance holds."""
        peers = self._peers
        return {
            conn.service_id
            for conn_id in peers
            if (conn := self._state.connections.get(conn_id)) is not None and conn.service_id
        }

    @property
    def instance_id(self) -> str | None:
        """This instance's name among those sharing a PostgreSQL database (else None)."""
        return self._instance_id if is_postgres(self._db) else None

    def bus_health(self) -> dict[str, Any] | None:
        """The bus between instances (None for a hub alone), served in ``/healthz``."""
        return self._bus.health()

    def subscribe(self, watcher: Watcher) -> None:
        self._subscribers.add(watcher)
        self._publish()

    def unsubscribe(self, watcher: Watcher) -> None:
        self._subscribers.discard(watcher)
        self._publish()

    async def flush(self) -> bool:
        """Write pending changes to the SQLite store now (no-op without ``db``); False when
        the write failed (the changes are kept and retried, see ``store_health()``)."""
        self._publish()
        if self._persister is not None:
            return await self._persister.flush()
        return True

    def store_health(self) -> dict[str, Any] | None:
        """The SQLite store's state (None without ``db``): ``ok`` is False while writes
        fail; then ``/healthz`` answers 503. Also counts writes, failures, retries, what is
        pending and what the pending bound dropped."""
        return self._persister.health() if self._persister is not None else None

    def store_status(self, now: float) -> tuple[float, int] | None:
        """(seconds the oldest unwritten change waited, failed writes); None without a store."""
        persister = self._persister
        return None if persister is None else persister.status(now)


if TYPE_CHECKING:

    def _a_hub_is_a_view(hub: Hub) -> tuple[HubView, BusHost]:  # mypy checks that it is
        return hub, hub
