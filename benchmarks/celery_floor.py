"""The ``celery`` command with a plain span per task: the floor of figure [10].

``bench_celery`` runs a worker through this (``python <this file> -A tasks worker ...`` under
``opentelemetry-instrument``, with ``when_celery`` disabled) beside the baseline and our
instrumentor. Each task gets what any instrumentation that makes a span per task must pay,
and nothing of the coordination: an INTERNAL child of the contrib consumer span, current while
the task runs, with as many attributes as a task's workflow span and five events of four
attributes (its phase changes), ended with one more attribute. No phases, no messages, no
hub. The attribute keys are not ``when.*``: our span processor would adopt a span carrying
``when.workflow.id`` as a workflow. Events go through the SDK's public ``add_event``, which
costs a little more than the path our workflow spans take, so the floor is not flattered.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery import signals
from celery.__main__ import main
from opentelemetry import context, trace

_tracer = trace.get_tracer("bench.floor")
_open: dict[str, tuple[trace.Span, Token[context.Context]]] = {}
"""task id -> (its span, the token of its attached context)."""
_STEPS = (("pending", "pre-flight"), ("pre-flight", "planning"), ("planning", "execution"))


def _event(span: trace.Span, old: str, new: str) -> None:
    span.add_event(
        "bench.phase_changed",
        {"bench.from": old, "bench.to": new, "bench.reason": new, "bench.checkpoint": ""},
    )


def _prerun(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    name = getattr(task, "name", "task")
    span = _tracer.start_span(
        name,
        attributes={
            "bench.id": f"celery-{task_id}",
            "bench.name": name,
            "bench.root_id": f"celery-{task_id}",
            "bench.action_type": name,
            "bench.action_id": task_id,
            "bench.framework": "celery",
        },
    )
    for old, new in _STEPS:
        _event(span, old, new)
    _open[task_id] = (span, context.attach(trace.set_span_in_context(span)))


def _end(task_id: str) -> None:
    """At ``task_success`` (before the contrib instrumentation's ``task_postrun`` detaches its
    own context, as our instrumentor does), or at ``task_postrun`` for any other ending."""
    opened = _open.pop(task_id, None)
    if opened is None:
        return
    span, token = opened
    context.detach(token)
    _event(span, "execution", "completing")
    _event(span, "completing", "completed")
    span.set_attributes({"bench.phase": "completed"})
    span.end()


def _connect_last(**kwargs: Any) -> None:
    """After the contrib instrumentation's ``task_prerun``: its consumer span is the parent."""
    signals.task_prerun.disconnect(_prerun)
    signals.task_prerun.connect(_prerun, weak=False)


signals.task_prerun.connect(_prerun, weak=False)
signals.task_success.connect(
    lambda sender=None, **kwargs: _end(getattr(getattr(sender, "request", None), "id", "")),
    weak=False,
)
signals.task_postrun.connect(lambda task_id="", **kwargs: _end(task_id), weak=False)
signals.worker_init.connect(_connect_last, weak=False)
signals.worker_process_init.connect(_connect_last, weak=False)

if __name__ == "__main__":
    main()
