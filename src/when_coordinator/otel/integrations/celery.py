"""``WhenCeleryInstrumentor``: every Celery task execution is a workflow.

Registered as the ``when_celery`` entry point, so ``opentelemetry-instrument celery -A app
worker`` with ``WHEN_URL`` set is all it takes, with any pool (prefork, the default, included).
It connects Celery's signals the way ``opentelemetry-instrumentation-celery`` does:

- ``before_task_publish``: the sender's workflow ids go into the message headers (W3C
  baggage), so a task sent from inside a workflow becomes its child at the hub;
- ``task_prerun``: the task's workflow starts (``tasks.TaskRun``), as an INTERNAL child of
  the contrib instrumentation's consumer span when that is active, a root span otherwise;
- ``task_success`` / ``task_failure`` / ``task_retry``: the attempt ends completed, failed, or
  paused for its retry with a recoverable ``error``. These fire before ``task_postrun``, where
  the contrib instrumentation detaches its context, so contexts unwind in order;
  ``task_postrun`` ends what is left (a task that raised ``Ignore`` or ``Reject``);
- ``task_revoked``: the workflow ends ``cancelled`` with the reason;
- ``worker_init`` / ``worker_process_init`` / ``worker_process_shutdown``: the main process
  starts a ``relay.Relay`` before the pool forks, and each pool process reports through it,
  so the worker is one service at the hub (which keeps a workflow with the service that
  created it: a retry in another pool process, or a revoke the main process sees, must come
  through the same connection); ``after_setup_logger`` / ``after_setup_task_logger``: the
  instrumentor's logging handler is put back where Celery's logging setup removed it.

``AbortableTask.is_aborted()`` is bridged both ways: it reports a hub cancel, and a task that
saw a native abort ends ``cancelled``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ...protocol import Phase
from .relay import (
    POOL_WRITE_DELAY,
    deliver_and_close,
    relay_of_this_process,
    report_from_worker_process,
)
from .tasks import TRACE_HEADERS, TaskFilter, TaskRun, TaskRuns, inject_headers

__all__ = ["WhenCeleryInstrumentor"]

_log = logging.getLogger(__name__)

FRAMEWORK = "celery"
_runs = TaskRuns()


def _headers(request: Any) -> dict[str, str]:
    """The W3C headers of a task's message (Celery exposes custom headers on the request)."""
    headers: dict[str, str] = {}
    for key in TRACE_HEADERS:
        value = getattr(request, key, None)
        if isinstance(value, str):
            headers[key] = value
    return headers


def _task_id(task: Any) -> str | None:
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    return task_id if isinstance(task_id, str) else None


class WhenCeleryInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("celery >= 5.0",)

    def _instrument(self, **kwargs: Any) -> None:
        from celery import signals  # noqa: PLC0415 - only once the instrumentor runs
        from celery.contrib import abortable  # noqa: PLC0415

        self._filter = TaskFilter.from_env()
        self._connected = [
            (signals.before_task_publish, self._before_publish),
            (signals.task_prerun, self._prerun),
            (signals.task_success, self._success),
            (signals.task_failure, self._failure),
            (signals.task_retry, self._retry),
            (signals.task_postrun, self._postrun),
            (signals.task_revoked, self._revoked),
            (signals.worker_init, self._worker_init),
            (signals.worker_process_init, self._worker_process_init),
            (signals.worker_process_shutdown, self._worker_process_shutdown),
            (signals.after_setup_logger, self._logger_set_up),
            (signals.after_setup_task_logger, self._logger_set_up),
        ]
        for signal, receiver in self._connected:
            signal.connect(receiver, weak=False)
        wrapt.wrap_function_wrapper(abortable.AbortableTask, "is_aborted", _is_aborted)

    def _uninstrument(self, **kwargs: Any) -> None:
        from celery.contrib import abortable  # noqa: PLC0415

        for signal, receiver in getattr(self, "_connected", ()):
            signal.disconnect(receiver)
        self._connected = []
        is_aborted = vars(abortable.AbortableTask).get("is_aborted")
        if isinstance(is_aborted, wrapt.ObjectProxy):
            abortable.AbortableTask.is_aborted = is_aborted.__wrapped__
        _runs.clear()

    # ------------------------------------------------------------------ worker processes

    def _reconnect_prerun_last(self) -> None:
        """Run after the contrib instrumentation's ``task_prerun``, whichever instrumented
        first: its consumer span must be current when the workflow span starts."""
        from celery import signals  # noqa: PLC0415

        signals.task_prerun.disconnect(self._prerun)
        signals.task_prerun.connect(self._prerun, weak=False)

    def _worker_init(self, sender: Any = None, **kwargs: Any) -> None:
        """In the main worker process, before the pool forks: the relay its children report
        through, so that the whole worker is one service at the hub (a retried task runs in
        any pool process, and the main process reports revokes and lost processes)."""
        self._reconnect_prerun_last()
        pool = getattr(sender, "pool_cls", None)
        pool_name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
        if pool_name and not any(kind in pool_name for kind in ("prefork", "processes")):
            return  # solo, threads, eventlet, gevent: tasks run in this process
        try:
            relay_of_this_process()
        except Exception:
            _log.warning("no relay: pool processes report on their own", exc_info=True)

    def _worker_process_init(self, **kwargs: Any) -> None:
        self._reconnect_prerun_last()
        report_from_worker_process(write_delay=POOL_WRITE_DELAY)

    def _worker_process_shutdown(self, **kwargs: Any) -> None:
        deliver_and_close()

    def _logger_set_up(self, logger: logging.Logger | None = None, **kwargs: Any) -> None:
        from ..instrumentor import active_instrumentor  # noqa: PLC0415 - import cycle

        instrumentor = active_instrumentor()
        handler = instrumentor.logging_handler() if instrumentor is not None else None
        if (
            isinstance(handler, logging.Handler)
            and logger is not None
            and handler not in logger.handlers
        ):
            logger.addHandler(handler)

    # ------------------------------------------------------------------ tasks

    def _before_publish(self, headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(headers, dict):
            try:
                inject_headers(headers)
            except Exception:
                _log.debug("cannot add workflow context to a task message", exc_info=True)

    def _prerun(self, task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
        name = getattr(task, "name", None)
        if not isinstance(task_id, str) or not isinstance(name, str) or not self._filter(name):
            return
        report_from_worker_process(
            write_delay=POOL_WRITE_DELAY
        )  # forked without worker_process_init
        request = getattr(task, "request", None)
        retries = getattr(request, "retries", 0)
        run = TaskRun(
            FRAMEWORK,
            name,
            task_id,
            headers=_headers(request),
            attempt=retries if isinstance(retries, int) else 0,
        )
        run.start()
        _runs.add(run)

    def _success(self, sender: Any = None, **kwargs: Any) -> None:
        run = _runs.pop(_task_id(sender))
        if run is not None:
            run.finish()

    def _failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        run = _runs.pop(task_id)
        if run is not None:
            run.finish(exception if exception is not None else RuntimeError("task failed"))
            return
        from billiard.exceptions import TimeLimitExceeded, WorkerLostError  # noqa: PLC0415

        name = getattr(sender, "name", None)
        if (
            isinstance(exception, (WorkerLostError, TimeLimitExceeded))
            and isinstance(task_id, str)
            and isinstance(name, str)
            and self._filter(name)
        ):
            # Reported by the main process: the pool process running the task is gone.
            TaskRun.failed_elsewhere(FRAMEWORK, name, task_id, exception, phase=Phase.EXECUTION)

    def _retry(self, request: Any = None, reason: Any = None, **kwargs: Any) -> None:
        run = _runs.pop(getattr(request, "id", None))
        if run is not None:
            # ``reason`` is Celery's ``Retry``; the attempt's own exception is in its ``exc``.
            error = getattr(reason, "exc", None) or reason
            run.retrying(error if isinstance(error, BaseException) else str(error))

    def _postrun(self, task_id: str | None = None, state: str | None = None, **kwargs: Any) -> None:
        run = _runs.pop(task_id)
        if run is None:
            return
        if state == "IGNORED":  # Ignore (e.g. replaced by another task): its work is done
            run.finish()
        elif state == "REJECTED":
            run.finish(RuntimeError("the task rejected its message"))
        else:
            # Interrupted by a BaseException: the process is being terminated (a revoke with
            # terminate, a hard time limit); the main process reports how the task ended.
            run.abandon()

    def _revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        signum: Any = None,
        expired: bool = False,
        **kwargs: Any,
    ) -> None:
        task_id = getattr(request, "id", None)
        name = getattr(sender, "name", None) or getattr(request, "task", None)
        if not isinstance(task_id, str) or not isinstance(name, str) or not self._filter(name):
            return
        if expired:
            reason = "revoked: expired"
        elif terminated:
            reason = f"revoked: terminated by signal {signum}"
        else:
            reason = "revoked"
        run = _runs.pop(task_id)
        if run is not None:  # revoked in the process running it (a thread pool)
            run.cancelled(reason)
            return
        phase = Phase.EXECUTION if terminated else None  # killed while running, or never ran
        TaskRun.revoked(FRAMEWORK, name, task_id, reason, phase=phase)


def _is_aborted(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``AbortableTask.is_aborted``, which also reports a cancel requested from the hub."""
    aborted = wrapped(*args, **kwargs)
    task_id = kwargs.get("task_id") or _task_id(instance)
    run = _runs.get(task_id)
    if run is None:
        return aborted
    if aborted:
        run.note_abort("aborted (AbortableTask)")
        return aborted
    if run.cancel_requested:
        run.note_abort(run.hub_cancel_reason() or "cancel requested")
        return True
    return aborted
