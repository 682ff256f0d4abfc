"""A loopback relay through which short-lived forked children speak to the hub over their
parent's connection.

Workers fork children: RQ's default ``Worker`` a "work horse" per job, Celery's prefork pool a
set of pool processes. If each child dialled the hub itself, the hub would see a new service
instance per child (per task, for RQ), and since it keeps a workflow with the service that
created it, a retry in another child or a revoke seen by the parent could not reach it. Instead
the worker process runs a ``Relay``: a WebSocket endpoint on 127.0.0.1 speaking the same
protocol. A child connects to it (``report_through``), the relay answers its ``register``
itself and forwards everything else on the worker's own connection; hub commands about a
workflow a child announced (pause, resume, cancel, status) go back down to that child, whose
``safe_point()`` honours them. The hub sees one service instance per worker process.

The relay runs in the worker's main process, which hands out the next task: each child's
frames are taken as they are read (``_compat.websockets.DirectConnection``) and passed on
together once a read is done, with one wake-up of the worker's client thread
(``Coordinator.send_frames``): the fewer and shorter the turns its threads take the GIL
from that process, the sooner the next task goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from opentelemetry import trace
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..._compat.otel import get_logger_provider
from ..._compat.websockets import DirectConnection
from ...client import CommandEvent, Coordinator
from ...client.connection import JOINED_FRAMES
from ...protocol import (
    Message,
    MessageType,
    Phase,
    RegisteredPayload,
    encode,
)
from ..tracking import get_coordinator, set_coordinator
from .tasks import report_from_this_process

__all__ = [
    "CHILD_WRITE_DELAY",
    "POOL_WRITE_DELAY",
    "Relay",
    "deliver_and_close",
    "relay_of_this_process",
    "report_through",
    "report_to_parent",
]

_log = logging.getLogger(__name__)

ORDER_WAIT = 5.0
"""Seconds at most that a child's reports wait for another child's reports of the same
workflow (``Relay._in_turn``)."""
CHILD_WRITE_DELAY = 0.002
"""Seconds a child's client lets its reports gather before writing them to the relay: the
default, for a child that lives for one job (RQ's work horse); its exit (``flush``, ``close``)
does not wait the delay out."""
POOL_WRITE_DELAY = 0.2
"""The same for a pool process that runs task after task (Celery's prefork pool): every write
wakes the relay's thread, then the worker's client thread, and each wake-up takes the GIL from
the worker's main thread, which hands the pool its next task. Gathered for 200 ms, a busy
pool's reports of many tasks go in one write; the hub sees them that much later (a pool
process that exits, say after ``--max-tasks-per-child``, flushes at once, and answers to the
hub go at once). Each write, with its acknowledgement, costs the three threads on the way
about 1.7 ms of CPU whatever it carries: at 50 ms a busy pool's link cost 220 us of CPU a
task, at 200 ms about 180 (``docs/performance.md``, figure [10], fourth round)."""
_TERMINAL = frozenset(phase.value for phase in Phase if phase.is_terminal)


class _PeekPayload(msgspec.Struct):
    """What the relay reads of a payload; every other field passes through unread."""

    workflow_id: Any = ""
    source: Any = msgspec.field(default="", name="from")
    to: Any = ""
    protocol_version: Any = ""


class _Peek(msgspec.Struct):
    """A child's frame as the relay reads it: the envelope, checked, and ``_PeekPayload``."""

    id: str
    type: str
    workflow_id: str = ""
    timestamp: str = ""
    payload: _PeekPayload = msgspec.field(default_factory=_PeekPayload)


_peek = msgspec.json.Decoder(_Peek).decode
_TYPES: dict[str, MessageType | str] = {kind.value: kind for kind in MessageType}


class _Report(msgspec.Struct):
    """A child's frame to pass on: its text as the child encoded it, and what the relay read."""

    text: str
    kind: MessageType | str
    peek: _Peek
    workflow_id: str


class _ChildStream:
    """One child's connection: its frames handled in order, each as it is read (on the
    relay's loop, from ``DirectConnection``'s ``data_received``: a future and a task step per
    frame through ``recv()`` were most of the relay's time in the worker's main process).
    Behind a report held for another child's (``Relay._in_turn``), the rest of this child's
    frames wait their turn."""

    def __init__(self, relay: Relay, ws: ServerConnection) -> None:
        self.relay = relay
        self.ws = ws
        self.joined = ws.subprotocol == JOINED_FRAMES
        """The child sends a write's messages in one frame (``Config.joined_frames``)."""
        self.waiting: deque[str | bytes] | None = None
        """Frames behind a held report (None while none is held): what the child sends in the
        ``ORDER_WAIT`` seconds a hold lasts at most, its own reports of its own tasks."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordering: asyncio.Task[None] | None = None
        self._passing: list[tuple[str, MessageType | str, str]] = []
        """This read's reports, noted and due to the worker's connection (``after_read``)."""

    def take(self, frame: str | bytes) -> None:
        if self.joined and isinstance(frame, str) and "\n" in frame:
            self.relay.joined += 1
            for message in frame.split("\n"):
                self.take(message)
            return
        if self.waiting is not None:
            self.waiting.append(frame)
            return
        report = self.relay._read(frame, self)
        if report is None:
            return
        if self.relay._must_wait(report, self.ws):
            self.after_read()  # what came before it goes first
            self.waiting = deque()
            self._ordering = self.spawn(self._in_order(report))
            return
        self._passing.append(self.relay._noted(report, self.ws))

    def after_read(self) -> None:
        """Queue this read's reports together: one wake-up of the worker's client thread."""
        if self._passing:
            passing, self._passing = self._passing, []
            self.relay.coordinator.send_frames(passing)

    async def _in_order(self, report: _Report | None) -> None:
        relay, ws, waiting = self.relay, self.ws, self.waiting
        assert waiting is not None
        try:
            while report is not None:
                if relay._must_wait(report, ws):
                    payload = report.peek.payload
                    await relay._in_turn(report.workflow_id, payload.source, payload.to, ws)
                relay._pass(report, ws)
                report = None
                while waiting and report is None:
                    report = relay._read(waiting.popleft(), self)
        except Exception:
            _log.warning(
                "the relay failed on a child's report; closing its connection", exc_info=True
            )
            await ws.close(1011, "internal error")
        finally:
            self.waiting = None

    async def send(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(text)

    def spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)  # held: the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)
        return task

    async def finished(self) -> None:
        """Wait for the reports held in ``_in_order`` to go out."""
        ordering = self._ordering
        if ordering is not None:
            with contextlib.suppress(Exception):
                await ordering


class Relay:
    """See the module docstring. ``start()`` returns the ``ws://`` URL children dial."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.dropped = 0
        """Frames from children that are not a JSON message envelope (dropped, never
        forwarded). The rest goes to the hub as it came, which checks the payloads."""
        self.joined = 0
        """Frames from children that carried several messages (``Config.joined_frames``)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._owners: dict[str, ServerConnection] = {}
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.url = ""
        self.token = secrets.token_urlsafe(24)
        """What children present (``Authorization: Bearer``): only they may speak as the worker,
        whatever else runs on the machine."""
        self._unsubscribe: Callable[[], None] | None = None
        self._default_status: Callable[[Message], None] | None = None
        self._progressed: asyncio.Event | None = None
        """Set (and replaced) on the relay's loop whenever a child reports a phase or a child
        connection ends: what a held report waits for (``_in_turn``)."""
        self._held = 0
        """Reports waiting in ``_in_turn`` now (on the relay's loop)."""

    def start(self, timeout: float = 10.0) -> str:
        ready = threading.Event()
        thread = threading.Thread(target=self._main, args=(ready,), name="when-relay", daemon=True)
        thread.start()
        if not ready.wait(timeout) or not self.url:
            raise RuntimeError("the relay did not start")
        # Refused by the worker's own phase manager (it does not run these workflows) and
        # forwarded to the child that does.
        self._unsubscribe = self.coordinator.on_command(self._on_command)
        # A status request is answered by the child running the workflow, else as usual.
        self._default_status = self.coordinator._defaults.get(MessageType.STATUS)
        self.coordinator.on_message(MessageType.STATUS, self._on_status)
        return self.url

    def close(self) -> None:
        """Stop serving (children still connected are disconnected)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
            self.coordinator.on_message(MessageType.STATUS, None)
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(server.close)

    def _main(self, ready: threading.Event) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._progressed = asyncio.Event()
            try:
                self._server = await serve(
                    self._handle,
                    "127.0.0.1",
                    0,
                    max_size=self.coordinator.config.max_frame_bytes,
                    process_request=self._check,
                    select_subprotocol=_joined_if_offered,
                    create_connection=DirectConnection,
                )
                port = next(iter(self._server.sockets)).getsockname()[1]
                self.url = f"ws://127.0.0.1:{port}/v1/coordination"
            finally:
                ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

        try:
            asyncio.run(run())
        except Exception:
            _log.warning("the relay stopped", exc_info=True)

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        presented = request.headers.get("Authorization", "")
        if hmac.compare_digest(presented.encode(), f"Bearer {self.token}".encode()):
            return None
        return connection.respond(HTTPStatus.UNAUTHORIZED, "not a child of this worker\n")

    @property
    def held(self) -> int:
        """Children's reports held back now, waiting for another child's (``_in_turn``)."""
        return self._held

    def phase_of(self, workflow_id: str) -> str:
        """The last phase a child reported for ``workflow_id`` ("" when none)."""
        with self._lock:
            return self._phases.get(workflow_id, "")

    def forget(self, workflow_id: str) -> None:
        with self._lock:
            self._phases.pop(workflow_id, None)
            self._owners.pop(workflow_id, None)

    async def _handle(self, ws: ServerConnection) -> None:
        stream = _ChildStream(self, ws)
        try:
            if isinstance(ws, DirectConnection) and ws.direct(stream.take, stream.after_read):
                await ws.wait_closed()  # every frame is taken as it is read
            else:
                async for frame in ws:
                    stream.take(frame)
                    stream.after_read()
        except ConnectionClosed:
            pass
        finally:
            await stream.finished()  # a report held for another child's goes out first
            with self._lock:
                for workflow_id in [k for k, v in self._owners.items() if v is ws]:
                    del self._owners[workflow_id]
            self._progress()

    def _read(self, frame: str | bytes, stream: _ChildStream) -> _Report | None:
        """A child's frame as a report to pass on; None for what ends here: a frame that is
        not a message envelope (counted in ``dropped``), ``register`` (answered here) and
        ``pong``."""
        try:
            text = frame if isinstance(frame, str) else frame.decode()
            peek = _peek(text)
        except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            self.dropped += 1
            return None
        kind = _TYPES.get(peek.type, peek.type)
        if kind is MessageType.REGISTER:
            stream.spawn(stream.send(encode(self._registered(peek.payload.protocol_version))))
            return None
        if kind is MessageType.PONG:
            return None
        workflow_id = peek.workflow_id or peek.payload.workflow_id
        return _Report(text, kind, peek, workflow_id if isinstance(workflow_id, str) else "")

    def _must_wait(self, report: _Report, ws: ServerConnection) -> bool:
        return (
            report.kind is MessageType.PHASE_CHANGED
            and bool(report.workflow_id)
            and self._behind(report.workflow_id, report.peek.payload.source, ws)
        )

    def _behind(self, workflow_id: str, source: Any, ws: ServerConnection) -> bool:
        """Whether a phase change from ``source`` would overtake another live child's report
        of ``source`` (see ``_in_turn``)."""
        if not isinstance(source, str) or not source:
            return False
        with self._lock:
            owner = self._owners.get(workflow_id)
            last = self._phases.get(workflow_id, "")
        return not (owner is None or owner is ws or last == source or last in _TERMINAL)

    def _noted(self, report: _Report, ws: ServerConnection) -> tuple[str, MessageType | str, str]:
        """Note ``report``'s workflow and phase as ``ws``'s; what ``send_frames`` takes of it.

        Passed through as the child encoded it: decoding and encoding it again here cost the
        worker's main process more than the rest of the hop."""
        peek = report.peek
        self._note(report.workflow_id, report.kind, peek.payload.to, ws)
        return report.text, report.kind, peek.workflow_id

    def _pass(self, report: _Report, ws: ServerConnection) -> None:
        self.coordinator.send_frame(*self._noted(report, ws))

    def _progress(self) -> None:
        """Wake the reports held in ``_in_turn`` (on the relay's loop)."""
        event = self._progressed
        if event is not None:
            self._progressed = asyncio.Event()
            event.set()

    async def _in_turn(self, workflow_id: str, source: Any, to: Any, ws: ServerConnection) -> None:
        """Hold a child's phase change until the phase it continues from has been forwarded,
        while another live child still owns the workflow (at most ``ORDER_WAIT`` seconds).

        A retried task's next attempt may run in another pool process, and start, even
        finish, before the process that ran the attempt before has sent its retry (the
        recoverable ``error``, ``pausing``, ``paused``): Celery publishes the retry before it
        fires ``task_retry``, and each child has its own connection here. Forwarded as they
        come, the hub saw the workflow complete, then pause. Waiting here keeps one
        workflow's reports in order at the hub; only this child's stream of reports waits,
        never its tasks. A workflow this relay has not seen, or whose owner is gone or done,
        is forwarded at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ORDER_WAIT
        while self._behind(workflow_id, source, ws):
            remaining = deadline - loop.time()
            event = self._progressed
            if remaining <= 0 or event is None:
                _log.warning(
                    "%s: forwarding %s -> %s from one pool process before another's report "
                    "of %s (it did not come within %.0f s)",
                    workflow_id,
                    source,
                    to,
                    source,
                    ORDER_WAIT,
                )
                return
            self._held += 1
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
            finally:
                self._held -= 1

    def _registered(self, version: Any) -> Message:
        return Message.create(
            RegisteredPayload(
                service_id=self.coordinator.service_id,
                instance_id=self.coordinator.config.instance_id,
                message="relayed by the worker process",
                protocol_version=version if isinstance(version, str) and version else "1.0",
            )
        )

    def _note(
        self, workflow_id: str, kind: MessageType | str, to: Any, ws: ServerConnection
    ) -> None:
        if not workflow_id:
            return
        phase = kind is MessageType.PHASE_CHANGED and isinstance(to, str)
        with self._lock:
            self._owners[workflow_id] = ws
            if phase:
                self._phases[workflow_id] = to
        if phase and self._held:
            self._progress()

    def _on_command(self, event: CommandEvent) -> None:
        if event.message is not None:
            self._forward(event.workflow_id, event.message)

    def _on_status(self, message: Message) -> None:
        if not self._forward(message.target_workflow_id(), message):
            default = self._default_status
            if default is not None:
                default(message)

    def _forward(self, workflow_id: str, message: Message) -> bool:
        """Send ``message`` to the child running ``workflow_id``; False when there is none."""
        with self._lock:
            ws = self._owners.get(workflow_id)
        loop = self._loop
        if ws is None or loop is None or os.getpid() != self._pid:
            return False
        frame = encode(message)

        async def forward() -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(frame)

        asyncio.run_coroutine_threadsafe(forward(), loop)
        return True


def _joined_if_offered(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """A child that offers to join its messages into frames does (``Config.joined_frames``);
    any other speaks one message a frame."""
    return Subprotocol(JOINED_FRAMES) if JOINED_FRAMES in offered else None


def report_through(url: str, token: str, *, write_delay: float = CHILD_WRITE_DELAY) -> Coordinator:
    """In a forked child: report through the relay at ``url`` (its ``token``) from now on,
    gathering reports for ``write_delay`` seconds before each write.

    The child gets a coordinator of its own (the inherited one belongs to the parent), and the
    ``when`` instrumentor's span processor and log exporter are pointed at it.
    """
    from ..instrumentor import active_instrumentor  # noqa: PLC0415 - import cycle

    inherited = get_coordinator()
    config = inherited.config.with_changes(
        when_url=url,
        auth_token=token,
        ca_file="",
        client_cert_file="",
        client_key_file="",
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.5,
        # A task's reports come in two bursts (its start, its end) a moment apart: in one
        # write to the relay, not one per message, each waking the worker's main process.
        write_delay=write_delay,
        # And each write in one frame: dozens fewer to make and mask here and to parse in the
        # worker's main process.
        joined_frames=True,
    )
    coordinator = Coordinator(config)
    coordinator.connect()
    # Registered before any workflow starts: a workflow already running when ``registered``
    # arrives would have its phase replayed, a duplicate at the hub. The relay is local.
    coordinator.wait_registered(2.0)
    set_coordinator(coordinator)
    instrumentor = active_instrumentor()
    if instrumentor is not None:
        instrumentor.use(coordinator)
    return coordinator


# ---------------------------------------------------------------------- one relay per worker

_lock = threading.Lock()
_relay: Relay | None = None
_child: tuple[int, Coordinator] | None = None  # (pid, its coordinator) in a child


def relay_of_this_process() -> Relay | None:
    """The worker process's relay, started on first use (before it forks its children);
    None without a hub to relay to."""
    global _relay  # noqa: PLW0603 - one relay per worker process
    with _lock:
        if _relay is None or _relay._pid != os.getpid():
            coordinator = get_coordinator()
            if not coordinator.config.enabled:
                return None
            relay = Relay(coordinator)
            relay.start()
            _relay = relay
        return _relay


def report_to_parent(*, write_delay: float = CHILD_WRITE_DELAY) -> Coordinator | None:
    """In a child forked from a process that started its relay: report through it (once per
    process; the coordinator it reports with, None where there is no parent relay);
    ``write_delay`` as in ``report_through``."""
    global _child  # noqa: PLW0603 - one per child process
    relay, pid = _relay, os.getpid()
    if relay is None or relay._pid == pid:
        return None
    with _lock:
        if _child is None or _child[0] != pid:
            _child = (pid, report_through(relay.url, relay.token, write_delay=write_delay))
        return _child[1]


def report_from_worker_process(*, write_delay: float = CHILD_WRITE_DELAY) -> None:
    """In a worker's child process: through the parent's relay where it started one (so the
    whole worker is one service at the hub, and a retry in any child, or the parent's own
    report of a revoke, stays with the workflow's owner); on a connection of its own where
    there is none (a child started fresh, by spawn or forkserver)."""
    try:
        if report_to_parent(write_delay=write_delay) is not None:
            return
    except Exception:
        _log.warning("cannot report through the worker's relay", exc_info=True)
    report_from_this_process()


def deliver_and_close() -> None:
    """In a child about to exit (often with ``os._exit``): hand what the SDK pipelines and the
    coordinator hold to the parent, within the close timeout."""
    child = _child
    if child is None or child[0] != os.getpid():
        return
    coordinator = child[1]
    timeout = coordinator.config.close_timeout
    for provider in (trace.get_tracer_provider(), get_logger_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            try:
                flush(int(timeout * 1000))
            except Exception:
                _log.debug("flushing %r failed", provider, exc_info=True)
    coordinator.close(timeout=timeout)
