"""``WhenDramatiqInstrumentor``: every Dramatiq message processed is a workflow.

Registered as the ``when_dramatiq`` entry point: ``opentelemetry-instrument dramatiq app``
with ``WHEN_URL`` set is all it takes, with Dramatiq's default worker processes. Every broker
created (``Broker.__init__``, wrapped with wrapt) gets a ``WhenMiddleware`` placed first, so
its ``after_*`` hooks run last, once the ``Retries`` middleware has decided:

- ``before_enqueue``: a message sent from inside a workflow carries the workflow's W3C
  context in its options (``when_context``), so its workflow becomes that one's child;
- ``dramatiq.cli.main`` (wrapped): the ``dramatiq`` command's main process starts a
  ``relay.Relay`` before it forks its worker processes, and ``after_process_boot`` points each
  of them at it: the whole command is one service instance at the hub, so a retry that runs
  in another worker process stays with the workflow's owner (with ``--use-spawn`` each
  process reports on a connection of its own, as another instance of the same service);
- ``before_process_message``: the message's workflow starts (``tasks.TaskRun``), named after
  the actor, ``dramatiq-<message id>``; ``options["retries"]`` tells a retry from a first run;
- ``after_process_message``: completed; failed with the error when the message failed
  (retries exhausted, or no ``Retries`` middleware). When ``Retries`` enqueues it again,
  the workflow is paused for the next attempt, with a recoverable ``error``, from
  ``before_enqueue``: before the message is back on the queue, so the next attempt never
  resumes a workflow the hub still sees running (a second, ``_ErrorProbe``, placed after
  ``Retries``, hands it the attempt's exception);
- ``after_skip_message``: a message skipped before its actor ran (``dramatiq-abort``'s
  cancel, an age limit) ends ``cancelled``.

``dramatiq-abort`` is bridged when its ``Abortable`` middleware is on the broker: a hub cancel
is also an abort request (``abort_requested()`` reports it; Abortable interrupts the actor
after ``WHEN_DRAMATIQ_ABORT_GRACE_MS``, default 5000, or at once for a forced cancel): an
actor that returns once it saw the request (the workflow was cancelling), or is interrupted,
ends ``cancelled``; one interrupted by a native ``abort()`` too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ...client import CommandEvent
from ...protocol import MessageType
from ..propagation import carrier
from ..tracking import get_coordinator
from ..workflow import WorkflowCancelled
from .relay import relay_of_this_process, report_from_worker_process
from .tasks import TaskFilter, TaskRun, TaskRuns

__all__ = ["GRACE_ENV", "WhenDramatiqInstrumentor"]

_log = logging.getLogger(__name__)

FRAMEWORK = "dramatiq"
OPTION_CONTEXT = "when_context"
"""Message option holding the W3C headers of the workflow that sent the message."""
GRACE_ENV = "WHEN_DRAMATIQ_ABORT_GRACE_MS"

_runs = TaskRuns()
_errors: dict[str, BaseException] = {}  # message id -> the failed attempt's exception
_brokers: dict[int, Any] = {}  # workflow id -> broker, for the dramatiq-abort bridge
_subscribed_pid = 0
_enabled = True  # False after uninstrument(): brokers keep the middleware, which then rests
_lock = threading.Lock()


class WhenDramatiqInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("dramatiq >= 1.15",)

    def _instrument(self, **kwargs: Any) -> None:
        from dramatiq import broker  # noqa: PLC0415 - only once the instrumentor runs

        global _enabled  # noqa: PLW0603 - read by the middleware
        _enabled = True
        self._filter = TaskFilter.from_env()
        wrapt.wrap_function_wrapper(broker.Broker, "__init__", self._broker_init)
        wrapt.wrap_function_wrapper("dramatiq.cli", "main", _cli_main)

    def _uninstrument(self, **kwargs: Any) -> None:
        from dramatiq import broker  # noqa: PLC0415

        global _enabled  # noqa: PLW0603
        _enabled = False
        init = vars(broker.Broker).get("__init__")
        if isinstance(init, wrapt.ObjectProxy):
            broker.Broker.__init__ = init.__wrapped__  # type: ignore[method-assign]
        from dramatiq import cli  # noqa: PLC0415

        main = vars(cli).get("main")
        if isinstance(main, wrapt.ObjectProxy):
            cli.main = main.__wrapped__
        _runs.clear()
        _errors.clear()

    def _broker_init(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        result = wrapped(*args, **kwargs)
        try:
            add_middleware(instance, self._filter)
        except Exception:
            _log.warning("cannot add the when middleware to %r", instance, exc_info=True)
        return result


def _cli_main(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """The ``dramatiq`` command's main process: start the relay before forking workers."""
    try:
        relay_of_this_process()
    except Exception:
        _log.warning("no relay: worker processes report on their own", exc_info=True)
    return wrapped(*args, **kwargs)


def add_middleware(broker: Any, task_filter: TaskFilter | None = None) -> None:
    """Put a ``WhenMiddleware`` first on ``broker`` (a broker made before instrumenting)."""
    if any(isinstance(m, WhenMiddleware) for m in broker.middleware):
        return
    middleware = WhenMiddleware(task_filter or TaskFilter.from_env())
    first = broker.middleware[0] if broker.middleware else None
    broker.add_middleware(middleware, before=type(first) if first is not None else None)
    broker.add_middleware(_ErrorProbe())  # after Retries: its after_* hooks run before


def _abortable(broker: Any) -> Any:
    try:
        from dramatiq_abort import Abortable  # noqa: PLC0415 - optional
    except ImportError:
        return None
    return next((m for m in broker.middleware if isinstance(m, Abortable)), None)


def _is_abort(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    try:
        from dramatiq_abort import Abort  # noqa: PLC0415 - optional
    except ImportError:
        return False
    return isinstance(exc, Abort)


def _subscribe_commands() -> None:
    """Once per process: a hub cancel of a running message is also a dramatiq-abort."""
    global _subscribed_pid  # noqa: PLW0603 - one subscription per process
    with _lock:
        if _subscribed_pid == os.getpid():
            return
        _subscribed_pid = os.getpid()
    get_coordinator().on_command(_abort_on_cancel)


def _abort_on_cancel(event: CommandEvent) -> None:
    if event.type is not MessageType.CANCEL or not event.accepted:
        return
    run = _runs.get(event.workflow_id.removeprefix(FRAMEWORK + "-"))
    broker = _brokers.get(id(run)) if run is not None else None
    abortable = _abortable(broker) if broker is not None else None
    if run is None or abortable is None:
        return
    try:
        grace = 0 if event.force else int(os.environ.get(GRACE_ENV, "5000"))
    except ValueError:
        grace = 5000
    message_id = run.task_id

    def abort() -> None:  # Redis I/O: not on the client's thread
        try:
            abortable.abort(message_id, abort_timeout=grace)
        except Exception:
            _log.warning("cannot abort message %s", message_id, exc_info=True)

    threading.Thread(target=abort, name="when-dramatiq-abort", daemon=True).start()


class _WhenHooks:
    """Duck-typed rather than subclassing ``dramatiq.Middleware`` so that this module imports
    without Dramatiq: the broker calls every hook on every middleware, and the ones not
    defined here do nothing."""

    actor_options: set[str] = set()  # noqa: RUF012 - read by the broker
    forks: list[Any] = []  # noqa: RUF012

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("before_", "after_")):
            return _nothing
        raise AttributeError(name)


class WhenMiddleware(_WhenHooks):
    """The Dramatiq middleware; see the module docstring."""

    def __init__(self, task_filter: TaskFilter) -> None:
        self._filter = task_filter

    def before_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        error = _errors.pop(message.message_id, None)
        if error is not None:  # Retries sends the failed message again, from its worker thread
            run = _runs.pop(message.message_id)
            if run is not None:
                _brokers.pop(id(run), None)
                run.retrying(error)
        if not _enabled:
            return
        try:
            options = message.options
            if OPTION_CONTEXT not in options:  # a retry keeps the sender's context
                headers = carrier()
                if "baggage" in headers:
                    options[OPTION_CONTEXT] = headers
        except Exception:
            _log.debug("cannot add workflow context to a message", exc_info=True)

    def after_process_boot(self, broker: Any) -> None:
        report_from_worker_process()

    def before_process_message(self, broker: Any, message: Any) -> None:
        name = getattr(message, "actor_name", None)
        if not _enabled or not isinstance(name, str) or not self._filter(name):
            return
        report_from_worker_process()  # a fork made without after_process_boot
        options = message.options
        headers = options.get(OPTION_CONTEXT)
        retries = options.get("retries", 0)
        run = TaskRun(
            FRAMEWORK,
            name,
            message.message_id,
            headers=headers if isinstance(headers, dict) else None,
            attempt=retries if isinstance(retries, int) else 0,
            attributes={"dramatiq.queue": str(message.queue_name)},
        )
        _not_retried(broker, name)
        run.start()
        _runs.add(run)
        if _abortable(broker) is not None:
            _brokers[id(run)] = broker
            _subscribe_commands()

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _errors.pop(message.message_id, None)
        run = _runs.pop(message.message_id)
        if run is None:  # not a workflow, or already paused for its retry
            return
        _brokers.pop(id(run), None)
        if _is_abort(exception) or (exception is not None and run.cancel_requested):
            run.cancelled(run.hub_cancel_reason() or "aborted (dramatiq-abort)")
        elif exception is None:
            run.finish()
        elif isinstance(exception, WorkflowCancelled) or message.failed:
            run.finish(exception)
        elif any(type(m).__name__ == "Retries" for m in broker.middleware):
            run.retrying(exception)  # Retries enqueued it again
        else:
            run.finish(exception)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        run = _runs.pop(message.message_id)
        if run is not None:
            _brokers.pop(id(run), None)
            run.cancelled("skipped before it ran (aborted, or too old)")


class _ErrorProbe(_WhenHooks):
    """Placed after ``Retries``, so its ``after_process_message`` runs before Retries': it
    hands the attempt's exception to ``WhenMiddleware.before_enqueue``."""

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None and _runs.get(message.message_id) is not None:
            _errors[message.message_id] = exception


def _not_retried(broker: Any, actor_name: str) -> None:
    """A hub cancel (``WorkflowCancelled``) or an abort (``Abort``) ends the message: add them
    to the actor's ``throws``, which the ``Retries`` middleware does not retry."""
    try:
        options = broker.get_actor(actor_name).options
    except Exception:
        return
    throws = options.get("throws") or ()
    throws = throws if isinstance(throws, tuple) else (throws,)
    stop: tuple[type[BaseException], ...] = (WorkflowCancelled,)
    try:
        from dramatiq_abort import Abort  # noqa: PLC0415 - optional

        stop = (*stop, Abort)
    except ImportError:
        pass
    missing = tuple(kind for kind in stop if kind not in throws)
    if missing:
        options["throws"] = (*throws, *missing)


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None
