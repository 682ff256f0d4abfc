"""The asyncio layer under the ``Coordinator``: dial, read, write, keep alive, fail over.

``Session.run`` runs on the client's own thread and loop. It dials the hub URLs in turn with
the reconnect schedule, and for each connection runs a reader, a writer and a keepalive that
feed the sans-I/O ``ClientCore`` with what happens and write what it returns. It uses
websockets' public ``connect``, ``recv``, ``send``, ``ping`` and ``close``; the two reach-ins
(a batch of frames in one write, an immediate abort of a dead connection) are in
``_compat/websockets.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from .._compat.allocator import keep_reads_off_mmap
from .._compat.websockets import abort, refused_frame, send_frames
from .._version import __version__
from ..protocol import Message, ProtocolError
from ._util import RateLimitedLog, qualified_name, warn_once
from .config import HUB_PATH, Config, display_url
from .connection import (
    JOINED_FRAMES,
    RedactingLogger,
    backoff_delays,
    handshake_headers,
    is_tls,
    joined,
    redact,
)
from .core import CONTROL_LIMIT, ClientCore

__all__ = ["MessageHandler", "Session"]

_log = logging.getLogger("when_coordinator.client")

MessageHandler = Callable[[Message], "Awaitable[None] | None"]
Fire = Callable[..., None]


class Session:
    """The connection loop of one client (one per process: a forked child makes its own).

    ``handler_for(type)`` gives the callable that handles an inbound message type (the
    application's ``on_message`` handler, else the coordinator's default); ``fire(kind, ...)``
    runs the application's callbacks; ``changed()`` wakes threads waiting in ``flush()``;
    ``ended()`` is called when a connection is gone, before the ``disconnected`` callbacks.
    """

    def __init__(
        self,
        config: Config,
        core: ClientCore,
        *,
        ssl_context: ssl.SSLContext | None,
        handler_for: Callable[[str], MessageHandler | None],
        fire: Fire,
        changed: Callable[[], None],
        ended: Callable[[], None],
        warn: RateLimitedLog,
    ) -> None:
        self.config = config
        self.core = core
        self._ssl = ssl_context
        self._handler_for = handler_for
        self._fire = fire
        self._changed = changed
        self._ended = ended
        self._warn = warn
        self._urls = config.urls
        self.url_index = 0
        """The URL dialled next: it moves on after every failed dial and every dropped
        connection, so the client goes round the list (see ``run``)."""
        self.url = ""
        """The URL of the current connection, for ``stats()`` (without credentials)."""
        self.ws: ClientConnection | None = None
        self.connects = 0
        self.connect_failures = 0
        self.connect_errors: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._replies_taken: asyncio.Event | None = None
        self._closed_by: ConnectionClosed | None = None
        """How the connection ended, as the first task to notice it saw it."""
        self._urgent = False
        """Someone waits for the outbox to drain (``hurry``), or replies are queued: no write
        delay until it has drained."""
        self._delaying: asyncio.Future[None] | None = None
        self._acknowledging: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ any thread

    def wakeup(self) -> None:
        """Wake the writer (from any thread): something was queued."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wake.set)

    def hurry(self) -> None:
        """Cut ``write_delay`` short until the outbox is empty (from any thread): ``flush``
        and ``close`` wait for what is queued, not for the next batch of it."""
        self._urgent = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._release_delay)

    def _release_delay(self) -> None:
        waiter = self._delaying
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _write_delay(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if ``hurry`` is called meanwhile."""
        loop = asyncio.get_running_loop()
        self._delaying = loop.create_future()
        timer = loop.call_later(seconds, self._release_delay)
        try:
            await self._delaying
        finally:
            timer.cancel()
            self._delaying = None

    def stop(self) -> None:
        """Ask ``run`` to close the connection and return (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    @property
    def running(self) -> bool:
        return self._loop is not None

    # ------------------------------------------------------------------ the loop

    async def run(self, ready: threading.Event) -> None:
        keep_reads_off_mmap()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._replies_taken = asyncio.Event()
        self.core.outbox.set_wakeup(self.wakeup)
        ready.set()
        try:
            await self._dial_forever()
        finally:
            self.core.outbox.set_wakeup(None)
            self._loop = None

    async def _dial_forever(self) -> None:
        # Failover: one schedule for the whole list. Every dial, to whichever URL, is one
        # attempt: it counts towards ``reconnect_max_attempts`` and is followed, when it fails,
        # by the next (growing, jittered) delay and a dial of the next URL. A connection resets
        # both the count and the delay; when it drops, the next dial goes to the next URL too
        # (the instance that dropped it is the one least likely to be healthy). With one URL
        # this is the schedule of PROTOCOL.md section 5, unchanged.
        assert self._stop is not None
        delays = backoff_delays(self.config)
        failures = 0
        urls = self._urls
        last = ""
        while not self._stop.is_set():
            url = urls[self.url_index]
            try:
                ws = await self._dial(url)
                if ws is None:
                    break  # closing
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.url_index = (self.url_index + 1) % len(urls)
                self._dial_failed(url, exc, failures)
                limit = self.config.reconnect_max_attempts
                if limit and failures >= limit:
                    _log.error("giving up on the hub after %d failed attempts", failures)
                    self.core.outbox.clear("gave up reconnecting")
                    break
                await self._pause(next(delays))
                continue
            failures = 0
            delays = backoff_delays(self.config)
            if len(urls) > 1:
                _log.info(
                    "connected to the hub at %s (URL %d of %d)%s",
                    display_url(url),
                    self.url_index + 1,
                    len(urls),
                    f", failed over from {display_url(last)}" if last and last != url else "",
                )
            last = url
            self.url = display_url(url)
            await self._run_connection(ws)
            self.url_index = (self.url_index + 1) % len(urls)
            if not self._stop.is_set():
                await self._pause(next(delays))

    def _dial_failed(self, url: str, exc: Exception, failures: int) -> None:
        self.connect_failures += 1
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
        self.connect_errors[qualified_name(exc)] += 1
        self._warn.log(
            logging.WARNING,
            f"connect {url}",
            "cannot connect to the hub at %s (attempt %d): %s",
            shown,
            failures,
            redact(f"{type(exc).__name__}: {exc}", self.config),
        )

    async def _dial(self, url: str) -> ClientConnection | None:
        """Open a connection, or None when ``stop()`` interrupts the attempt."""
        assert self._stop is not None
        config = self.config
        opening = connect(
            url,
            additional_headers=handshake_headers(config),
            user_agent_header=f"when-coordinator/{__version__}",
            ssl=self._ssl if is_tls(url) else None,
            compression=None,
            open_timeout=config.open_timeout,
            ping_interval=None,  # keepalive is the client's own (``_keepalive``)
            close_timeout=min(2.0, config.pong_timeout),
            max_size=max(config.max_frame_bytes * 4, 1 << 16),
            subprotocols=[Subprotocol(JOINED_FRAMES)] if config.joined_frames else None,
            proxy=None,
            logger=RedactingLogger(logging.getLogger("websockets.client"), config),
        )

        async def open_connection() -> ClientConnection:
            return await opening

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

    async def _run_connection(self, ws: ClientConnection) -> None:
        assert self._stop is not None
        core = self.core
        self.connects += 1
        self._closed_by = None
        self.ws = ws
        self._fire("connected")
        tasks: list[asyncio.Task[None]] = []
        try:
            await ws.send(core.connection_opened())
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
        except ConnectionClosed as exc:
            self._closed_by = self._closed_by or exc
        finally:
            tasks.extend(self._acknowledging)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.ws = None
            self.url = ""
            self._ended()
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closing" if self._stop.is_set() else "")
            requeued = core.connection_lost(refused_frame=refused_frame(self._closed_by))
            self._closed_by = None  # its traceback holds this frame: no cycle left behind
            if requeued:
                _log.debug("requeued %d unacknowledged messages", requeued)
            self._fire("disconnected")
            self._changed()

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
            latency = await self._ping(ws)
            if latency is None:
                return
            self._fire("pong", latency)

    async def _ping(self, ws: ClientConnection) -> float | None:
        """One ping: its round trip in seconds, or None once the connection is gone (then
        aborted when the pong was late)."""
        try:
            pong = await ws.ping()
            return await asyncio.wait_for(pong, self.config.pong_timeout)
        except asyncio.TimeoutError:
            _log.warning(
                "no pong from the hub within %.1f s: reconnecting", self.config.pong_timeout
            )
            abort(ws)
        except ConnectionClosed as exc:
            self._closed_by = self._closed_by or exc
        return None

    async def _acknowledge(self, ws: ClientConnection, count: int) -> None:
        """Ping after what was sent; the pong proves the hub received all of it."""
        connection = self.core.connection
        latency = None
        try:
            latency = await self._ping(ws)
        finally:
            self.core.acknowledged(connection, None if latency is None else count)
            if latency is not None:
                self._fire("pong", latency)
                self._changed()
            if self._wake is not None:
                self._wake.set()

    async def _reader(self, ws: ClientConnection) -> None:
        core = self.core
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed as exc:
                self._closed_by = self._closed_by or exc
                return
            message = core.receive(frame)
            if message is None:
                continue
            await self._dispatch(message)
            if core.replies:
                self._wake_writer()
            if len(core.replies) >= CONTROL_LIMIT and not await self._replies_sent():
                core.inbound_dropped["not answered: hub not reading"] += len(core.replies)
                self._warn.log(
                    logging.WARNING,
                    "not reading",
                    "the hub does not read what the client sends (%d replies waiting for "
                    "%.1f s): reconnecting",
                    len(core.replies),
                    self.config.pong_timeout,
                )
                abort(ws)
                return

    def _wake_writer(self) -> None:
        """Replies are queued: they go at once, as for ``hurry`` (the write delay gathers
        reports; an answer to the hub is waited for)."""
        self._urgent = True
        self._release_delay()
        if self._wake is not None:
            self._wake.set()

    async def _replies_sent(self) -> bool:
        """Wait, up to ``pong_timeout``, until the writer took the queued replies.

        The reader stops reading meanwhile, so a hub that asks faster than it reads the
        answers is slowed down by TCP, and the queue of replies stays bounded. One that does
        not read at all within that time is a dead peer: False, and the caller reconnects.
        """
        assert self._replies_taken is not None
        taken = self._replies_taken
        taken.clear()
        self._wake_writer()
        try:
            await asyncio.wait_for(taken.wait(), self.config.pong_timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _dispatch(self, message: Message) -> None:
        key = str(message.type)
        handler = self._handler_for(key)
        if handler is None:
            self._warn.log(logging.DEBUG, "unknown type", "ignoring message of type %r", key)
            self.core.inbound_dropped["unknown type"] += 1
            return
        try:
            result = handler(message)
            if inspect.isawaitable(result):
                await result
        except ProtocolError as exc:
            self.core.drop_inbound("invalid payload", f"{key}: {exc}")
        except Exception:
            self._warn.log(
                logging.ERROR,
                f"handler {key}",
                "handler for %r messages failed",
                key,
                exc_info=True,
            )

    async def _writer(self, ws: ClientConnection) -> None:
        assert self._wake is not None
        wake = self._wake
        acknowledging = self._acknowledging
        join = ws.subprotocol == JOINED_FRAMES  # offered (``joined_frames``) and accepted
        while True:
            frames = self._frames()
            if not frames:
                self._start_ack(ws, acknowledging, idle=True)  # confirm what is out, then wait
                # Clear, then look once more: a put (or pong) racing the clear still wakes us.
                wake.clear()
                frames = self._frames()
                if not frames:
                    self._urgent = False  # drained: whoever hurried has what they waited for
                    await wake.wait()
                    if self.config.write_delay and not self._urgent:
                        await self._write_delay(self.config.write_delay)  # a burst joins
                    continue
            if join:
                frames = joined(frames, self.config.max_frame_bytes)
            try:
                await send_frames(ws, frames)
            except ConnectionClosed as exc:
                self._closed_by = self._closed_by or exc
                raise
            self._start_ack(ws, acknowledging, idle=False)

    def _frames(self) -> list[str]:
        had_replies = bool(self.core.replies)
        frames = self.core.frames_to_send()
        if had_replies and self._replies_taken is not None:
            self._replies_taken.set()
        return frames

    def _start_ack(
        self, ws: ClientConnection, running: set[asyncio.Task[None]], *, idle: bool
    ) -> None:
        count = self.core.ack_due(idle=idle)
        if count is not None:
            task = asyncio.get_running_loop().create_task(self._acknowledge(ws, count))
            running.add(task)  # held: the loop keeps only a weak reference to a task
            task.add_done_callback(running.discard)
