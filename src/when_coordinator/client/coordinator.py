"""The ``Coordinator``: one resilient WebSocket from a service to its when-v3 hub.

Application threads (and asyncio tasks) only enqueue into a bounded ``Outbox``; one background
thread runs an asyncio loop that encodes, sends, reads, answers the hub and re-dials after any
failure. Nothing here blocks or raises into the host application except for argument errors
(``TypeError`` / ``ValueError``) and the explicitly blocking ``wait_registered`` and ``flush``.

Delivery: a message counts as delivered when the hub's WebSocket layer acknowledged it, that is
when a ping sent after it got its pong. On a drop, everything not yet acknowledged goes back to
the front of the outbox and is sent again after reconnecting, so workflow state survives a drop
at the price of a rare duplicate at the drop boundary.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import math
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .._version import __version__
from ..phase_manager import PhaseError, PhaseManager, PhaseState
from ..protocol import (
    ENVELOPE_WORKFLOW_TYPES,
    CancelPayload,
    CheckpointPayload,
    EmptyPayload,
    ErrorPayload,
    LogEntry,
    LogLevel,
    Message,
    MessageType,
    PausePayload,
    PayloadError,
    PhaseChangedPayload,
    ProgressPayload,
    ProtocolError,
    RegisteredPayload,
    RegisterPayload,
    ResumePayload,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    decode,
    encode,
    encode_envelope,
    format_timestamp,
    new_message_id,
)
from ._util import (
    RateLimitedLog,
    WireLogBatch,
    approx_size,
    describe_error,
    jsonable,
    log_size,
    qualified_name,
    warn_once,
)
from .config import HUB_PATH, Config, display_url, url_hint
from .connection import (
    RedactingLogger,
    backoff_delays,
    handshake_headers,
    is_tls,
    redact,
    ssl_context,
)
from .outbox import Entry, Outbox, ProgressBody

__all__ = ["CommandEvent", "Coordinator", "CoordinatorStats", "MessageHandler"]

_log = logging.getLogger("when_coordinator.client")

MessageHandler = Callable[[Message], "Awaitable[None] | None"]


class LogSource(Protocol):
    """What buffers log entries for a coordinator (``LogForwarder``): flushed before it closes."""

    def _flush_to_coordinator(self, *, final: bool) -> None: ...


_INFLIGHT_CONFIRM_EVERY = 256
"""Ask for an acknowledgement after this many unacknowledged messages, even under load."""
_INFLIGHT_LIMIT = _INFLIGHT_CONFIRM_EVERY * 4
"""Stop sending past this many unacknowledged messages until the hub catches up."""
_BATCH_MESSAGES = 64
_BATCH_BYTES = 64 * 1024
_CONTROL_LIMIT = 1024
"""Replies (pongs, status responses) waiting to be written before the reader stops reading."""


@dataclass(frozen=True)
class CoordinatorStats:
    """Counters of one coordinator; ``sent == delivered + dropped + queued + inflight``.

    ``url`` is the hub URL of the current connection, without credentials ("" while not
    connected): with several URLs in ``when_url``, the one the client failed over to.

    ``sent`` counts every message the application handed over, ``dropped_by_kind`` the ones shed
    (by message type) and ``drop_reasons`` why. A progress update that replaced the same
    workflow's progress while that was still queued is not a message of its own: it counts in
    ``coalesced``, not in ``sent``. Inbound frames the client refused are counted in
    ``inbound_dropped`` by reason.
    """

    sent: int
    delivered: int
    dropped: int
    dropped_by_kind: Mapping[str, int]
    drop_reasons: Mapping[str, int]
    queued: int
    inflight: int
    queued_bytes: int
    connected: bool
    registered: bool
    connects: int
    reconnects: int
    connect_failures: int
    received: int
    inbound_dropped: Mapping[str, int]
    coalesced: int = 0
    connect_errors: Mapping[str, int] = field(default_factory=dict)
    """Failed connection attempts by the exception's qualified class name."""
    url: str = ""


@dataclass(frozen=True)
class CommandEvent:
    """A pause, resume or cancel from the hub and what became of it."""

    type: MessageType
    workflow_id: str
    accepted: bool
    reason: str = ""
    from_checkpoint: str = ""
    force: bool = False
    error: str = ""
    state: PhaseState | None = None
    message: Message | None = field(default=None, repr=False)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _check_workflow(workflow_id: object) -> str:
    if not _check_text("workflow_id", workflow_id):
        raise ValueError("workflow_id must not be empty")
    return workflow_id  # type: ignore[return-value]


def _check_percent(percent: object) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise TypeError(f"percent must be a number, got {type(percent).__name__}")
    if not 0 <= percent <= 100:  # also false for NaN
        raise ValueError(f"percent must be between 0 and 100, got {percent!r}")
    return percent


def _check_timeout(timeout: object) -> float | None:
    """Seconds to wait: None or infinity wait for good, a negative number not at all. NaN
    (every comparison false) once made ``flush()`` wait forever: it is refused here."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds or None, got nan")
    if math.isinf(timeout):
        return None if timeout > 0 else 0.0
    return max(float(timeout), 0.0)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


class Coordinator:
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
        self._outbox = Outbox(self.config.outbox_max_messages, self.config.outbox_max_bytes)
        self._ssl = ssl_context(self.config)
        self._urls = self.config.urls
        self._url_index = 0
        """The URL dialled next: it moves on after every failed dial and every dropped
        connection, so the client goes round the list (see ``_main``)."""
        self._url = ""
        """The URL of the current connection, for ``stats()`` (without credentials)."""
        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._control: deque[Message] = deque()
        self._control_taken: asyncio.Event | None = None
        self._ws: ClientConnection | None = None
        self._session = 0
        self._replayed = 0
        """The session whose live workflows were replayed (on its first ``registered``)."""
        self._confirming = False
        self._frame_limit = self.config.max_frame_bytes
        """The largest frame sent: ``max_frame_bytes``, lowered if the hub closes for less."""
        self._drained = threading.Condition()
        self._registered = threading.Event()
        self._closed = False
        self._forked = False
        self._inherited: set[str] = set()
        """After a fork, the parent's workflows: never the child's to report or replay."""
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
        self.service_id = self.config.service_id
        self.hub_protocol_version = ""
        self._connects = 0
        self._connect_failures = 0
        self._connect_errors: Counter[str] = Counter()
        self._received = 0
        self._inbound_dropped: Counter[str] = Counter()
        self._warn = RateLimitedLog(_log)
        self._defaults: dict[str, Callable[[Message], None]] = {
            MessageType.REGISTERED: self._on_registered,
            MessageType.PING: self._on_ping,
            MessageType.STATUS: self._on_status,
            MessageType.PAUSE: self._on_command,
            MessageType.RESUME: self._on_command,
            MessageType.CANCEL: self._on_command,
        }
        self._unsubscribe = self._phases.on_phase_changed(self._on_phase_changed)
        ref = weakref.ref(self)
        atexit.register(_close_at_exit, ref)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: _reset_after_fork(ref))

    # ------------------------------------------------------------------ lifecycle

    @property
    def phases(self) -> PhaseManager:
        """The phase manager whose every transition this client reports."""
        return self._phases

    @property
    def is_connected(self) -> bool:
        return self._ws is not None

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
                self._outbox = Outbox(self.config.outbox_max_messages, self.config.outbox_max_bytes)
            if self._thread is not None or not self.config.enabled:
                if not self.config.enabled:
                    _log.info("when_url is not set: not connecting to a hub")
                return
            for url in self._urls:
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
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except Exception:  # a bug, not a network failure: never let it kill the host
            _log.exception("when-coordinator client thread failed")
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None
            self._outbox.set_wakeup(None)
            with self._drained:
                self._drained.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Hand over what the attached log forwarders buffer, deliver what is queued within
        ``timeout`` (default ``config.close_timeout``), then close with code 1000 and join the
        thread. Idempotent; what is left is counted dropped, with one warning."""
        timeout = self.config.close_timeout if timeout is None else _check_timeout(timeout)
        if timeout is None:
            raise ValueError("close() needs a finite timeout: it must not hang the host")
        deadline = time.monotonic() + max(timeout, 0.0)
        self._flush_log_sources(final=True)
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            thread, loop = self._thread, self._loop
        if thread is not None and loop is not None:
            own_thread = thread is threading.current_thread()  # close() from a callback
            if not own_thread:
                self.flush(timeout)
            stop = self._stop
            if stop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop.set)
            if not own_thread:
                thread.join(max(deadline - time.monotonic(), 0.0) + 2.0)
        before = self._outbox.counters().dropped
        self._outbox.clear("coordinator closed")
        left = {
            kind: count - before.get(kind, 0)
            for kind, count in self._outbox.counters().dropped.items()
            if count > before.get(kind, 0)
        }
        if left and self.config.enabled:
            _log.warning(
                "closed with %d message(s) undelivered, dropped (%s); see stats()",
                sum(left.values()),
                ", ".join(f"{kind}: {count}" for kind, count in sorted(left.items())),
            )
        self._unsubscribe()

    def _attach_log_source(self, source: LogSource) -> None:
        """Have ``close()`` and the exit handler flush ``source`` first (a ``LogForwarder``, and
        so a ``CoordinatorLogHandler`` feeding one): what it buffers is then queued before the
        last delivery. Held weakly, so an attached source can still be collected."""
        self._log_sources.add(source)

    def _flush_log_sources(self, *, final: bool) -> None:
        for source in tuple(self._log_sources):
            try:
                source._flush_to_coordinator(final=final)
            except Exception:
                _log.warning("flushing %r before closing failed", source, exc_info=True)

    @contextlib.contextmanager
    def _exit_wait(self) -> Iterator[float]:
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

    def _flush_final(self) -> bool:
        """Flush before the end, within ``close_timeout`` or, once the process is exiting,
        within what is left of the exit path's one ``close_timeout``."""
        if self._exit_spent is None:
            return self.flush(self.config.close_timeout)
        with self._exit_wait() as budget:
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
            with self._exit_wait() as budget:
                self.close(budget)

    def __enter__(self) -> Coordinator:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait_registered(self, timeout: float | None = None) -> bool:
        """Block until the hub answered ``registered`` (True) or ``timeout`` passed (False)."""
        self._refuse_on_client_thread("wait_registered")
        return self._registered.wait(_check_timeout(timeout))

    async def wait_registered_async(self, timeout: float | None = None) -> bool:
        """``wait_registered`` for asyncio code, without blocking the caller's loop."""
        return await asyncio.to_thread(self.wait_registered, timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is delivered or dropped; False on timeout.

        ``timeout`` is seconds (None or infinity: no limit; negative: do not wait); anything
        else, NaN included, raises at the call.
        """
        self._refuse_on_client_thread("flush")
        timeout = _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._drained:
            while self._outbox.pending or self._control:
                if self._thread is None or self._loop is None:
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
        body: Any,
        size: int,
        seq: int = -1,
        text: str | None = None,
    ) -> bool:
        if self._closed or self._forked or not self.config.enabled:
            reason = "closed" if self._closed else "forked child" if self._forked else "no hub"
            self._outbox.reject(message_type, f"not sending: {reason}")
            if self._closed and self.config.enabled:
                self._warn.log(
                    logging.WARNING,
                    "closed",
                    "%s sent after close() was dropped; see stats()",
                    message_type,
                )
            return False
        if self._inherited and workflow_id in self._inherited:
            # Reported from here, it would move the workflow to this process at the hub.
            self._outbox.reject(message_type, "not sending: the parent process's workflow")
            return False
        outbox = self._outbox
        entry = Entry(message_type, workflow_id, body, size, time.time_ns(), seq)
        if text is not None:  # already encoded (send_frame)
            entry.text = text
            if self._oversized(text, message_type):
                self._outbox.reject(message_type, "larger than max_frame_bytes")
                return False
        elif size > self._frame_limit and not self._fits_a_frame(entry):
            return False  # refused before it could displace anything queued
        before = outbox.dropped_total
        accepted = outbox.put(entry)
        if outbox.dropped_total != before:
            self._warn.log(
                logging.WARNING,
                "outbox full",
                "the outbox is full: shedding messages (logs first, workflow state last); "
                "%d dropped so far, see stats()",
                outbox.dropped_total,
            )
        return accepted

    def _fits_a_frame(self, entry: Entry) -> bool:
        """Admission for a message whose size estimate is over the frame limit.

        It would be dropped when sent (``_oversized``), but queued first it would have made
        the outbox shed workflow state for room it never uses. The estimate is cheap, not
        exact (it may be high for many small fields), so such a message is encoded here, once,
        and judged by its real size: refused and counted, or queued with its frame ready.
        """
        try:
            text = _encode_entry(entry)
        except Exception as exc:
            self._outbox.reject(entry.type, "cannot encode")
            self._warn.log(logging.WARNING, "encode", "dropped a %s: %s", entry.type, exc)
            return False
        if self._oversized(text, entry.type):
            self._outbox.reject(entry.type, "larger than max_frame_bytes")
            return False
        entry.text, entry.body, entry.size = text, None, len(text)
        return True

    def send(self, message: Message) -> bool:
        """Queue a ready-made ``Message`` as it is; False if it was shed at once."""
        if not isinstance(message, Message):
            raise TypeError(f"send() takes a Message, got {type(message).__name__}")
        size = 120 + approx_size(message.payload)
        return self._enqueue(message.type, message.workflow_id, message, size)

    def send_frame(self, text: str, message_type: MessageType | str, workflow_id: str = "") -> bool:
        """Queue a frame that is already encoded, to go out exactly as it is; False if shed.

        For a relay passing its children's messages through without decoding and encoding
        each again. ``message_type`` and ``workflow_id`` are the frame's own: the outbox sheds
        and orders by them. The frame is not checked beyond its size.
        """
        if not isinstance(text, str):
            raise TypeError(f"send_frame() takes a str, got {type(text).__name__}")
        return self._enqueue(message_type, workflow_id, None, len(text), text=text)

    def send_workflow_created(
        self,
        workflow_id: str,
        parent_workflow_id: str = "",
        root_workflow_id: str = "",
        action_id: str = "",
        action_type: str = "",
    ) -> bool:
        _check_workflow(workflow_id)
        body = (
            _check_text("parent_workflow_id", parent_workflow_id),
            _check_text("root_workflow_id", root_workflow_id),
            _check_text("action_id", action_id),
            _check_text("action_type", action_type),
        )
        size = 160 + len(workflow_id) + sum(len(part) for part in body)
        return self._enqueue(MessageType.WORKFLOW_CREATED, workflow_id, body, size)

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
        _check_workflow(workflow_id)
        if not _check_text("checkpoint_id", checkpoint_id):
            raise ValueError("checkpoint_id must not be empty")
        _check_text("reason", reason)
        if state is not None and not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        if workflow_id in self._phases:
            with contextlib.suppress(PhaseError):
                self._phases.create_checkpoint(workflow_id, checkpoint_id)
        body = (checkpoint_id, reason, dict(state) if state else None)
        size = 160 + len(workflow_id) + len(checkpoint_id) + len(reason) + approx_size(state)
        return self._enqueue(MessageType.CHECKPOINT, workflow_id, body, size)

    def send_error(
        self, workflow_id: str, action_id: str, error: str | BaseException, recoverable: bool
    ) -> bool:
        _check_workflow(workflow_id)
        _check_text("action_id", action_id)
        text = describe_error(error)  # a str() that raises must not reach the caller
        body = (action_id, text, bool(recoverable))
        return self._enqueue(MessageType.ERROR, workflow_id, body, 160 + len(text))

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
        _check_workflow(workflow_id)
        _check_percent(percent)
        if current_item or total_items:
            _check_count("current_item", current_item)
            _check_count("total_items", total_items)
        body = ProgressBody(
            _check_text("action_id", action_id),
            percent,
            _check_text("stage", stage),
            _check_text("message", message),
            current_item,
            total_items,
        )
        size = 160 + len(workflow_id) + len(action_id) + len(stage) + len(message)
        return self._enqueue(MessageType.PROGRESS, workflow_id, body, size)

    def send_log(self, entry: LogEntry) -> bool:
        """Send one entry as a ``log`` message; a missing timestamp becomes now."""
        if not isinstance(entry, LogEntry):
            raise TypeError(f"send_log() takes a LogEntry, got {type(entry).__name__}")
        return self._enqueue(MessageType.LOG, "", entry, _entry_size(entry))

    def send_log_batch(self, entries: Sequence[LogEntry]) -> bool:
        """Send entries as one ``log_batch``; missing timestamps become now."""
        batch = tuple(entries)
        for entry in batch:
            if not isinstance(entry, LogEntry):
                raise TypeError(
                    f"send_log_batch() takes LogEntry items, got {type(entry).__name__}"
                )
        if not batch:
            return True
        return self._enqueue_log_batches(batch, [_entry_size(entry) for entry in batch])

    def _send_wire_log_batch(self, batch: WireLogBatch, sizes: Sequence[int]) -> bool:
        """``send_log_batch`` for entries the caller built in wire form, each with its
        timestamp (the log exporter's path: one object per record fewer, and no conversion
        on the client thread). ``sizes`` are their ``log_size`` estimates."""
        return self._enqueue_log_batches(batch, sizes)

    def _enqueue_log_batches(self, batch: Sequence[Any], sizes: Sequence[int]) -> bool:
        """One ``log_batch``, or several when the entries would make a frame near the
        ``max_frame_bytes`` limit (half of it, by estimate): a frame over it is dropped."""
        budget = self._frame_limit // 2
        total = sum(sizes)
        if total <= budget or len(batch) == 1:
            return self._enqueue(MessageType.LOG_BATCH, "", batch, 80 + total)
        kind = WireLogBatch if type(batch) is WireLogBatch else tuple
        accepted = True
        start, size = 0, 0
        for end, entry_size in enumerate(sizes):
            if size and size + entry_size > budget:
                part = kind(batch[start:end])  # a slice of a WireLogBatch is a plain list
                accepted &= self._enqueue(MessageType.LOG_BATCH, "", part, 80 + size)
                start, size = end, 0
            size += entry_size
        part = kind(batch[start:])
        return self._enqueue(MessageType.LOG_BATCH, "", part, 80 + size) and accepted

    def log_with_context(
        self,
        level: LogLevel | str,
        message: str,
        workflow_id: str = "",
        action_id: str = "",
        fields: Mapping[str, Any] | None = None,
        *,
        correlation_id: str = "",
        trace_id: str = "",
        span_id: str = "",
    ) -> bool:
        """Send one ``log`` with the workflow context the hub files it under."""
        entry = LogEntry(
            level=LogLevel(level),
            message=_check_text("message", message),
            workflow_id=_check_text("workflow_id", workflow_id),
            action_id=_check_text("action_id", action_id),
            correlation_id=_check_text("correlation_id", correlation_id),
            trace_id=_check_text("trace_id", trace_id),
            span_id=_check_text("span_id", span_id),
            fields=dict(fields) if fields else {},
        )
        return self._enqueue(MessageType.LOG, "", entry, _entry_size(entry))

    def log_debug(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.DEBUG, message, fields=fields)

    def log_info(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.INFO, message, fields=fields)

    def log_warn(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.WARN, message, fields=fields)

    def log_error(self, message: str, fields: Mapping[str, Any] | None = None) -> bool:
        return self.log_with_context(LogLevel.ERROR, message, fields=fields)

    def _on_phase_changed(self, state: PhaseState) -> None:
        # Runs under the phase manager's lock, so queue order is transition order.
        if state.sequence == 0 and self._inherited:
            self._inherited.discard(state.workflow_id)  # registered anew: this process's own
        size = 200 + len(state.workflow_id) + len(state.reason) + len(state.checkpoint_id)
        self._enqueue(MessageType.PHASE_CHANGED, state.workflow_id, state, size, seq=state.sequence)

    def stats(self) -> CoordinatorStats:
        # One snapshot under the outbox's lock: read counter by counter, a put, take or
        # confirm on another thread in between broke sent == delivered + dropped + ...
        counts = self._outbox.counters()
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
            connects=self._connects,
            reconnects=max(self._connects - 1, 0),
            connect_failures=self._connect_failures,
            received=self._received,
            inbound_dropped=dict(self._inbound_dropped),
            coalesced=counts.coalesced,
            connect_errors=dict(self._connect_errors),
            url=self._url,
        )

    # ------------------------------------------------------------------ the client thread

    async def _main(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = wake = asyncio.Event()
        self._control_taken = asyncio.Event()

        def wakeup() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)

        self._outbox.set_wakeup(wakeup)
        ready.set()
        # Failover: one schedule for the whole list. Every dial, to whichever URL, is one
        # attempt: it counts towards ``reconnect_max_attempts`` and is followed, when it fails,
        # by the next (growing, jittered) delay and a dial of the next URL. A connection resets
        # both the count and the delay; when it drops, the next dial goes to the next URL too
        # (the instance that dropped it is the one least likely to be healthy). With one URL
        # this is the schedule of PROTOCOL.md section 5, unchanged.
        delays = backoff_delays(self.config)
        failures = 0
        urls = self._urls
        last = ""
        while not self._stop.is_set():
            url = urls[self._url_index]
            try:
                ws = await self._dial(url)
                if ws is None:
                    break  # closing
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._connect_failures += 1
                self._url_index = (self._url_index + 1) % len(urls)
                shown = display_url(url)
                if isinstance(exc, InvalidStatus) and exc.response.status_code == 404:
                    warn_once(
                        _log,
                        f"http 404 {url}",
                        "the hub at %s answered HTTP 404 to the WebSocket upgrade: wrong path? "
                        "The coordination endpoint is usually %s",
                        shown,
                        HUB_PATH,
                    )
                self._connect_errors[qualified_name(exc)] += 1
                self._warn.log(
                    logging.WARNING,
                    f"connect {url}",
                    "cannot connect to the hub at %s (attempt %d): %s",
                    shown,
                    failures,
                    redact(f"{type(exc).__name__}: {exc}", self.config),
                )
                limit = self.config.reconnect_max_attempts
                if limit and failures >= limit:
                    _log.error("giving up on the hub after %d failed attempts", failures)
                    self._outbox.clear("gave up reconnecting")
                    break
                await self._pause(next(delays))
                continue
            failures = 0
            delays = backoff_delays(self.config)
            if len(urls) > 1:
                _log.info(
                    "connected to the hub at %s (URL %d of %d)%s",
                    display_url(url),
                    self._url_index + 1,
                    len(urls),
                    f", failed over from {display_url(last)}" if last and last != url else "",
                )
            last = url
            self._url = display_url(url)
            await self._run_session(ws)
            self._url_index = (self._url_index + 1) % len(urls)
            if not self._stop.is_set():
                await self._pause(next(delays))

    async def _dial(self, url: str) -> ClientConnection | None:
        """Open a connection, or None when ``close()`` interrupts the attempt."""
        assert self._stop is not None

        async def open_connection() -> ClientConnection:
            return await connect(
                url,
                additional_headers=handshake_headers(self.config),
                user_agent_header=f"when-coordinator/{__version__}",
                ssl=self._ssl if is_tls(url) else None,
                compression=None,
                open_timeout=self.config.open_timeout,
                ping_interval=None,  # keepalive is the client's own (``_keepalive``)
                close_timeout=min(2.0, self.config.pong_timeout),
                max_size=max(self.config.max_frame_bytes * 4, 1 << 16),
                proxy=None,
                logger=RedactingLogger(logging.getLogger("websockets.client"), self.config),
            )

        dial = asyncio.create_task(open_connection())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({dial, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not dial.done():
            dial.cancel()
            await asyncio.gather(dial, return_exceptions=True)
            return None
        return dial.result()

    async def _pause(self, delay: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _run_session(self, ws: ClientConnection) -> None:
        assert self._stop is not None
        self._session += 1
        self._connects += 1
        self._ws = ws
        self._fire("connected")
        tasks: list[asyncio.Task[None]] = []
        try:
            await ws.send(encode(Message.create(self._register_payload())))
            tasks = [
                asyncio.create_task(self._reader(ws)),
                asyncio.create_task(self._writer(ws)),
                asyncio.create_task(self._keepalive(ws)),
                asyncio.create_task(self._wait_stop()),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, ConnectionClosed):
                    _log.error("when-coordinator connection task failed", exc_info=error)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ws = None
            self._url = ""
            self._registered.clear()
            self._control.clear()
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closing" if self._stop.is_set() else "")
            self._learn_frame_limit(ws)
            requeued = self._outbox.requeue()
            if requeued:
                _log.debug("requeued %d unacknowledged messages", requeued)
            self._fire("disconnected")
            with self._drained:
                self._drained.notify_all()

    def _learn_frame_limit(self, ws: ClientConnection) -> None:
        """After the hub closed with 1009 (a frame over its limit), send only frames shorter
        than the longest one it may have refused.

        The hub's limit may be below ``max_frame_bytes``; without this, the refused frame
        would be sent again after every reconnect, and nothing behind it would ever arrive.
        Each such close drops at least the longest frame then in flight, so a run of them
        ends.
        """
        received = ws.protocol.close_rcvd
        if received is None or received.code != 1009 or not ws.protocol.close_rcvd_then_sent:
            return  # not the hub's refusal (a 1009 of ours, for a frame it sent, is echoed)
        longest = self._outbox.largest_inflight_text()
        if 0 < longest <= self._frame_limit:
            self._frame_limit = longest - 1
            _log.warning(
                "the hub closed the connection for a frame over its size limit (1009): "
                "frames over %d bytes are dropped from now on; set max_frame_bytes to the "
                "hub's limit",
                self._frame_limit,
            )

    async def _wait_stop(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping every ``ping_interval``; no pong within ``pong_timeout`` ends the connection
        at once. (websockets' own keepalive then also waited ``close_timeout`` for a closing
        handshake that a dead peer never answers, so a half-open connection was noticed that
        much later.)"""
        while True:
            await asyncio.sleep(self.config.ping_interval)
            pong = await ws.ping()
            try:
                latency = await asyncio.wait_for(pong, self.config.pong_timeout)
            except asyncio.TimeoutError:
                _log.warning(
                    "no pong from the hub within %.1f s: reconnecting", self.config.pong_timeout
                )
                ws.transport.abort()
                return
            self._fire("pong", latency)

    def _register_payload(self) -> RegisterPayload:
        config = self.config
        return RegisterPayload(
            service_name=config.service_name,
            service_id=self.service_id or config.service_id,
            instance_id=config.instance_id,
            capabilities=config.capabilities or None,
            version=config.version,
            protocol_version=config.protocol_version,
            schema_version=config.schema_version,
        )

    async def _reader(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                self._received += 1
                if isinstance(frame, bytes):
                    self._drop_inbound("binary frame", "a binary frame")
                    continue
                limit = self.config.max_frame_bytes
                if len(frame) > limit or (
                    len(frame) * 4 > limit and len(frame.encode("utf-8")) > limit
                ):
                    self._drop_inbound("oversized frame", f"a frame of {len(frame)} characters")
                    continue
                try:
                    message = decode(frame)
                except PayloadError as exc:
                    self._drop_inbound("invalid payload", str(exc))
                    continue
                except ProtocolError as exc:
                    self._drop_inbound("invalid frame", str(exc))
                    continue
                await self._dispatch(message)
                if len(self._control) >= _CONTROL_LIMIT and not await self._replies_taken():
                    self._inbound_dropped["not answered: hub not reading"] += len(self._control)
                    self._warn.log(
                        logging.WARNING,
                        "not reading",
                        "the hub does not read what the client sends (%d replies waiting for "
                        "%.1f s): reconnecting",
                        len(self._control),
                        self.config.pong_timeout,
                    )
                    ws.transport.abort()
                    return

    async def _replies_taken(self) -> bool:
        """Wait, up to ``pong_timeout``, until the writer took the queued replies.

        The reader stops reading meanwhile, so a hub that asks faster than it reads the
        answers is slowed down by TCP, and the queue of replies stays bounded. One that does
        not read at all within that time is a dead peer: False, and the caller reconnects.
        """
        assert self._control_taken is not None
        assert self._wake is not None
        taken = self._control_taken
        taken.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(taken.wait(), self.config.pong_timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _drop_inbound(self, reason: str, detail: str) -> None:
        self._inbound_dropped[reason] += 1
        self._warn.log(logging.WARNING, reason, "dropped %s from the hub: %s", reason, detail)

    async def _dispatch(self, message: Message) -> None:
        key = str(message.type)
        handler = self._handlers.get(key)
        try:
            if handler is not None:
                result = handler(message)
                if inspect.isawaitable(result):
                    await result
                return
            default = self._defaults.get(key)
            if default is None:
                self._warn.log(logging.DEBUG, "unknown type", "ignoring message of type %r", key)
                self._inbound_dropped["unknown type"] += 1
                return
            default(message)
        except ProtocolError as exc:
            self._drop_inbound("invalid payload", f"{key}: {exc}")
        except Exception:
            self._warn.log(
                logging.ERROR,
                f"handler {key}",
                "handler for %r messages failed",
                key,
                exc_info=True,
            )
        if self._control and self._wake is not None:
            self._wake.set()

    async def _writer(self, ws: ClientConnection) -> None:
        assert self._wake is not None
        wake, outbox = self._wake, self._outbox
        session = self._session
        while True:
            texts = self._collect()
            if not texts:
                if outbox.inflight:
                    self._start_confirm(ws, session)  # acknowledge what is out, then sleep
                # Clear, then look once more: a put (or pong) racing the clear still wakes us.
                wake.clear()
                texts = self._collect()
                if not texts:
                    await wake.wait()
                    if self.config.write_delay:  # let the rest of a burst join this write
                        await asyncio.sleep(self.config.write_delay)
                    continue
            await _send_frames(ws, texts)
            if outbox.inflight >= _INFLIGHT_CONFIRM_EVERY:
                self._start_confirm(ws, session)

    def _collect(self) -> list[str]:
        """The next frames to write: control messages first, then a batch from the outbox.

        Writing a batch in one go costs one system call instead of one per message; the
        in-flight limit is flow control while the hub acknowledges what it has.
        """
        texts = [
            text
            for message in self._drain_control()
            if not self._oversized(text := encode(message), message.type)
        ]
        outbox = self._outbox
        size = 0
        # In-flight entries cannot be shed: they may hold at most half of each outbox bound,
        # so that the other half stays queued, where workflow state displaces progress and
        # logs (with all of it in flight behind a slow hub, state itself was dropped).
        limit = min(_INFLIGHT_LIMIT, max(1, outbox.max_messages // 2))
        byte_limit = max(1, outbox.max_bytes // 2)
        while (
            len(texts) < _BATCH_MESSAGES
            and size < _BATCH_BYTES
            and outbox.inflight < limit
            and outbox.inflight_bytes < byte_limit
        ):
            entry = outbox.take()
            if entry is None:
                break
            if entry.text is None:
                try:
                    entry.text = _encode_entry(entry)
                except Exception as exc:
                    outbox.discard(entry, "cannot encode")
                    self._warn.log(logging.WARNING, "encode", "dropped a %s: %s", entry.type, exc)
                    continue
                # A resend uses the text: let the application's objects go now rather than
                # when the hub acknowledges (fewer objects for the garbage collector to scan).
                entry.body = None
            if self._oversized(entry.text, entry.type):  # a resend too: the limit may be lower
                outbox.discard(entry, "larger than max_frame_bytes")
                continue
            texts.append(entry.text)
            size += len(entry.text)
        return texts

    def _oversized(self, text: str, message_type: MessageType | str) -> bool:
        """Whether a frame is over the frame limit (then it is not sent, with a warning).

        The hub closes a connection (1009) on a frame over its limit; resent after the
        reconnect, such a frame would stall everything behind it for good. The text is ASCII
        (the encoder escapes the rest), so its length is its size in bytes.
        """
        if len(text) <= self._frame_limit:
            return False
        self._warn.log(
            logging.WARNING,
            "frame size",
            "dropped a %s of %d bytes: over the frame limit (%d)",
            message_type,
            len(text),
            self._frame_limit,
        )
        return True

    def _drain_control(self) -> list[Message]:
        control = self._control
        if not control:
            return []
        messages = list(control)
        control.clear()
        if self._control_taken is not None:
            self._control_taken.set()
        return messages

    def _start_confirm(self, ws: ClientConnection, session: int) -> None:
        if not self._confirming:
            self._confirming = True
            asyncio.get_running_loop().create_task(self._confirm(ws, session))

    async def _confirm(self, ws: ClientConnection, session: int) -> None:
        """Ping after what was sent; the pong proves the hub received all of it."""
        try:
            count = self._outbox.inflight
            try:
                pong = await ws.ping()
                self._fire("pong", await asyncio.wait_for(pong, self.config.pong_timeout))
            except asyncio.TimeoutError:
                _log.warning(
                    "no pong from the hub within %.1f s: reconnecting", self.config.pong_timeout
                )
                ws.transport.abort()
                return
            except ConnectionClosed:
                return
            if session == self._session and self._ws is ws:
                self._outbox.confirm(count)
                with self._drained:
                    self._drained.notify_all()
        finally:
            self._confirming = False
            if self._wake is not None:
                self._wake.set()

    # ------------------------------------------------------------------ default handlers

    def _on_registered(self, message: Message) -> None:
        payload = message.typed_payload()
        assert isinstance(payload, RegisteredPayload)
        if payload.service_id:
            self.service_id = payload.service_id
        self.hub_protocol_version = payload.hub_protocol_version
        # Re-assert every live workflow to a hub that may have lost it, except transitions
        # still on their way (they will arrive anyway, and must not arrive twice). Once per
        # connection: a hub repeating ``registered`` learns nothing new from a second replay,
        # and one that repeats it in a loop would otherwise get every workflow each time.
        if self._replayed != self._session:
            self._replayed = self._session
            inherited = self._inherited
            for state in self._phases.get_active_workflows():
                if state.workflow_id in inherited:
                    continue  # the parent's: it reports them on its own connection
                if not self._outbox.phase_pending(state.workflow_id, state.sequence):
                    self._control.append(_phase_message(state, time.time_ns()))
        self._registered.set()
        self._fire("registered", payload)

    def _on_ping(self, message: Message) -> None:
        # Ahead of the outbox, behind replies already due (FIFO among control messages).
        self._control.append(message.reply(EmptyPayload(), type=MessageType.PONG))

    def _on_status(self, message: Message) -> None:
        workflow_id = message.target_workflow_id()
        try:
            state = self._phases.get_state(workflow_id)
        except PhaseError:
            self._warn.log(
                logging.INFO,
                "unknown status",
                "status asked for unknown workflow %r: not answered",
                workflow_id,
            )
            return
        payload = StatusResponsePayload(
            workflow_id=workflow_id,
            phase=state.phase,
            progress=state.progress,
            current_action=state.current_action,
            message=state.reason,
        )
        self._control.append(message.reply(payload))

    def _on_command(self, message: Message) -> None:
        payload = message.typed_payload()
        workflow_id = message.target_workflow_id()
        phases = self._phases
        event = CommandEvent(MessageType(message.type), workflow_id, False, message=message)
        try:
            if isinstance(payload, PausePayload):
                event = replace(event, reason=payload.reason)
                state = phases.pause(workflow_id, payload.reason)
            elif isinstance(payload, ResumePayload):
                event = replace(event, from_checkpoint=payload.from_checkpoint)
                state = phases.resume(workflow_id, payload.from_checkpoint)
            else:
                assert isinstance(payload, CancelPayload)
                event = replace(event, reason=payload.reason, force=payload.force)
                state = phases.cancel(workflow_id, payload.reason)
        except PhaseError as exc:
            # The hub decides how many of these arrive: one line per interval, not per frame.
            self._warn.log(
                logging.INFO, "refused command", "refused %s from the hub: %s", message.type, exc
            )
            event = replace(event, error=str(exc))
        else:
            event = replace(event, accepted=True, state=state)
        self._fire("command", event)


# ---------------------------------------------------------------------- writing frames

_BATCHED_WRITES = hasattr(ClientConnection, "send_context")


async def _send_frames(ws: ClientConnection, texts: list[str]) -> None:
    """Write text frames, a batch in one socket write where websockets allows it.

    ``ClientConnection.send`` writes every frame separately: a system call, and a switch of
    the GIL to the application, per message. Through ``send_context`` (websockets' own way
    to drive its sans-I/O protocol) the frames of a batch go out in one write, with the same
    checks and flow control as ``send``.
    """
    if len(texts) == 1 or not _BATCHED_WRITES:
        for text in texts:
            await ws.send(text)
        return
    async with ws.send_context():
        protocol = ws.protocol
        for text in texts:
            protocol.send_text(text.encode())
        chunks = protocol.data_to_send()
        if all(chunks):
            ws.transport.write(b"".join(chunks))
        else:  # an end-of-stream marker: keep websockets' own handling of it
            for chunk in chunks:
                if chunk:
                    ws.transport.write(chunk)
                elif ws.transport.can_write_eof():
                    ws.transport.write_eof()


# ---------------------------------------------------------------------- building messages


def _entry_size(entry: LogEntry) -> int:
    return log_size(entry.message, entry.fields)


def _phase_message(state: PhaseState, time_ns: int) -> Message:
    payload = PhaseChangedPayload(
        workflow_id=state.workflow_id,
        from_phase=state.previous_phase,
        to_phase=state.phase,
        checkpoint_id=state.checkpoint_id,
        reason=state.reason,
    )
    return Message.create(payload, timestamp=format_timestamp(time_ns))


def _encode_entry(entry: Entry) -> str:
    """Encode a queued entry as its frame; runs on the client's thread.

    Application data (checkpoint state, log fields) is encoded as it is; only when that fails
    is it made JSON-safe (unknown objects become their ``str``) and encoded again, so the
    common case pays for one pass.
    """
    body = entry.body
    if isinstance(body, Message):
        return encode(body)
    try:
        return _encode_payload(entry, sanitize=False)
    except ProtocolError:
        if entry.type not in _SANITISED:
            raise
        return _encode_payload(entry, sanitize=True)


_SANITISED = frozenset({MessageType.CHECKPOINT, MessageType.LOG, MessageType.LOG_BATCH})


def _log_entry_dict(entry: LogEntry, timestamp: str, sanitize: bool) -> dict[str, Any]:
    if sanitize and entry.fields:
        entry = msgspec.structs.replace(entry, fields=jsonable(entry.fields))
    wire = entry.to_dict()
    if not entry.timestamp:
        wire["timestamp"] = timestamp
    return wire


def _sanitized_wire(wire: dict[str, Any]) -> dict[str, Any]:
    fields = wire.get("fields")
    return {**wire, "fields": jsonable(fields)} if fields else wire


def _encode_payload(entry: Entry, *, sanitize: bool) -> str:
    body, wf, kind = entry.body, entry.wf, entry.type
    timestamp = format_timestamp(entry.time_ns)
    payload: dict[str, Any]
    if kind is MessageType.PROGRESS:
        action_id, percent, stage, text, current, total = body
        payload = ProgressPayload(wf, percent, action_id, stage, text, current, total).to_dict()
    elif kind is MessageType.PHASE_CHANGED:
        state: PhaseState = body
        payload = PhaseChangedPayload(
            wf, state.previous_phase, state.phase, state.checkpoint_id, state.reason
        ).to_dict()
    elif kind is MessageType.LOG:
        payload = _log_entry_dict(body, timestamp, sanitize)
    elif kind is MessageType.LOG_BATCH:
        if type(body) is WireLogBatch:
            payload = {"logs": [_sanitized_wire(item) for item in body] if sanitize else body}
        else:
            payload = {"logs": [_log_entry_dict(item, timestamp, sanitize) for item in body]}
    elif kind is MessageType.WORKFLOW_CREATED:
        payload = WorkflowCreatedPayload(wf, *body).to_dict()
    elif kind is MessageType.CHECKPOINT:
        checkpoint_id, reason, state_data = body
        if sanitize and state_data:
            state_data = jsonable(state_data)
        payload = CheckpointPayload(wf, checkpoint_id, reason, state_data).to_dict()
    elif kind is MessageType.ERROR:
        action_id, text, recoverable = body
        payload = ErrorPayload(wf, text, recoverable, action_id).to_dict()
    else:
        raise ProtocolError(f"no encoder for queued {kind!r}")
    envelope_wf = wf if kind in ENVELOPE_WORKFLOW_TYPES else ""
    return encode_envelope(kind, new_message_id(), envelope_wf, timestamp, payload)


# ---------------------------------------------------------------------- process lifecycle


def _close_at_exit(ref: weakref.ref[Coordinator]) -> None:
    coordinator = ref()
    if coordinator is None or coordinator._forked:
        return
    try:
        with coordinator._exit_wait() as budget:
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
    coordinator._loop = None
    coordinator._ws = None
    coordinator._url = ""
    coordinator._stop = None
    coordinator._wake = None
    coordinator._control.clear()
    coordinator._control_taken = None
    coordinator._confirming = False
    coordinator._forked = True
    # The child is another instance of the service: it must not speak as its parent.
    coordinator.service_id = coordinator.config.service_id
    coordinator.config = coordinator.config.with_changes(
        instance_id=f"{coordinator.config.instance_id}-fork-{os.getpid()}"
    )
    coordinator._outbox = Outbox(
        coordinator.config.outbox_max_messages, coordinator.config.outbox_max_bytes
    )
    coordinator._phases._reset_lock_after_fork()
    # The child starts with no workflows of its own: the ones it inherited stay the parent's
    # (a replay of them on the child's connection would move them to the child at the hub,
    # and after the child exits they could no longer be steered).
    coordinator._inherited = set(coordinator._phases.get_all_workflows())
