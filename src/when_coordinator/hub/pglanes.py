"""The PostgreSQL bus's connections, each used from a thread of its own (``bus.PostgresBus``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .pgstore import PostgresStore

__all__ = ["Control", "Lane"]

_T = TypeVar("_T")


class Control:
    """The bus's connection, used from a thread of its own: one statement at a time,
    reconnected when lost.

    A thread, not an asyncio connection: under load the hub's event loop turns slowly, and
    an asyncio connection needs several turns per statement where a thread needs one (to
    hand back the result). In the capacity benchmark (bench_hub_postgres) one statement's
    p99 was 80 to 280 ms on an asyncio connection, 6 to 8 ms in a thread. A statement is not
    retried on a lost connection (it may have committed): the error goes to the caller, and
    the next statement reconnects.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._conn: Any = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "when-hub-bus")

    def _run(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        import psycopg  # noqa: PLC0415 - only with PostgreSQL

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        try:
            cursor = self._conn.execute(sql.encode(), params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        except BaseException:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def submit(self, sql: str, params: Any = None) -> asyncio.Future[list[tuple[Any, ...]]]:
        """Start the statement now (its result is awaited later): no event-loop turn first."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._run, sql, params)

    async def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await self.result(self.submit(sql, params))

    async def result(self, future: asyncio.Future[list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        return await asyncio.wait_for(future, self._timeout)

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()

        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
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
