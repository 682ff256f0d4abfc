"""``WhenRQInstrumentor``: every RQ job execution is a workflow.

Registered as the ``when_rq`` entry point: ``opentelemetry-instrument rq worker`` with
``WHEN_URL`` set is all it takes. RQ's default ``Worker`` forks a work horse per job; the
horse reports through a ``relay.Relay`` in the worker process, so the hub sees one service
instance per worker, not one per job. With wrapt:

- ``Job.create``: a job enqueued inside a workflow carries its W3C context in ``job.meta``,
  so its workflow becomes that workflow's child at the hub;
- ``Worker.execute_job`` (worker process): the relay is started before the fork; after the
  horse exits, a workflow it left running ends ``cancelled`` when the job was stopped (RQ's
  ``stop-job`` command), ``failed`` when the horse died;
- ``Worker.perform_job`` (horse): reports through the relay, and delivers what it holds
  before the horse exits (RQ ends it with ``os._exit``);
- ``Job.perform``: the job's workflow (``tasks.TaskRun``) around the job function. An
  exception fails it, or, when the job has retries left, pauses it for the next attempt with
  a recoverable ``error``; a job returning ``rq.Retry`` does the same.

A hub cancel with ``force`` stops the job the RQ way (``stop-job``: the horse is killed);
without it the job ends at its next ``safe_point()``, and is not retried.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ...client import CommandEvent
from ...protocol import MessageType, Phase
from ..propagation import carrier
from ..workflow import WorkflowCancelled
from .relay import Relay, deliver_and_close, relay_of_this_process, report_to_parent
from .tasks import TaskFilter, TaskRun, TaskRuns

__all__ = ["WhenRQInstrumentor"]

_log = logging.getLogger(__name__)

FRAMEWORK = "rq"
META_CONTEXT = "when_context"
"""``job.meta`` key of the W3C headers of the workflow that enqueued the job."""
META_ATTEMPT = "when_attempt"
"""``job.meta`` key of the number of attempts already made (set when one fails for a retry)."""

_runs = TaskRuns()
_current: dict[str, tuple[Any, Any]] = {}  # workflow id -> (worker, job), in the worker
_stopping: set[int] = set()  # ids of the relays whose commands may stop jobs
_forced: dict[str, str] = {}  # workflow id -> reason of the hub cancel that stopped its job


class WhenRQInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("rq >= 1.16",)

    def _instrument(self, **kwargs: Any) -> None:
        from rq import job as rq_job  # noqa: PLC0415 - only once the instrumentor runs
        from rq import worker as rq_worker  # noqa: PLC0415

        global _filter  # noqa: PLW0603 - read by the module-level wrappers
        _filter = TaskFilter.from_env()
        self._wrapped = [
            (rq_job.Job, "create", _create),
            (rq_job.Job, "perform", _perform),
            (rq_worker.Worker, "execute_job", _execute_job),
            (rq_worker.BaseWorker, "perform_job", _perform_job),
        ]
        for owner, name, wrapper in self._wrapped:
            wrapt.wrap_function_wrapper(owner, name, wrapper)

    def _uninstrument(self, **kwargs: Any) -> None:
        for owner, name, _ in getattr(self, "_wrapped", ()):
            held = vars(owner).get(name)
            if isinstance(held, wrapt.ObjectProxy):
                setattr(owner, name, held.__wrapped__)
        self._wrapped = []
        _runs.clear()


_filter = TaskFilter()


def _name(job: Any) -> str:
    name = getattr(job, "func_name", None)
    return name if isinstance(name, str) and name else "rq.job"


# ---------------------------------------------------------------------- enqueueing


def _create(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Job.create``: carry the enqueuing workflow's context in the job's meta."""
    try:
        headers = carrier()
        if "baggage" in headers:
            meta = kwargs.get("meta")
            kwargs["meta"] = {**(meta if isinstance(meta, dict) else {}), META_CONTEXT: headers}
    except Exception:
        _log.debug("cannot add workflow context to a job", exc_info=True)
    return wrapped(*args, **kwargs)


# ---------------------------------------------------------------------- worker process


def _ensure_relay() -> Relay | None:
    relay = relay_of_this_process()
    if relay is not None and id(relay) not in _stopping:
        _stopping.add(id(relay))
        relay.coordinator.on_command(_stop_on_forced_cancel)
    return relay


def _stop_on_forced_cancel(event: CommandEvent) -> None:
    """A hub cancel with ``force`` for a job in a horse: RQ's own stop-job."""
    if event.type is not MessageType.CANCEL or not event.force:
        return
    current = _current.get(event.workflow_id)
    if current is None:
        return
    worker, job = current
    _forced[event.workflow_id] = event.reason or "cancel requested"
    try:
        from rq.command import send_stop_job_command  # noqa: PLC0415

        send_stop_job_command(worker.connection, job.id, serializer=worker.serializer)
    except Exception:
        _log.warning("cannot stop job %s", job.id, exc_info=True)


def _execute_job(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    job = args[0] if args else kwargs.get("job")
    name = _name(job)
    if job is None or not _filter(name):
        return wrapped(*args, **kwargs)
    workflow_id = TaskRun(FRAMEWORK, name, job.id).workflow_id
    try:
        relay = _ensure_relay()
    except Exception:
        _log.warning("no relay for work horses: their jobs are not reported", exc_info=True)
        relay = None
    _current[workflow_id] = (instance, job)
    try:
        return wrapped(*args, **kwargs)
    finally:
        _current.pop(workflow_id, None)
        if relay is not None:
            _settle_after_horse(relay, job, name, workflow_id)


def _settle_after_horse(relay: Relay, job: Any, name: str, workflow_id: str) -> None:
    """End a workflow the horse could not: it was killed (stop-job) or died."""
    last = relay.phase_of(workflow_id)
    relay.forget(workflow_id)
    forced = _forced.pop(workflow_id, None)
    if not last:
        return  # the horse never started it (filtered, or it died at once)
    phase = Phase(last)
    if phase.is_terminal or phase is Phase.PAUSED:  # ended, or waiting for its retry
        return
    try:
        status = job.get_status(refresh=True)
    except Exception:
        status = None
    if str(getattr(status, "value", status)) == "stopped":
        reason = forced or "stopped (rq stop-job)"  # the hub's reason when it asked for it
        TaskRun.revoked(FRAMEWORK, name, job.id, reason, phase=phase)
    else:
        reason = "the work horse ended without finishing the job"
        TaskRun.failed_elsewhere(FRAMEWORK, name, job.id, reason, phase=phase)


# ---------------------------------------------------------------------- work horse


def _perform_job(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """In a forked horse: report through the worker's relay, and deliver before exiting."""
    try:
        forked = report_to_parent() is not None
    except Exception:
        _log.warning("cannot report from this work horse", exc_info=True)
        forked = False
    try:
        return wrapped(*args, **kwargs)
    finally:
        if forked:
            deliver_and_close()


def _perform(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Job.perform``: the job function as a workflow."""
    job = instance
    name = _name(job)
    if not _filter(name):
        return wrapped(*args, **kwargs)
    meta = job.meta if isinstance(getattr(job, "meta", None), dict) else {}
    headers = meta.get(META_CONTEXT)
    attempt = meta.get(META_ATTEMPT, 0)
    run = TaskRun(
        FRAMEWORK,
        name,
        job.id,
        headers=headers if isinstance(headers, dict) else None,
        attempt=attempt if isinstance(attempt, int) else 0,
        attributes={"rq.queue": str(getattr(job, "origin", ""))},
    )
    run.start()
    _runs.add(run)
    try:
        result = wrapped(*args, **kwargs)
    except WorkflowCancelled as exc:
        job.retries_left = None  # cancelled from the hub: not retried
        _runs.pop(job.id)
        run.finish(exc)
        raise
    except BaseException as exc:
        _runs.pop(job.id)
        if getattr(job, "should_retry", False):
            _retrying(run, job, exc)
        else:
            run.finish(exc)
        raise
    _runs.pop(job.id)
    from rq import Retry  # noqa: PLC0415

    if isinstance(result, Retry):
        _retrying(run, job, "the job asked to be retried")
    else:
        run.finish()
    return result


def _retrying(run: TaskRun, job: Any, error: BaseException | str) -> None:
    try:
        job.meta[META_ATTEMPT] = run.attempt + 1
        job.save_meta()
    except Exception:
        _log.debug("cannot note the attempt on job %s", job.id, exc_info=True)
    run.retrying(error)
