"""``WhenClickInstrumentor``: a ``click`` command run is a workflow (opt-in).

Registered as the ``when_click`` entry point, and off unless ``WHEN_CLICK_COMMANDS`` is true
(``1``, ``true``, ``yes``, ``on``): many tools are click commands, and most are not workflows.
When on, ``opentelemetry-instrument mytool sync --all`` makes each run of a leaf command
a workflow (groups are not workflows themselves). The hook is ``Context.invoke`` (wrapped
with wrapt) calling the command's own callback: it runs inside ``Command.invoke``, so with
``opentelemetry-instrumentation-click`` active (it wraps ``Command.invoke``) the workflow
span is an INTERNAL child of its span, whichever instrumentor wrapped first:

- named after the command path (``mytool sync``), ``action_id`` a fresh id, workflow id
  ``click-<that id>``;
- returning, or exiting with status 0: completed; raising: failed with the error; ``Abort``
  (Ctrl-C at a prompt): cancelled;
- ``current_workflow().safe_point()`` honours pause and cancel from the hub.

Server commands, whose run is a process lifetime rather than a unit of work, are never
workflows: ``flask run``, ``uvicorn``, ``celery worker`` / ``beat``, ``rq worker`` /
``worker-pool`` / ``cron``, and any command path matching ``WHEN_TASKS_EXCLUDE`` (or not
matching ``WHEN_TASKS_INCLUDE``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Collection, Mapping
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .tasks import TaskFilter, TaskRun

__all__ = ["ENABLE_ENV", "SERVER_COMMANDS", "WhenClickInstrumentor", "enabled", "is_server"]

_log = logging.getLogger(__name__)

FRAMEWORK = "click"
ENABLE_ENV = "WHEN_CLICK_COMMANDS"
SERVER_COMMANDS = frozenset(
    {
        "flask.cli:run_command",
        "uvicorn.main:main",
        "celery.bin.worker:worker",
        "celery.bin.beat:beat",
        "rq.cli.workers:worker",
        "rq.cli.workers:worker_pool",
        "rq.cli.cli_cron:cron",
        "rq.cli.cli:worker",  # rq before 2.0
        "rq.cli.cli:worker_pool",
    }
)
"""``<module>:<function>`` of the callbacks of server-style commands, never workflows."""


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(ENABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def is_server(command: Any) -> bool:
    callback = getattr(command, "callback", None)
    callback = getattr(callback, "__wrapped__", callback)  # click.pass_context & co.
    key = f"{getattr(callback, '__module__', '')}:{getattr(callback, '__name__', '')}"
    return key in SERVER_COMMANDS


class WhenClickInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("click >= 8.0",)

    def _instrument(self, **kwargs: Any) -> None:
        self._wrapped = False
        if not enabled():
            return
        from click import core  # noqa: PLC0415 - only once the instrumentor runs

        self._filter = TaskFilter.from_env()
        wrapt.wrap_function_wrapper(core.Context, "invoke", self._invoke)
        self._wrapped = True

    def _uninstrument(self, **kwargs: Any) -> None:
        from click import core  # noqa: PLC0415

        held = vars(core.Context).get("invoke")
        if isinstance(held, wrapt.ObjectProxy):
            core.Context.invoke = held.__wrapped__  # type: ignore[method-assign]
        self._wrapped = False

    def _invoke(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """``ctx.invoke(callback, ...)``: a workflow when ``callback`` is the context's own
        command's callback, i.e. ``Command.invoke`` running the command (not a command
        calling another with ``ctx.invoke``, which runs inside its workflow)."""
        from click import Abort, Group, exceptions  # noqa: PLC0415

        command = getattr(instance, "command", None)
        callback = args[0] if args else kwargs.get("callback")
        if (
            callback is None
            or callback is not getattr(command, "callback", None)
            or isinstance(command, Group)
            or is_server(command)
        ):
            return wrapped(*args, **kwargs)
        name = getattr(instance, "command_path", "") or getattr(command, "name", "") or "click"
        if not self._filter(name):
            return wrapped(*args, **kwargs)
        run = TaskRun(FRAMEWORK, name, uuid.uuid4().hex)
        run.start()
        try:
            result = wrapped(*args, **kwargs)
        except (exceptions.Exit, SystemExit) as exc:
            code = getattr(exc, "exit_code", getattr(exc, "code", 0))
            run.finish(None if code in (0, None) else exc)
            raise
        except Abort:
            run.cancelled("aborted (click.Abort)")
            raise
        except BaseException as exc:
            run.finish(exc)
            raise
        run.finish()
        return result
