"""``_compat.asyncio.within``: ``asyncio.timeout`` where the interpreter has it, ``wait_for``
before; what the hub's sends, waits and bus statements rely on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from when_coordinator._compat.asyncio import within


async def test_a_result_comes_back_and_a_late_one_raises_timeouterror() -> None:
    async def answer() -> int:
        return 42

    assert await within(answer(), 1.0) == 42
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await within(never, 0.01)
    assert never.cancelled()  # as wait_for leaves it


async def test_what_finishes_without_waiting_costs_no_turn_of_the_loop() -> None:
    turns = 0

    def turn() -> None:
        nonlocal turns
        turns += 1

    async def done_at_once() -> str:
        return "sent"

    asyncio.get_running_loop().call_soon(turn)
    assert await within(done_at_once(), 1.0) == "sent"
    # wait_for ran it as a task of its own: the callback above ran meanwhile.
    assert turns == (0 if sys.version_info >= (3, 11) else 1)


async def test_a_done_future_resumes_its_waiter_in_one_turn() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    order: list[str] = []

    async def waiter() -> None:
        order.append(await within(future, 1.0))

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0)  # the waiter waits
    future.set_result("answer")
    loop.call_soon(order.append, "one turn later")
    await task
    if sys.version_info >= (3, 11):  # wait_for: a turn for its own callback first
        assert order == ["answer", "one turn later"]
