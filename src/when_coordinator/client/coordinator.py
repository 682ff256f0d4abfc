"""The ``Coordinator``: one resilient WebSocket from a service to its when-v3 hub.

Application threads (and asyncio tasks) only enqueue into a bounded outbox; one background
thread runs an asyncio loop (``session.Session``) that encodes, sends, reads, answers the hub
and re-dials after any failure, driving the sans-I/O ``core.ClientCore``. This module is the
public face: the sending API, callbacks, and the process hooks (exit, fork). Nothing here
blocks or raises into the host application except for argument errors (``TypeError`` /
``ValueError``) and the explicitly blocking ``wait_registered`` and ``flush``.

Delivery: a message counts as delivered when the hub's WebSocket layer acknowledged it, that is
when a ping sent after it got its pong. On a drop, everything not yet acknowledged goes back to
the front of the outbox and is sent again after reconnecting, so workflow state survives a drop
at the price of a rare duplicate at the drop boundary.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from ..phase_manager import PhaseError, PhaseManager, PhaseState
from ..protocol import (
    CheckpointPayload,
    ErrorPayload,
    Message,
    MessageType,
    ProgressPayload,
    RegisteredPayload,
    WorkflowCreatedPayload,
)
from ._checks import check_progress, check_text, check_timeout, check_workflow
from ._util import RateLimitedLog, approx_size, describe_error, warn_once
from .config import Config, url_hint
from .connection import ssl_context
from .core import ClientCore, CommandEvent
from .encoding import phase_changed_payload
from .logsending import LogSending
from .outbox import Entry, QueuedBody
from .session import MessageHandler, Session
from .stats import CoordinatorStats

__all__ = ["CommandEvent", "Coordinator", "CoordinatorStats", "MessageHandler"]

_log = logging.getLogger("when_coordinator.client")


class LogSource(Protocol):
    """What buffers log entries for a coordinator (``LogForwarder``): flushed before it closes."""

    def flush_to_coordinator(self, *, final: bool) -> None: ...


class Coordinator(LogSending):
    """A service's connection to the hub; see the module docstring for the guarantees.

    Callbacks (``on_connected``, ``on_message`` handlers, ...) run on the client's thread:
    keep them quick. Their exceptions are logged and swallowed.
    """

    def __init__(self, config: Config | None = None, *, phases: PhaseManager | None = None):
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a Config, got {type(config).__name__}")
        if phases is not None and not isinstance(phases, PhaseManager):
            raise TypeError(f"phases must be a PhaseManager, got {type(phases).__name__}")
        self.config = config if config is not None else Config.from_env()
        self._phases = phases if phases is not None else PhaseManager()
        self._warn = RateLimitedLog(_log)
        self._core = ClientCore(self.config, self._phases, warn=self._warn)
        self._ssl = ssl_context(self.config)
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._drained = threading.Condition()
        self._registered = threading.Event()
        self._closed = False
        self._forked = False
        self._retainers: weakref.WeakSet[object] = weakref.WeakSet()
        self._exit_pending = False
        self._exit_spent: float | None = None
        """Seconds the exit path waited so far (None: the process is not exiting)."""
        self._log_sources: weakref.WeakSet[LogSource] = weakref.WeakSet()
        self._handlers: dict[str, MessageHandler] = {}
        self._callbacks: dict[str, list[Callable[..., Any]]] = {
            "connected": [],
            "disconnected": [],
            "registered": [],
            "command": [],
            "pong": [],
        }
        self._defaults: dict[str, Callable[[Message], None]] = {
            MessageType.REGISTERED: self._on_registered,
            MessageType.PING: self._on_ping,
            MessageType.STATUS: self._on_status,
            MessageType.PAUSE: self._on_command,
            MessageType.RESUME: self._on_command,
            MessageType.CANCEL: self._on_command,
        }
        self._session = self._new_session()
        self._unsubscribe = self._phases.on_phase_changed(self._on_phase_changed)
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: _reset_after_fork(ref))

    def _new_session(self) -> Session:
        return Session(
            self.config,
            self._core,
            ssl_context=self._ssl,
            handler_for=self._handler_for,
            fire=self._fire,
            changed=self._notify_drained,
            ended=self._connection_ended,
            warn=self._warn,
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def phases(self) -> PhaseManager:
        """The phase manager whose every transition this client reports."""
        return self._phases

    @property
    def service_id(self) -> str:
        """The service id: configured, else the one the hub assigned in ``registered``."""
        return self._core.service_id

    @property
    def hub_protocol_version(self) -> str:
        """The protocol version the hub announced in its last ``registered``."""
        return self._core.hub_protocol_version

    @property
    def _control(self) -> deque[Message]:
        """The replies due to the hub (tests watch their bound)."""
        return self._core.replies

    @property
    def is_connected(self) -> bool:
        return self._session.ws is not None

    @property
    def is_registered(self) -> bool:
        return self._registered.is_set()

    def connect(self) -> None:
        """Start the client thread, which dials the hub and keeps re-dialling; returns at once.

        Without a ``when_url`` nothing connects (and messages are counted as dropped).
        """
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this Coordinator is closed; create a new one")
            if self._forked:
                self._forked = False
                self._core.reset_outbox()  # what the quiet child refused is not this one's
            if self._thread is not None or not self.config.enabled:
                if not self.config.enabled:
                    _log.info("when_url is not set: not connecting to a hub")
                return
            for url in self.config.urls:
                hint = url_hint(url)
                if hint:
                    warn_once(_log, f"url path {url}", "%s", hint)
            ready = threading.Event()
            self._thread = threading.Thread(
                target=self._run_thread, args=(ready,), name="when-coordinator", daemon=True
            )
            self._thread.start()
            ready.wait(5.0)

    def _run_thread(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._session.run(ready))
        except Exception:  # a bug, not a network failure: never let it kill the host
            _log.exception("when-coordinator client thread failed")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._notify_drained()

    def _connection_ended(self) -> None:
        self._registered.clear()

    def _notify_drained(self) -> None:
        """Wake the threads waiting in ``flush()``: something was delivered, or dropped."""
        with self._drained:
            self._drained.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Hand over what the attached log forwarders buffer, deliver what is queued within
        ``timeout`` (default ``config.close_timeout``), then close with code 1000 and join the
        thread. Idempotent; what is left is counted dropped, with one warning."""
        timeout = self.config.close_timeout if timeout is None else check_timeout(timeout)
        if timeout is None:
            raise ValueError("close() needs a finite timeout: it must not hang the host")
        deadline = time.monotonic() + max(timeout, 0.0)
        self._flush_log_sources(final=True)
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None and self._session.running:
            own_thread = thread is threading.current_thread()  # close() from a callback
            if not own_thread:
                self.flush(timeout)
            self._session.stop()
            if not own_thread:
                thread.join(max(deadline - time.monotonic(), 0.0) + 2.0)
        outbox = self._core.outbox
        before = outbox.counters().dropped
        outbox.clear("coordinator closed")
        left = {
            kind: count - before.get(kind, 0)
            for kind, count in outbox.counters().dropped.items()
            if count > before.get(kind, 0)
        }
        if left and self.config.enabled:
            _log.warning(
                "closed with %d message(s) undelivered, dropped (%s); see stats()",
                sum(left.values()),
                ", ".join(f"{kind}: {count}" for kind, count in sorted(left.items())),
            )
        self._unsubscribe()

    def attach_log_source(self, source: LogSource) -> None:
        """Have ``close()`` and the exit handler flush ``source`` first (a ``LogForwarder``, and
        so a ``CoordinatorLogHandler`` feeding one): what it buffers is then queued before the
        last delivery. Held weakly, so an attached source can still be collected."""
        self._log_sources.add(source)

    def _flush_log_sources(self, *, final: bool) -> None:
        for source in tuple(self._log_sources):
            try:
                source.flush_to_coordinator(final=final)
            except Exception:
                _log.warning("flushing %r before closing failed", source, exc_info=True)

    @contextlib.contextmanager
    def exit_wait(self) -> Iterator[float]:
        """One wait of the exit path: yields the seconds it may take and counts what it took.

        Several exit handlers wait on this coordinator in turn (the instrumentor's, this one's,
        an exporter's final shutdown, the last ``release()``), with other handlers, such as the
        SDK's own exporters, running in between: all of ours share one ``close_timeout``, so
        with a hub that is slow or gone the process exits at most ``close_timeout`` later than
        it would without this package.
        """
        if self._exit_spent is None:
            self._exit_spent = 0.0
        started = time.monotonic()
        try:
            yield max(self.config.close_timeout - self._exit_spent, 0.0)
        finally:
            self._exit_spent += time.monotonic() - started

    def flush_final(self) -> bool:
        """Flush before the end, within ``close_timeout`` or, once the process is exiting,
        within what is left of the exit path's one ``close_timeout``."""
        if self._exit_spent is None:
            return self.flush(self.config.close_timeout)
        with self.exit_wait() as budget:
            return self.flush(budget)

    def retain(self, owner: object) -> None:
        """Keep the connection open at interpreter exit until ``owner`` calls ``release()``.

        For exporters whose last export runs in an exit handler registered before this
        coordinator's (the SDK providers' shutdown): the exit handler only flushes while any
        owner remains, and the last ``release()`` closes.
        """
        self._retainers.add(owner)

    def release(self, owner: object) -> None:
        """Drop a ``retain()``; at exit, the last release closes the coordinator."""
        self._retainers.discard(owner)
        if self._exit_pending and not self._retainers:
            with self.exit_wait() as budget:
                self.close(budget)

    def __enter__(self) -> Coordinator:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_registered(self, timeout: float | None = None) -> bool:
        """Block until the hub answered ``registered`` (True) or ``timeout`` passed (False)."""
        self._refuse_on_client_thread("wait_registered")
        return self._registered.wait(check_timeout(timeout))

    async def wait_registered_async(self, timeout: float | None = None) -> bool:
        """``wait_registered`` for asyncio code, without blocking the caller's loop."""
        return await asyncio.to_thread(self.wait_registered, timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered or dropped; False on timeout.

        ``timeout`` is seconds (None or infinity: no limit; negative: do not wait); anything
        else, NaN included, raises at the call.
        """
        self._refuse_on_client_thread("flush")
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        self._session.hurry()
        with self._drained:
            while core.pending:
                if self._thread is None or not self._session.running:
                    return False  # nothing is running that could deliver it
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._drained.wait(remaining)
        return True

    async def flush_async(self, timeout: float | None = None) -> bool:
        """``flush`` for asyncio code, without blocking the caller's loop."""
        return await asyncio.to_thread(self.flush, timeout)

    def _refuse_on_client_thread(self, name: str) -> None:
        if self._thread is not None and threading.current_thread() is self._thread:
            raise RuntimeError(f"{name}() would deadlock when called from a coordinator callback")

    # ------------------------------------------------------------------ callbacks

    def on_connected(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after each successful connection; returns an unsubscriber."""
        return self._subscribe("connected", callback)

    def on_disconnected(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after each lost connection; returns an unsubscriber."""
        return self._subscribe("disconnected", callback)

    def on_registered(self, callback: Callable[[RegisteredPayload], None]) -> Callable[[], None]:
        """Call ``callback(payload)`` on every ``registered``; returns an unsubscriber."""
        return self._subscribe("registered", callback)

    def on_command(self, callback: Callable[[CommandEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every pause, resume and cancel, accepted or refused."""
        return self._subscribe("command", callback)

    def on_pong(self, callback: Callable[[float], None]) -> Callable[[], None]:
        """Call ``callback(seconds)`` with the round trip of every ping the hub answered."""
        return self._subscribe("pong", callback)

    def on_message(self, message_type: MessageType | str, handler: MessageHandler | None) -> None:
        """Handle ``message_type`` with ``handler`` instead of the default (None restores it).

        The handler gets the decoded ``Message``; it may be a coroutine function, which then
        runs on the client's loop.
        """
        key = str(message_type)
        if handler is None:
            self._handlers.pop(key, None)
        elif not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        else:
            self._handlers[key] = handler

    def _handler_for(self, message_type: str) -> MessageHandler | None:
        """The application's handler for a message type, else the default one (or None)."""
        return self._handlers.get(message_type) or self._defaults.get(message_type)

    def _subscribe(self, kind: str, callback: Callable[..., Any]) -> Callable[[], None]:
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        callbacks = self._callbacks[kind]
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def _fire(self, kind: str, *args: Any) -> None:
        for callback in tuple(self._callbacks[kind]):
            try:
                callback(*args)
            except Exception:
                _log.exception("when-coordinator %s callback %r failed", kind, callback)

    # ------------------------------------------------------------------ sending (any thread)

    def _enqueue(
        self,
        message_type: MessageType | str,
        workflow_id: str,
        body: QueuedBody | None,
        size: int,
        phase_sequence: int = -1,
        frame: str | None = None,
    ) -> bool:
        """Queue one message (any thread); ``phase_sequence``: the ``PhaseState.sequence`` of
        a ``phase_changed`` (else -1); ``frame``: the message encoded already (``send_frame``)."""
        if self._closed or self._forked or not self.config.enabled:
            reason = "closed" if self._closed else "forked child" if self._forked else "no hub"
            self._core.outbox.reject(message_type, f"not sending: {reason}")
            if self._closed and self.config.enabled:
                self._warn.log(
                    logging.WARNING,
                    "closed",
                    "%s sent after close() was dropped; see stats()",
                    message_type,
                )
            return False
        entry = Entry(message_type, workflow_id, body, size, time.time_ns(), phase_sequence)
        if frame is not None:
            entry.frame = frame
        return self._core.enqueue(entry)

    def send(self, message: Message) -> bool:
        """Queue a ready-made ``Message`` as it is; False if it was shed at once."""
        if not isinstance(message, Message):
            raise TypeError(f"send() takes a Message, got {type(message).__name__}")
        size = 120 + approx_size(message.payload)
        return self._enqueue(message.type, message.workflow_id, message, size)

    def send_frame(self, text: str, message_type: MessageType | str, workflow_id: str = "") -> bool:
        """Queue an encoded frame to go out as it is (a relay passing its children's frames
        through); False if shed. ``message_type`` and ``workflow_id`` are the frame's own, for
        shedding and order; nothing but its size is checked."""
        if not isinstance(text, str):
            raise TypeError(f"send_frame() takes a str, got {type(text).__name__}")
        return self._enqueue(message_type, workflow_id, None, len(text), frame=text)

    def send_frames(self, frames: Iterable[tuple[str, MessageType | str, str]]) -> int:
        """``send_frame`` for several ``(text, message_type, workflow_id)``, with one wake-up
        of the client's thread after the last, not one per frame; the number queued."""
        queued = 0
        with self._core.outbox.wakeups_held():
            for text, message_type, workflow_id in frames:
                queued += self.send_frame(text, message_type, workflow_id)
        return queued

    def send_workflow_created(
        self,
        workflow_id: str,
        parent_workflow_id: str = "",
        root_workflow_id: str = "",
        action_id: str = "",
        action_type: str = "",
    ) -> bool:
        check_workflow(workflow_id)
        payload = WorkflowCreatedPayload(
            workflow_id,
            check_text("parent_workflow_id", parent_workflow_id),
            check_text("root_workflow_id", root_workflow_id),
            check_text("action_id", action_id),
            check_text("action_type", action_type),
        )
        size = 160 + len(workflow_id) + len(parent_workflow_id) + len(root_workflow_id)
        size += len(action_id) + len(action_type)
        return self._enqueue(MessageType.WORKFLOW_CREATED, workflow_id, payload, size)

    def send_checkpoint(
        self,
        workflow_id: str,
        checkpoint_id: str,
        reason: str = "",
        *,
        state: Mapping[str, Any] | None = None,
    ) -> bool:
        """Report a checkpoint; a known workflow also carries its id on later phase changes.

        ``state`` is copied one level deep now; nested values are read when it is sent.
        """
        check_workflow(workflow_id)
        if not check_text("checkpoint_id", checkpoint_id):
            raise ValueError("checkpoint_id must not be empty")
        check_text("reason", reason)
        if state is not None and not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        if workflow_id in self._phases:
            with contextlib.suppress(PhaseError):
                self._phases.create_checkpoint(workflow_id, checkpoint_id)
        payload = CheckpointPayload(
            workflow_id, checkpoint_id, reason, dict(state) if state else None
        )
        size = 160 + len(workflow_id) + len(checkpoint_id) + len(reason) + approx_size(state)
        return self._enqueue(MessageType.CHECKPOINT, workflow_id, payload, size)

    def send_error(
        self, workflow_id: str, action_id: str, error: str | BaseException, recoverable: bool
    ) -> bool:
        check_workflow(workflow_id)
        check_text("action_id", action_id)
        text = describe_error(error)  # a str() that raises must not reach the caller
        payload = ErrorPayload(workflow_id, text, bool(recoverable), action_id)
        return self._enqueue(MessageType.ERROR, workflow_id, payload, 160 + len(text))

    def send_progress(
        self,
        workflow_id: str,
        action_id: str,
        percent: float,
        stage: str = "",
        message: str = "",
        *,
        current_item: int = 0,
        total_items: int = 0,
    ) -> bool:
        check_progress(workflow_id, action_id, percent, stage, message, current_item, total_items)
        payload = ProgressPayload(
            workflow_id, percent, action_id, stage, message, current_item, total_items
        )
        size = 160 + len(workflow_id) + len(action_id) + len(stage) + len(message)
        return self._enqueue(MessageType.PROGRESS, workflow_id, payload, size)

    def _on_phase_changed(self, state: PhaseState) -> None:
        # Runs under the phase manager's lock, so queue order is transition order.
        if self._core.inherited:  # only then can there be anything to register
            self._core.workflow_registered(state)
        size = 200 + len(state.workflow_id) + len(state.reason) + len(state.checkpoint_id)
        self._enqueue(
            MessageType.PHASE_CHANGED,
            state.workflow_id,
            phase_changed_payload(state),
            size,
            phase_sequence=state.sequence,
        )

    def stats(self) -> CoordinatorStats:
        # One snapshot under the outbox's lock: read counter by counter, a put, take or
        # confirm on another thread in between broke sent == delivered + dropped + ...
        counts = self._core.outbox.counters()
        core, session = self._core, self._session
        return CoordinatorStats(
            sent=counts.accepted,
            delivered=counts.delivered,
            dropped=sum(counts.dropped.values()),
            dropped_by_kind=counts.dropped,
            drop_reasons=counts.drop_reasons,
            queued=counts.queued,
            inflight=counts.inflight,
            queued_bytes=counts.bytes,
            connected=self.is_connected,
            registered=self.is_registered,
            connects=session.connects,
            reconnects=max(session.connects - 1, 0),
            connect_failures=session.connect_failures,
            received=core.received,
            inbound_dropped=dict(core.inbound_dropped),
            coalesced=counts.coalesced,
            connect_errors=dict(session.connect_errors),
            url=session.url,
        )

    def _on_registered(self, message: Message) -> None:
        payload = self._core.handle_registered(message, time.time_ns())
        self._registered.set()
        self._fire("registered", payload)

    def _on_ping(self, message: Message) -> None:
        self._core.handle_ping(message)

    def _on_status(self, message: Message) -> None:
        self._core.handle_status(message)

    def _on_command(self, message: Message) -> None:
        self._fire("command", self._core.handle_command(message))


def _close_at_exit(ref: weakref.ref[Coordinator]) -> None:
    coordinator = ref()
    if coordinator is None or coordinator._forked:
        return
    try:
        with coordinator.exit_wait() as budget:
            if coordinator._retainers:
                coordinator._flush_log_sources(final=True)
                coordinator._exit_pending = True  # the last release() closes
                if coordinator._thread is not None:
                    coordinator.flush(budget)
            else:
                coordinator.close(budget)
    except Exception:
        _log.debug("closing at exit failed", exc_info=True)


def _reset_after_fork(ref: weakref.ref[Coordinator]) -> None:
    """In a forked child: forget the parent's thread, socket and queue; stay quiet.

    The parent still owns its connection, its queue and its workflows. A child that should
    report calls ``connect()`` again, which starts a fresh connection and queue and reports
    (and replays after each registration) only the workflows the child starts itself.
    """
    coordinator = ref()
    if coordinator is None:
        return
    coordinator._lifecycle = threading.Lock()
    coordinator._drained = threading.Condition()
    coordinator._registered = threading.Event()
    coordinator._thread = None
    coordinator._forked = True
    # The child is another instance of the service: it must not speak as its parent.
    coordinator.config = coordinator.config.with_changes(
        instance_id=f"{coordinator.config.instance_id}-fork-{os.getpid()}"
    )
    coordinator._phases._reset_lock_after_fork()
    core = coordinator._core
    core.config = coordinator.config
    core.forked()
    coordinator._session = coordinator._new_session()
