"""``workflow()``: a workflow is an OpenTelemetry span whose phases the hub sees live.

Entering a workflow registers it, sends ``workflow_created``, starts its span and walks it to
``execution``; leaving completes it, an exception fails it (``error`` sent, span status set,
exception re-raised unchanged), and a cancellation honoured at a safe point ends it as
``cancelled``. Every transition is a ``when.phase_changed`` span event and a live
``phase_changed`` message, sent when it happens.

The run's OpenTelemetry Context (its span, the baggage of its ids, and the run itself, which is
what ``current_workflow()`` reads) is attached only while workflow code runs: for generators
and async generators around each step, so a consumer iterating from another task or thread
never detaches a context it did not attach. The core of a run is in ``otel/_base.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar, cast

from opentelemetry.trace import TracerProvider
from opentelemetry.util.types import AttributeValue

from ..client import Coordinator
from ._base import WorkflowBase, WorkflowCancelled, current_run

__all__ = [
    "AsyncWorkflow",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowDefinition",
    "current_workflow",
    "workflow",
]

F = TypeVar("F", bound=Callable[..., Any])


def current_workflow() -> Workflow | AsyncWorkflow | None:
    """The workflow whose code is running now, if any: in this thread or task, or in one the
    OpenTelemetry context was carried into (a thread pool under the threading
    instrumentation, ``attached()`` in another process)."""
    return cast("Workflow | AsyncWorkflow | None", current_run())


class Workflow(WorkflowBase):
    """A workflow run by synchronous code: ``with workflow("name") as wf:``."""

    def __enter__(self) -> Workflow:
        self._begin()
        self._activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return self._end(exc)
        finally:
            self._deactivate()

    def safe_point(self) -> None:
        """Honour the hub here: complete a pause and block until resumed, or complete a
        cancellation and raise ``WorkflowCancelled``. Cheap when nothing was asked."""
        while True:
            with self._wake_lock:
                version = self._version
            if not self._safe_step():
                return
            with self._wake_lock:
                while self._version == version and not self._ended:
                    self._waiters += 1
                    try:
                        self._condition().wait()
                    finally:
                        self._waiters -= 1


class AsyncWorkflow(WorkflowBase):
    """A workflow run by asyncio code: ``async with workflow("name") as wf:``."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wakeup: asyncio.Event | None = None

    async def __aenter__(self) -> AsyncWorkflow:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._begin()
        self._activate()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return self._end(exc)
        finally:
            self._deactivate()

    _awaiting = 0
    """``safe_point`` calls between their look at the phase and their wake-up."""

    def _notify(self) -> None:
        super()._notify()
        # Only a ``safe_point`` that may await needs waking: ``call_soon_threadsafe`` writes to
        # the loop's self-pipe, a system call that every transition of every run paid.
        loop, wakeup = self._loop, self._wakeup
        if self._awaiting and loop is not None and wakeup is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wakeup.set)

    async def safe_point(self) -> None:
        """Like ``Workflow.safe_point``, awaiting instead of blocking while paused."""
        assert self._wakeup is not None, "use the workflow inside async with"
        while True:
            self._wakeup.clear()
            self._awaiting += 1  # before the look: a change after it wakes the wait below
            try:
                if not self._safe_step():
                    return
                await self._wakeup.wait()
            finally:
                self._awaiting -= 1


class WorkflowDefinition:
    """What ``workflow()`` returns: a context manager (sync and async) and a decorator.

    Each ``with`` block or decorated call is a new workflow run. The run a ``with`` block
    exits is the one its own context entered, so one definition can be entered concurrently by
    many threads and tasks. A block may also end in another context (a generator closed by
    another thread, an async generator driven by several tasks): then the one run still open
    is exited.
    """

    def __init__(self, name: str, **options: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a workflow needs a non-empty name")
        self.name = name
        self.options = options
        self._entered: ContextVar[tuple[WorkflowBase, ...]] = ContextVar(
            f"when_workflow_{name}", default=()
        )
        self._open: list[WorkflowBase] = []  # entered and not yet exited, by any context
        self._open_lock = threading.Lock()

    def new(self) -> Workflow:
        return Workflow(self.name, **self.options)

    def new_async(self) -> AsyncWorkflow:
        return AsyncWorkflow(self.name, **self.options)

    def __enter__(self) -> Workflow:
        run = self.new().__enter__()
        self._push(run)
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        run = self._pop()
        assert isinstance(run, Workflow)
        return run.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> AsyncWorkflow:
        run = await self.new_async().__aenter__()
        self._push(run)
        return run

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        run = self._pop()
        assert isinstance(run, AsyncWorkflow)
        return await run.__aexit__(exc_type, exc, tb)

    def _push(self, run: WorkflowBase) -> None:
        self._entered.set((*self._entered.get(), run))
        with self._open_lock:
            self._open.append(run)

    def _pop(self) -> WorkflowBase:
        entered = self._entered.get()
        with self._open_lock:
            # Runs this context entered that another context exited meanwhile are stale.
            # ``in`` compares by identity here: runs do not define ``__eq__``.
            while entered and entered[-1] not in self._open:
                entered = entered[:-1]
            if entered:
                run = entered[-1]
                entered = entered[:-1]
            elif len(self._open) == 1:
                run = self._open[0]  # entered in another context: the only one it can be
            else:
                self._entered.set(entered)
                raise RuntimeError(
                    f"workflow {self.name!r} exited without being entered here"
                    + (f" ({len(self._open)} runs are open elsewhere)" if self._open else "")
                )
            self._open.remove(run)  # entered once, so listed once
        self._entered.set(entered)
        return run

    def __call__(self, fn: F) -> F:
        """Decorate a function, coroutine function, generator or async generator function."""
        if inspect.isasyncgenfunction(fn):
            return cast(F, self._wrap_async_generator(fn))
        if inspect.isgeneratorfunction(fn):
            return cast(F, self._wrap_generator(fn))
        if inspect.iscoroutinefunction(fn):
            return cast(F, self._wrap_coroutine(fn))
        if not callable(fn):
            raise TypeError(f"@workflow decorates callables, got {type(fn).__name__}")
        return cast(F, self._wrap_function(fn))

    def _wrap_function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self.new():
                return fn(*args, **kwargs)

        return run

    def _wrap_coroutine(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> Any:
            async with self.new_async():
                return await fn(*args, **kwargs)

        return run

    def _wrap_generator(self, fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            return _drive(self.new(), fn(*args, **kwargs))

        return run

    def _wrap_async_generator(
        self, fn: Callable[..., AsyncGenerator[Any, Any]]
    ) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            return _drive_async(self.new_async(), fn(*args, **kwargs))

        return run


def _drive(run: Workflow, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Run a generator as a workflow, with its context attached only during each step."""
    run._begin()
    to_send: Any = None
    to_throw: BaseException | None = None
    try:
        while True:
            run._activate()
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = gen.throw(exc)
                else:
                    item = gen.send(to_send)
            finally:
                run._deactivate()
            try:
                to_send = yield item
            except GeneratorExit:
                run._activate()
                try:
                    gen.close()
                finally:
                    run._deactivate()
                run._end(None)  # the consumer stopped early: the work it wanted is done
                return None
            except BaseException as exc:
                to_throw = exc
    except StopIteration as stop:
        run._end(None)
        return stop.value
    except BaseException as exc:
        if run._end(exc):
            return None
        raise


async def _drive_async(
    run: AsyncWorkflow, agen: AsyncGenerator[Any, Any]
) -> AsyncGenerator[Any, Any]:
    """Run an async generator as a workflow, with its context attached only during each step."""
    run._loop = asyncio.get_running_loop()
    run._wakeup = asyncio.Event()
    run._begin()
    to_send: Any = None
    to_throw: BaseException | None = None
    try:
        while True:
            run._activate()
            try:
                if to_throw is not None:
                    exc, to_throw = to_throw, None
                    item = await agen.athrow(exc)
                else:
                    item = await agen.asend(to_send)
            finally:
                run._deactivate()
            try:
                to_send = yield item
            except GeneratorExit:
                run._activate()
                try:
                    await agen.aclose()
                finally:
                    run._deactivate()
                run._end(None)
                return
            except BaseException as exc:
                to_throw = exc
    except StopAsyncIteration:
        run._end(None)
    except BaseException as exc:
        if not run._end(exc):
            raise


def workflow(
    name: str,
    *,
    workflow_id: str | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    action_id: str | None = None,
    action_type: str | None = None,
    coordinator: Coordinator | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    tracer_provider: TracerProvider | None = None,
    cicd_attributes: bool | None = None,
) -> WorkflowDefinition:
    """A workflow named ``name``: ``with``, ``async with``, or a decorator.

    Ids default to fresh ones; parent and root come from the enclosing workflow or, across
    processes, from W3C baggage. ``action_type`` defaults to the name, so the hub shows it.
    ``cicd_attributes`` also sets the ``cicd.pipeline.*`` run attributes on its span (default:
    the coordinator's ``cicd_attributes``, ``WHEN_CICD_ATTRIBUTES``).
    """
    return WorkflowDefinition(
        name,
        workflow_id=workflow_id,
        parent_id=parent_id,
        root_id=root_id,
        action_id=action_id,
        action_type=action_type,
        coordinator=coordinator,
        attributes=attributes,
        tracer_provider=tracer_provider,
        cicd_attributes=cicd_attributes,
    )
