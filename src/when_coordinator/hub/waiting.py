"""``Hub.wait_for``'s machinery: predicates re-checked after every change, on the hub's loop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._compat.asyncio import within

__all__ = ["Waiters"]

_T = TypeVar("_T")


@dataclass(slots=True)
class _Waiter:
    predicate: Callable[[], object]
    future: asyncio.Future[Any]
    error: BaseException | None = None


def _describe(predicate: Callable[..., object]) -> str:
    try:
        source = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)
    return " ".join(source.split())[:200]


class Waiters:
    """The predicates someone waits on. Checked synchronously after each change, so no
    intermediate state is missed; an exception in one (say ``KeyError`` before a workflow
    exists) counts as false and is named if the wait times out."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[_Waiter] = []

    def __bool__(self) -> bool:
        return bool(self._waiters)

    async def wait(
        self, check: Callable[[], _T], timeout: float, shown: Callable[..., object]
    ) -> _T:
        """``check()``'s first truthy value; ``TimeoutError`` naming ``shown`` if none comes."""
        waiter = _Waiter(check, asyncio.get_running_loop().create_future())
        if self._check(waiter):
            return waiter.future.result()  # type: ignore[no-any-return]
        self._waiters.append(waiter)
        try:
            return await within(waiter.future, timeout)  # ours alone: no need to shield it
        except asyncio.TimeoutError:
            detail = f"; last error: {waiter.error!r}" if waiter.error is not None else ""
            raise TimeoutError(
                f"hub.wait_for timed out after {timeout:g} s: {_describe(shown)}{detail}"
            ) from None
        finally:
            self._waiters.remove(waiter)

    def check_all(self) -> None:
        for waiter in tuple(self._waiters):
            self._check(waiter)

    def fail_all(self, error: BaseException) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)

    @staticmethod
    def _check(waiter: _Waiter) -> bool:
        if waiter.future.done():
            return False
        try:
            result = waiter.predicate()
        except Exception as exc:
            waiter.error = exc
            return False
        if result:
            waiter.future.set_result(result)
            return True
        return False
