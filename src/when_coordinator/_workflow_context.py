"""The running workflow, kept in the OpenTelemetry Context under a key of this package.

Whatever carries the OpenTelemetry context carries the workflow with it: asyncio tasks and
``contextvars`` copies, the threading instrumentation (``Thread``, ``Timer``, thread pools),
``attach``/``detach`` done by other instrumentations. The client layer reads it to file log
records under their workflow; the OpenTelemetry layer sets it (``otel/workflow.py``).
"""

from __future__ import annotations

from typing import Protocol, cast

from opentelemetry import context

__all__ = ["RunningWorkflow", "current", "with_workflow"]

_KEY = context.create_key("when_coordinator.workflow")


class RunningWorkflow(Protocol):
    """What the layers below the workflow API read of the running workflow."""

    @property
    def id(self) -> str: ...

    @property
    def action_id(self) -> str: ...


def current() -> RunningWorkflow | None:
    """The workflow whose code runs in the current context, if any."""
    return cast("RunningWorkflow | None", context.get_value(_KEY))  # only set here


def with_workflow(
    workflow: RunningWorkflow, parent: context.Context | None = None
) -> context.Context:
    """``parent`` (default: the current context) with ``workflow`` as the running one."""
    return context.set_value(_KEY, workflow, parent)
