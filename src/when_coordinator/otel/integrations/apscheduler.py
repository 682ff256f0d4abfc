"""``WhenAPSchedulerInstrumentor``: every run of an APScheduler (3.x) job is a workflow.

Registered as the ``when_apscheduler`` entry point: a process that runs a scheduler, started
with ``opentelemetry-instrument`` and ``WHEN_URL`` set, needs nothing else. The hook is the
executors' ``run_job`` (and ``run_coroutine_job`` for coroutine jobs), which every executor
calls in the thread, process or loop that runs the job:

- each scheduled run time is a workflow of its own: named after the job (``job.name``), with
  ``action_id`` ``<job id>-<run time, UTC, %Y%m%dT%H%M%S.%fZ>`` and workflow id
  ``apscheduler-<action_id>``, so an operator finds every run of job ``nightly`` under
  ``apscheduler-nightly-``;
- the job returns: completed; it raises: failed with the error; a hub cancel honoured at a
  ``safe_point()``: cancelled; a run APScheduler skips because it missed its misfire grace
  time: cancelled (``missed``);
- ``BaseScheduler.add_job`` (wrapped with wrapt) called inside a workflow makes that
  workflow the parent of the job's runs (remembered in this process, by job id).

The executors import ``run_job`` by name, so it is replaced in each executor module. That is
done with a plain module-level function rather than a wrapt proxy: ``ProcessPoolExecutor``
pickles ``run_job`` by reference, and a proxy does not pickle.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ..propagation import carrier
from .tasks import TaskFilter, TaskRun, report_from_this_process

__all__ = ["WhenAPSchedulerInstrumentor", "run_coroutine_job", "run_id", "run_job"]

_log = logging.getLogger(__name__)

FRAMEWORK = "apscheduler"
EXECUTOR_MODULES = ("asyncio", "debug", "gevent", "pool", "tornado", "twisted")

_filter = TaskFilter()
_origins: OrderedDict[str, dict[str, str]] = OrderedDict()  # job id -> W3C headers
_MAX_ORIGINS = 10_000
_lock = threading.Lock()


def run_id(job_id: str, run_time: datetime) -> str:
    """The ``action_id`` of one run: the job id and its scheduled time in UTC."""
    return f"{job_id}-{run_time.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"


class WhenAPSchedulerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("apscheduler >= 3.10, < 4",)

    def _instrument(self, **kwargs: Any) -> None:
        from apscheduler.executors import base  # noqa: PLC0415 - only once it runs
        from apscheduler.schedulers.base import BaseScheduler  # noqa: PLC0415

        global _filter  # noqa: PLW0603 - read by run_job
        _filter = TaskFilter.from_env()
        self._replaced: list[tuple[Any, str, Any]] = []
        ours = {"run_job": run_job, "run_coroutine_job": run_coroutine_job}
        for name in EXECUTOR_MODULES:
            try:
                module = importlib.import_module(f"apscheduler.executors.{name}")
            except ImportError:  # gevent, tornado, twisted: only where installed
                continue
            for attribute, replacement in ours.items():
                original = getattr(module, attribute, None)
                if original is not None and original is getattr(base, attribute):
                    setattr(module, attribute, replacement)
                    self._replaced.append((module, attribute, original))
        wrapt.wrap_function_wrapper(BaseScheduler, "add_job", _add_job)

    def _uninstrument(self, **kwargs: Any) -> None:
        from apscheduler.schedulers.base import BaseScheduler  # noqa: PLC0415

        for module, attribute, original in getattr(self, "_replaced", ()):
            setattr(module, attribute, original)
        self._replaced = []
        held = vars(BaseScheduler).get("add_job")
        if isinstance(held, wrapt.ObjectProxy):
            BaseScheduler.add_job = held.__wrapped__
        with _lock:
            _origins.clear()


def _add_job(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    job = wrapped(*args, **kwargs)
    try:
        headers = carrier()
        if "baggage" in headers:
            with _lock:
                _origins[job.id] = headers
                while len(_origins) > _MAX_ORIGINS:
                    _origins.popitem(last=False)
    except Exception:
        _log.debug("cannot note the workflow that added a job", exc_info=True)
    return job


def _run(job: Any, run_time: datetime) -> TaskRun | None:
    name = str(getattr(job, "name", "") or job.id)
    if not _filter(name):
        return None
    report_from_this_process()  # a process-pool worker
    with _lock:
        headers = _origins.get(job.id)
    run = TaskRun(
        FRAMEWORK,
        name,
        run_id(job.id, run_time),
        headers=headers,
        attributes={"apscheduler.job.id": str(job.id)},
    )
    run.start()
    return run


def _settle(run: TaskRun | None, events: list[Any]) -> None:
    if run is None:
        return
    from apscheduler.events import EVENT_JOB_MISSED  # noqa: PLC0415

    event = events[-1] if events else None
    exception = getattr(event, "exception", None)
    if getattr(event, "code", None) == EVENT_JOB_MISSED:
        run.cancelled("missed: past its misfire grace time")
    else:
        run.finish(exception if isinstance(exception, BaseException) else None)


def run_job(job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str) -> Any:
    """APScheduler's ``run_job``, each run time in a workflow of its own."""
    from apscheduler.executors import base  # noqa: PLC0415

    events: list[Any] = []
    for run_time in run_times:
        run = _run(job, run_time)
        try:
            done = base.run_job(job, jobstore_alias, [run_time], logger_name)
        except BaseException as exc:
            if run is not None:
                run.finish(exc)
            raise
        _settle(run, done)
        events.extend(done)
    return events


async def run_coroutine_job(
    job: Any, jobstore_alias: str, run_times: list[datetime], logger_name: str
) -> Any:
    """APScheduler's ``run_coroutine_job``, each run time in a workflow of its own."""
    from apscheduler.executors import base  # noqa: PLC0415

    events: list[Any] = []
    for run_time in run_times:
        run = _run(job, run_time)
        try:
            done = await base.run_coroutine_job(job, jobstore_alias, [run_time], logger_name)
        except BaseException as exc:
            if run is not None:
                run.finish(exc)
            raise
        _settle(run, done)
        events.extend(done)
    return events
