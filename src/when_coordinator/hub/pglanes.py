"""The PostgreSQL bus's connections, each used from a thread of its own (``bus.PostgresBus``), and
the switch interval those threads need."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .._compat.asyncio import within

if TYPE_CHECKING:
    from .pgstore import PostgresStore

__all__ = ["SWITCH_INTERVAL", "Control", "Lane", "Listener", "switch_interval"]

SWITCH_INTERVAL = 0.001
"""Seconds a thread holds the GIL while another waits for it, while an instance is on the bus
(the interpreter's default is 0.005). A command crosses threads at every hop (the bus's
statements run on a thread of their own, the store and the mirror on theirs), and each time
the thread that has the answer waits for the GIL held by a busy event loop or a busy store
thread: a statement through a thread, from a busy loop beside one busy thread, took p50 12-14
ms and p99 63-97 ms at 5 ms, 5.5-6.5 and 21-33 ms at 1 ms (docs/performance.md)."""


class _SwitchInterval:
    """The interpreter's switch interval, shortened while any instance in this process is on
    the bus and restored when the last one stops (several run in one process in tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: float | None = None

    def shorten(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1 and sys.getswitchinterval() > SWITCH_INTERVAL:
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL)

    def restore(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                sys.setswitchinterval(self._saved)
                self._saved = None


switch_interval = _SwitchInterval()


_T = TypeVar("_T")


class Statements:
    """One autocommit connection, opened when first needed and again after it was lost; for
    one thread at a time. A statement is not retried on a lost connection (it may have
    committed): the error goes to the caller, and the next statement reconnects."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Any = None

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg  # noqa: PLC0415 - only with PostgreSQL

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        try:
            cursor = self._conn.execute(sql.encode(), params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Control:
    """The bus's connection, used from a thread of its own: one statement at a time,
    reconnected when lost.

    A thread, not an asyncio connection: under load the hub's event loop turns slowly, and
    an asyncio connection needs several turns per statement where a thread needs one (to
    hand back the result). In the capacity benchmark (bench_hub_postgres) one statement's
    p99 was 80 to 280 ms on an asyncio connection, 6 to 8 ms in a thread.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self._timeout = timeout
        self._statements = Statements(url)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "when-hub-bus")

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement, on this lane's thread only (see ``submit_call``)."""
        return self._statements.execute(sql, params)

    def submit(self, sql: str, params: Any = None) -> asyncio.Future[list[tuple[Any, ...]]]:
        """Start the statement now (its result is awaited later): no event-loop turn first."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self.execute, sql, params)

    def submit_call(self, fn: Callable[[], None]) -> concurrent.futures.Future[None]:
        """Run ``fn`` on this lane's thread, queued with the statements (it may ``execute``)."""
        return self._executor.submit(fn)

    async def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await self.result(self.submit(sql, params))

    async def result(self, future: asyncio.Future[list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        return await within(future, self._timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._statements.close)
        self._executor.shutdown(wait=False)


class Lane:
    """A connection of its own, used from a thread of its own."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        from .pgstore import PostgresStore  # noqa: PLC0415 - only with PostgreSQL

        self.store = PostgresStore(
            store.url,
            store.instance_id,
            lease_timeout=store.lease_timeout,
            command_ttl=store.command_ttl,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(1, name)

    async def run(self, fn: Callable[[PostgresStore], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.store)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run(lambda s: s.close())
        self._executor.shutdown(wait=False)


class Listener:
    """LISTEN on a connection of its own, in a thread of its own, reconnected when lost.

    Each notification is handed to ``on_note`` in this thread, as it arrives: it does what
    needs no event loop (the claim of a command, with ``execute``, on a second connection of
    this thread's) and hands the loop the rest, one callback each. On an asyncio connection,
    a notification took several turns of a busy loop before it was even seen, and every turn
    waited for all the frames that came meanwhile; a claim on the bus's thread waited for
    that thread, and for the phase notes it was sending. ``on_listening`` runs after every
    (re)LISTEN, ``on_error`` on every lost connection, both in this thread.
    """

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        on_note: Callable[[str, str], None],
        on_listening: Callable[[], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._url = url
        self._channels = sorted(channels)
        self._on_note = on_note
        self._on_listening = on_listening
        self._on_error = on_error
        self._stopping = threading.Event()
        self._statements = Statements(url)
        self._thread = threading.Thread(target=self._run, name="when-hub-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to leave: it does at its next notification (the bus sends one to
        wake it) or within ``_POLL`` seconds."""
        self._stopping.set()

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement on this thread's second connection: from ``on_note`` only."""
        return self._statements.execute(sql, params)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            self._statements.close()

    def _listen(self) -> None:
        import psycopg  # noqa: PLC0415 - only with PostgreSQL

        delay = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    for channel in self._channels:
                        conn.execute(f"LISTEN {channel}".encode())
                    delay = 0.1
                    self._on_listening()
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=_POLL):
                            if self._stopping.is_set():
                                break
                            self._on_note(note.channel, note.payload)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                self._on_error(exc)
            self._stopping.wait(delay)
            delay = min(5.0, delay * 2)


_POLL = 1.0
"""Seconds the listener waits for a notification before it looks whether it should stop."""
