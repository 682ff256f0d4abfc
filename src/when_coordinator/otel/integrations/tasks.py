"""What every task-queue integration shares: one task execution, one workflow.

A framework module finds the framework's hooks (signals, a wrapped method, a middleware) and
calls a ``TaskRun`` from them; everything about the workflow is decided here, the same for
every framework:

- **Name and ids.** The workflow is named after the task (``action_type`` on the wire), its
  ``action_id`` is the framework's task or job id, and its id is ``task_workflow_id(framework,
  task_id)``: ``<framework>-<task id>``, e.g. ``celery-5f0c...`` for Celery task ``5f0c...``.
  An operator finds one from the other, and every attempt of a retried task is the same
  workflow.
- **Lifecycle.** ``start()`` walks the workflow to ``execution`` (as ``workflow()`` does),
  ``finish()`` completes it, or fails it (sending ``error``) when given the task's exception.
  ``retrying()`` reports the failed attempt as a recoverable ``error`` and pauses the workflow
  until the next attempt, which may run in another worker process: that one starts with
  ``attempt > 0`` and resumes the same workflow instead of announcing a new one.
  ``cancelled()`` ends it ``cancelled`` (a revoked, aborted or stopped task).
- **Parent workflows.** A task sent from inside a workflow carries the workflow ids in W3C
  baggage in its message headers (``inject_headers`` on the sending side); ``start()`` makes
  the task's workflow the child of that one.
- **Steering.** While the task runs, ``when_coordinator.current_workflow()`` is its workflow,
  so ``safe_point()`` honours pause and cancel from the hub; ``cancel_requested`` is what a
  framework's native abort check should also report.
- **Which tasks.** ``WHEN_TASKS_INCLUDE`` and ``WHEN_TASKS_EXCLUDE`` (comma-separated shell
  patterns matched against task names, see ``TaskFilter``) choose the tasks that are
  workflows; by default every task is.
- **Worker processes.** Processes a worker forks report through a relay in the worker
  (``relay.report_to_parent``), so the worker is one service at the hub;
  ``report_from_this_process`` gives a process its own connection where there is no relay.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.util.types import AttributeValue

from ...protocol import Phase
from .. import attributes as attr
from ..propagation import carrier
from ..tracking import get_coordinator
from ..workflow import Workflow, WorkflowCancelled

__all__ = [
    "EXCLUDE_ENV",
    "INCLUDE_ENV",
    "TRACE_HEADERS",
    "TaskFilter",
    "TaskLost",
    "TaskRun",
    "TaskRuns",
    "inject_headers",
    "report_from_this_process",
    "task_workflow_id",
]

_log = logging.getLogger(__name__)

INCLUDE_ENV = "WHEN_TASKS_INCLUDE"
EXCLUDE_ENV = "WHEN_TASKS_EXCLUDE"
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
"""The W3C headers a task message carries from the sender's workflow to the task's."""


def task_workflow_id(framework: str, task_id: str) -> str:
    """The workflow id of a task execution: ``<framework>-<task id>``."""
    return f"{framework}-{task_id}"


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


class TaskFilter:
    """Which task names become workflows: those matching an include pattern (all, when there
    is none) and no exclude pattern. Patterns are ``fnmatch`` shell patterns, case-sensitive:
    ``app.tasks.*``, ``*.cleanup``."""

    _MAX_CACHED = 4096

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        self.include = include
        self.exclude = exclude
        self._cache: dict[str, bool] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TaskFilter:
        env = os.environ if environ is None else environ
        return cls(_patterns(env.get(INCLUDE_ENV, "")), _patterns(env.get(EXCLUDE_ENV, "")))

    def __call__(self, name: str) -> bool:
        verdict = self._cache.get(name)
        if verdict is None:
            verdict = (
                not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)
            ) and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)
            if len(self._cache) < self._MAX_CACHED:  # task names are few; bound it anyway
                self._cache[name] = verdict
        return verdict


def inject_headers(headers: MutableMapping[str, Any]) -> None:
    """Add the current trace and workflow context to a task message's headers, keeping any
    the framework's own instrumentation already put there."""
    for key, value in carrier().items():
        headers.setdefault(key, value)


_BAGGAGE = W3CBaggagePropagator()


def _parent_ids(headers: Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """(parent, root) workflow ids from W3C baggage headers; (None, None) lets the workflow
    inherit them from the current context instead.

    Only the ``baggage`` header carries them: a task without one (most tasks have a
    ``traceparent`` alone) costs nothing here, where extracting every header cost about 15 us
    of each task's run."""
    baggage_header = headers.get("baggage") if headers else None
    if not baggage_header:
        return None, None
    context = _BAGGAGE.extract({"baggage": baggage_header}, context=otel_context.Context())
    parent = baggage.get_baggage(attr.BAGGAGE_WORKFLOW_ID, context)
    if not isinstance(parent, str) or not parent:
        return None, None
    root = baggage.get_baggage(attr.BAGGAGE_ROOT_ID, context)
    return parent, root if isinstance(root, str) else ""


def report_from_this_process() -> None:
    """Make sure this process reports to the hub on a connection of its own.

    In a worker process forked from the instrumented main process the inherited connection
    belongs to the parent and stays quiet; the ``when`` instrumentor gives the child its own
    (same service name, an instance id of its own) and points the span processor and log
    exporter at it. Without that instrumentor, the default coordinator reconnects. Cheap
    when already done.
    """
    from ..instrumentor import active_instrumentor  # noqa: PLC0415 - avoid an import cycle

    instrumentor = active_instrumentor()
    try:
        if instrumentor is not None:
            instrumentor.report_from_forked_worker()
        get_coordinator().connect()  # a no-op unless forked and not yet reconnected
    except Exception:
        _log.warning("cannot report from this worker process", exc_info=True)


class TaskRun:
    """One execution (attempt) of a task, as a workflow; see the module docstring.

    Never raises into the framework: a telemetry failure is logged and the task runs on.
    """

    def __init__(
        self,
        framework: str,
        name: str,
        task_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        attempt: int = 0,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self.framework = framework
        self.name = name
        self.task_id = task_id
        self.attempt = attempt
        self.workflow_id = task_workflow_id(framework, task_id)
        self._headers = headers
        self._attributes = {"when.task.framework": framework, **(attributes or {})}
        self._workflow: Workflow | None = None
        self._abort_reason: str | None = None

    @property
    def workflow(self) -> Workflow | None:
        return self._workflow

    @property
    def cancel_requested(self) -> bool:
        """Whether the hub asked to cancel: what a native abort check should also report."""
        run = self._workflow
        return run is not None and not run.ended and run.cancel_requested

    def start(self) -> None:
        """Begin the workflow and make it current (``current_workflow()``) for the task."""
        parent_id, root_id = _parent_ids(self._headers)
        if parent_id == self.workflow_id:  # a retry, sent from the attempt before
            parent_id = root_id = None
        continued = Phase.PAUSED if self.attempt > 0 else None
        try:
            run = Workflow(
                self.name,
                workflow_id=self.workflow_id,
                parent_id=parent_id,
                root_id=root_id,
                action_id=self.task_id,
                action_type=self.name,
                attributes=self._attributes,
            )
            if continued is not None:
                run._continue(continued, f"attempt {self.attempt + 1}")
            run.__enter__()
        except Exception:
            _log.warning("task %s[%s]: no workflow", self.name, self.task_id, exc_info=True)
            return
        self._workflow = run

    def note_abort(self, reason: str) -> None:
        """The framework's native abort was seen by the task: it ends ``cancelled``."""
        if self._abort_reason is None:
            self._abort_reason = reason

    def hub_cancel_reason(self) -> str:
        run = self._workflow
        if run is None:
            return ""
        state = run.state
        return state.reason if state.phase is Phase.CANCELLING else run._cancel_reason or ""

    def finish(self, exc: BaseException | None = None) -> None:
        """End the attempt: completed, or failed with ``exc``, or cancelled when the task saw
        an abort (``note_abort``) or raised the hub's ``WorkflowCancelled``."""
        run, self._workflow = self._workflow, None
        if run is None:
            return
        if exc is None and self._abort_reason is not None:
            exc = WorkflowCancelled(run.id, self._abort_reason)
        try:
            run.__exit__(type(exc) if exc else None, exc, None)
        except Exception:
            _log.warning("task %s[%s]: ending its workflow", self.name, self.task_id, exc_info=True)

    def cancelled(self, reason: str) -> None:
        """End the attempt ``cancelled`` (a revoked or stopped task)."""
        run = self._workflow
        if run is not None:
            self.finish(WorkflowCancelled(run.id, reason))

    def retrying(self, error: BaseException | str) -> None:
        """The attempt failed and the task will run again: a recoverable ``error``, and the
        workflow waits ``paused`` for the next attempt (``attempt + 1``)."""
        run, self._workflow = self._workflow, None
        if run is None:
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        try:
            run.error(text, recoverable=True)
            run._suspend(
                f"retrying after attempt {self.attempt + 1}: {text}",
                f"{run.id}-attempt-{self.attempt + 1}",
            )
        except Exception:
            _log.warning("task %s[%s]: reporting a retry", self.name, self.task_id, exc_info=True)
        finally:
            run._deactivate()

    def abandon(self) -> None:
        """The attempt was interrupted (its process is being terminated): close its span and
        forget it here; the process that stopped it reports how it ended (``revoked``,
        ``failed_elsewhere``)."""
        run, self._workflow = self._workflow, None
        if run is None:
            return
        try:
            run._release()
        except Exception:
            _log.debug("task %s[%s]: releasing", self.name, self.task_id, exc_info=True)
        finally:
            run._deactivate()

    @classmethod
    def revoked(
        cls, framework: str, name: str, task_id: str, reason: str, *, phase: Phase | None
    ) -> None:
        """A task revoked before or while it ran, reported from a process that did not run it:
        its workflow ends ``cancelled`` with ``reason``. ``phase`` is the one the hub has for
        it (None: the task never started, the hub does not know it)."""
        cls._end_elsewhere(framework, name, task_id, phase, WorkflowCancelled("", reason))

    @classmethod
    def failed_elsewhere(
        cls, framework: str, name: str, task_id: str, error: Exception | str, *, phase: Phase
    ) -> None:
        """A task whose process died while it ran (killed, crashed): its workflow fails with
        ``error`` (a text becomes a ``TaskLost``)."""
        exc = error if isinstance(error, Exception) else TaskLost(error)
        cls._end_elsewhere(framework, name, task_id, phase, exc)

    @classmethod
    def _end_elsewhere(
        cls, framework: str, name: str, task_id: str, phase: Phase | None, exc: Exception
    ) -> None:
        run = Workflow(
            name,
            workflow_id=task_workflow_id(framework, task_id),
            parent_id="",
            action_id=task_id,
            action_type=name,
            attributes={"when.task.framework": framework},
        )
        if phase is not None:
            run._continue(phase)
        if isinstance(exc, WorkflowCancelled):
            exc.workflow_id = run.id
        try:
            run.__enter__()
            run.__exit__(type(exc), exc, None)
        except Exception:
            _log.warning("task %s[%s]: reporting how it ended", name, task_id, exc_info=True)


class TaskLost(Exception):
    """The process running a task ended before the task did."""


class TaskRuns:
    """The task runs of one process, by task id (a framework's hooks find them here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, TaskRun] = {}

    def add(self, run: TaskRun) -> None:
        with self._lock:
            self._runs[run.task_id] = run

    def get(self, task_id: str | None) -> TaskRun | None:
        if task_id is None:
            return None
        with self._lock:
            return self._runs.get(task_id)

    def pop(self, task_id: str | None) -> TaskRun | None:
        if task_id is None:
            return None
        with self._lock:
            return self._runs.pop(task_id, None)

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()
