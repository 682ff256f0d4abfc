"""Context handling: no "Failed to detach context" from OpenTelemetry, whatever the consumer
of a workflow does: generators consumed partially and closed (here, in another thread, by the
garbage collector), async generators driven from several tasks, and workflows entered in one
task or thread and exited in another."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import OTEL_TIMEOUT
from tests.otel.conftest import wait_phase
from when_coordinator import Coordinator, Workflow, current_workflow, workflow
from when_coordinator.hub import ThreadedHub


@pytest.fixture
def detach_errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The "Failed to detach context" records OpenTelemetry logged so far."""
    caplog.set_level(logging.DEBUG, logger="opentelemetry.context")

    def errors() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "opentelemetry.context" and "detach" in r.getMessage()
        ]

    return errors


def in_thread(fn: Callable[[], object]) -> None:
    """Run ``fn`` on a new thread, re-raising what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(OTEL_TIMEOUT)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


async def test_the_capture_sees_a_detach_from_another_context(
    detach_errors: Callable[[], list[str]],
) -> None:
    """Control: OpenTelemetry's own attach/detach across tasks does log the error, so the
    absence of that record in the other tests means something."""

    async def _attach() -> object:
        return otel_context.attach(otel_context.set_value("k", "v"))

    async def _detach(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    token = await asyncio.create_task(_attach())
    await asyncio.create_task(_detach(token))
    assert detach_errors() == ["Failed to detach context"]


# ---------------------------------------------------------------------- generators


def test_decorated_generators_consumed_partially_then_closed(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    ids: list[str] = []

    @workflow("rows", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    def rows() -> Generator[int, None, None]:
        wf = current_workflow()
        assert wf is not None
        ids.append(wf.id)
        yield from range(100)

    before = trace.get_current_span()
    closed_here = rows()
    assert [next(closed_here), next(closed_here)] == [0, 1]
    closed_here.close()

    closed_elsewhere = rows()
    assert next(closed_elsewhere) == 0
    in_thread(closed_elsewhere.close)

    collected = rows()
    assert next(collected) == 0
    del collected
    gc.collect()

    interleaved = [rows(), rows()]
    assert [next(g) for g in interleaved] == [0, 0]
    assert [next(g) for g in reversed(interleaved)] == [1, 1]
    for g in interleaved:
        g.close()

    assert trace.get_current_span() is before
    assert current_workflow() is None
    assert len(ids) == 5
    for workflow_id in ids:
        wait_phase(otel_hub, workflow_id, "completed")
    assert detach_errors() == []


def test_a_with_block_in_a_plain_generator_closed_from_another_thread(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    ids: list[str] = []

    def rows() -> Generator[int, None, None]:
        with workflow("plain", coordinator=otel_coordinator, tracer_provider=tracer_provider) as wf:
            ids.append(wf.id)
            yield from range(10)

    gen = rows()
    # A plain generator leaves its with-block attached to whoever consumes it (PEP 568 is not
    # in Python): consume it in a context of its own so that this test leaks nothing.
    assert contextvars.Context().run(next, gen) == 0
    in_thread(gen.close)  # __exit__ runs in the other thread's context
    # Closing the generator early is no failure: the consumer had what it wanted.
    assert wait_phase(otel_hub, ids[0], "completed").errors == ()
    assert detach_errors() == []


def test_decorated_async_generators_across_tasks_and_closed_early(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    ids: list[str] = []

    @workflow("feed", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    async def feed() -> AsyncGenerator[int, None]:
        wf = current_workflow()
        assert wf is not None
        ids.append(wf.id)
        for i in range(100):
            await asyncio.sleep(0)
            yield i

    async def main() -> None:
        early = feed()
        async for item in early:
            if item == 2:
                break
        await early.aclose()

        hopping = feed()
        first: int = await asyncio.create_task(anext(hopping))
        second: int = await asyncio.create_task(anext(hopping))
        assert (first, second) == (0, 1)
        await asyncio.create_task(hopping.aclose())

        abandoned = feed()
        assert await abandoned.__anext__() == 0
        # Never closed here: the loop finalises it in a task of its own, which asyncio.run()
        # cancels while shutting down, so the workflow ends cancelled rather than completed.

    asyncio.run(main())
    assert len(ids) == 3
    for workflow_id in ids[:2]:
        wait_phase(otel_hub, workflow_id, "completed")
    wait_phase(otel_hub, ids[2], "cancelled")
    assert detach_errors() == []


# ---------------------------------------------------------------------- across tasks and threads


async def test_a_workflow_entered_in_one_task_and_exited_in_another(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    run = workflow(
        "handed-over", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ).new_async()

    async def enter() -> None:
        await run.__aenter__()
        run.progress(50, "half")

    async def leave() -> None:
        assert current_workflow() is None  # this task never entered it
        await run.__aexit__(None, None, None)

    await asyncio.create_task(enter())
    await asyncio.create_task(leave())
    workflow_id = run.id
    assert wait_phase(otel_hub, workflow_id, "completed").progress == 50
    assert detach_errors() == []


async def test_async_with_inside_an_async_generator_driven_by_several_tasks(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    ids: list[str] = []

    async def pages() -> AsyncGenerator[int, None]:
        async with workflow(
            "pages", coordinator=otel_coordinator, tracer_provider=tracer_provider
        ) as wf:
            ids.append(wf.id)
            for page in range(3):
                yield page

    gen = pages()
    assert await asyncio.create_task(anext(gen)) == 0
    assert await asyncio.create_task(anext(gen)) == 1
    await asyncio.create_task(gen.aclose())
    assert wait_phase(otel_hub, ids[0], "completed").errors == ()
    assert detach_errors() == []


def test_a_workflow_entered_in_one_thread_and_exited_in_another(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    run: Workflow = workflow(
        "cross-thread", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ).new()
    in_thread(run.__enter__)
    assert current_workflow() is None
    in_thread(lambda: run.__exit__(None, None, None))
    wait_phase(otel_hub, run.id, "completed")
    assert detach_errors() == []


def test_one_definition_entered_concurrently_by_threads_exits_each_own_run(
    otel_hub: ThreadedHub,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    detach_errors: Callable[[], list[str]],
) -> None:
    shared = workflow("shared", coordinator=otel_coordinator, tracer_provider=tracer_provider)
    all_inside = threading.Barrier(4, timeout=OTEL_TIMEOUT)
    runs: dict[int, str] = {}

    def worker(n: int) -> None:
        with shared as wf:
            runs[n] = wf.id
            all_inside.wait()  # every run is open at once
            wf.progress(n * 10)
            assert current_workflow() is wf
        assert wf.state.phase.value == "completed"

    failures: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            worker(n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(OTEL_TIMEOUT)
    assert failures == []
    assert len(set(runs.values())) == 4
    for n, workflow_id in runs.items():
        assert wait_phase(otel_hub, workflow_id, "completed").progress == n * 10
    assert detach_errors() == []
