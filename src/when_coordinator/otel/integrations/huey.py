"""``WhenHueyInstrumentor``: every Huey task execution is a workflow.

Registered as the ``when_huey`` entry point: ``opentelemetry-instrument huey_consumer
app.huey`` with ``WHEN_URL`` set is all it takes. Every ``Huey`` instance made (``RedisHuey``
and the others; ``Huey.__init__`` is wrapped with wrapt) gets a receiver for Huey's signals,
which it emits in the thread running the task:

- ``enqueued``: a task enqueued inside a workflow stores that workflow's W3C context in
  Huey's own storage under ``when:context:<task id>`` (a Huey message has no headers), so
  its workflow becomes that one's child;
- ``executing``: the task's workflow starts (``tasks.TaskRun``), ``huey-<task id>``, named
  ``<module>.<task>``; a retry resumes the same workflow;
- ``complete``: completed; ``error`` / ``timeout`` / ``locked`` / ``rate-limited`` with no
  retries left: failed; with retries left, ``retrying`` pauses it for the next attempt with
  a recoverable ``error``;
- ``revoked`` (a revoked task the consumer skipped), ``expired``, ``canceled``
  (``CancelExecution``): cancelled with the reason; ``interrupted`` (the consumer stopped
  while it ran): failed.

A hub cancel ends the task at its next ``safe_point()`` and is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ...protocol import Phase
from ..propagation import carrier
from ..workflow import WorkflowCancelled
from .tasks import TaskFilter, TaskLost, TaskRun, TaskRuns, report_from_this_process

__all__ = ["WhenHueyInstrumentor", "context_key"]

_log = logging.getLogger(__name__)

FRAMEWORK = "huey"
_runs = TaskRuns()
_failures: dict[str, BaseException | str] = {}  # task id -> the attempt's error, until retrying
_enabled = True  # False after uninstrument(): Huey instances keep the receiver, which rests


def context_key(task_id: str) -> str:
    """Huey storage key of what a task's workflow inherits: W3C headers and attempt number."""
    return f"when:context:{task_id}"


def _name(task: Any) -> str:
    return f"{type(task).__module__}.{getattr(task, 'name', type(task).__name__)}"


class _Failed(Exception):
    """A task that failed without an exception of its own (timed out, locked...)."""


class WhenHueyInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("huey >= 2.5",)

    def _instrument(self, **kwargs: Any) -> None:
        from huey import api  # noqa: PLC0415 - only once the instrumentor runs

        global _enabled  # noqa: PLW0603 - read by the receivers
        _enabled = True
        self._filter = TaskFilter.from_env()
        wrapt.wrap_function_wrapper(api.Huey, "__init__", self._huey_init)

    def _uninstrument(self, **kwargs: Any) -> None:
        from huey import api  # noqa: PLC0415

        global _enabled  # noqa: PLW0603
        _enabled = False
        init = vars(api.Huey).get("__init__")
        if isinstance(init, wrapt.ObjectProxy):
            api.Huey.__init__ = init.__wrapped__
        _runs.clear()
        _failures.clear()

    def _huey_init(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        connect(instance, self._filter)
        return result


def connect(huey: Any, task_filter: TaskFilter | None = None) -> None:
    """Connect the signal receiver to ``huey`` (one made before instrumenting)."""
    chosen = task_filter or TaskFilter.from_env()

    def receiver(signal: str, task: Any, exc: BaseException | None = None) -> None:
        if not _enabled and _runs.get(str(getattr(task, "id", ""))) is None:
            return
        try:
            _on_signal(huey, chosen, signal, task, exc)
        except Exception:
            _log.warning("huey signal %s: reporting failed", signal, exc_info=True)

    huey.signal()(receiver)


def _on_signal(
    huey: Any, chosen: TaskFilter, signal: str, task: Any, exc: BaseException | None
) -> None:
    from huey import signals as s  # noqa: PLC0415

    name = _name(task)
    if not chosen(name):
        return
    task_id = str(task.id)
    if signal == s.SIGNAL_ENQUEUED:
        headers = carrier()
        if "baggage" in headers and _runs.get(task_id) is None:
            huey.put(context_key(task_id), {"headers": headers})
    elif signal == s.SIGNAL_EXECUTING:
        _start(huey, name, task)
    elif signal == s.SIGNAL_COMPLETE:
        _end(task_id, None)
    elif signal == s.SIGNAL_RETRYING:
        run = _runs.pop(task_id)
        error = _failures.pop(task_id, "the task asked to be retried")
        if run is not None:
            huey.put(context_key(task_id), {"attempt": run.attempt + 1})
            run.retrying(error)
    elif signal in (s.SIGNAL_ERROR, s.SIGNAL_TIMEOUT, s.SIGNAL_LOCKED, s.SIGNAL_RATE_LIMITED):
        error = exc if exc is not None else _Failed(f"the task {signal.replace('-', ' ')}")
        if isinstance(error, WorkflowCancelled):
            task.retries = 0  # cancelled from the hub: not retried
        if task.retries:
            _failures[task_id] = error  # ``retrying`` follows
        else:
            _end(task_id, error)
    elif signal == s.SIGNAL_CANCELED:
        run = _runs.get(task_id)
        if run is None:  # a pre-execute hook cancelled it before it ran
            TaskRun.revoked(FRAMEWORK, name, task_id, "canceled (CancelExecution)", phase=None)
        elif task.retries:
            _failures[task_id] = "canceled (CancelExecution), to be retried"
        else:
            _runs.pop(task_id)
            run.cancelled("canceled (CancelExecution)")
    elif signal in (s.SIGNAL_REVOKED, s.SIGNAL_EXPIRED):
        reason = "revoked" if signal == s.SIGNAL_REVOKED else "expired"
        inherited = huey.get(context_key(task_id))  # popped: it will not start
        retry = isinstance(inherited, dict) and inherited.get("attempt", 0)
        # A revoked retry: the hub has its workflow paused since the attempt before.
        TaskRun.revoked(FRAMEWORK, name, task_id, reason, phase=Phase.PAUSED if retry else None)
    elif signal == s.SIGNAL_INTERRUPTED:
        _end(task_id, TaskLost("the consumer stopped while the task ran"))


def _start(huey: Any, name: str, task: Any) -> None:
    report_from_this_process()  # a process worker (``-k process``) forked by the consumer
    task_id = str(task.id)
    inherited = huey.get(context_key(task_id))  # popped: one round trip per execution
    inherited = inherited if isinstance(inherited, dict) else {}
    headers = inherited.get("headers")
    attempt = inherited.get("attempt", 0)
    run = TaskRun(
        FRAMEWORK,
        name,
        task_id,
        headers=headers if isinstance(headers, dict) else None,
        attempt=attempt if isinstance(attempt, int) else 0,
    )
    run.start()
    _runs.add(run)


def _end(task_id: str, exc: BaseException | None) -> None:
    _failures.pop(task_id, None)
    run = _runs.pop(task_id)
    if run is not None:
        run.finish(exc)
