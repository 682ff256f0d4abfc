# mypy: disallow-untyped-decorators=False
"""A Celery app whose tasks become workflows with no when-coordinator code at all.

Run a Redis and the hub, then the worker, exactly as you would without coordination::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination \\
        opentelemetry-instrument celery -A tasks worker --concurrency 2

and send tasks from anywhere (``python -c "import tasks; tasks.add.delay(2, 3)"``). The broker
is ``CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``). Only ``long_job`` imports
``when_coordinator``, to honour pause and cancel from the hub at its safe points.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.contrib.abortable import AbortableTask

from when_coordinator import current_workflow

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("tasks", broker=BROKER, backend=BROKER)
app.conf.update(task_track_started=True, broker_connection_retry_on_startup=True)

log = logging.getLogger(__name__)


@app.task
def add(x: int, y: int) -> int:
    log.info("adding %s and %s", x, y)
    return x + y


@app.task
def fail(reason: str) -> None:
    log.warning("about to fail: %s", reason)
    raise ValueError(reason)


@app.task(bind=True, max_retries=3)
def flaky(self: Any, failures: int) -> str:
    """Fails its first ``failures`` attempts, then succeeds."""
    if self.request.retries < failures:
        raise self.retry(
            exc=ConnectionError(f"attempt {self.request.retries + 1} failed"), countdown=0.1
        )
    return f"succeeded after {failures} retries"


@app.task
def long_job(steps: int, delay: float = 0.1) -> int:
    """A long task that the hub can pause and cancel between steps."""
    run = current_workflow()
    for step in range(steps):
        if run is not None:
            run.progress(100 * step / steps, "working")
            run.safe_point()
        time.sleep(delay)
    return steps


@app.task(bind=True, base=AbortableTask)
def abortable_job(self: Any, steps: int, delay: float = 0.1) -> int:
    """Celery's native cooperative abort: also true when the hub cancels the workflow."""
    for step in range(steps):
        if self.is_aborted():
            log.info("aborted at step %s", step)
            return step
        time.sleep(delay)
    return steps


@app.task
def fan_out(count: int) -> list[str]:
    """Sends ``count`` tasks from inside its workflow: they are its children at the hub."""
    return [add.delay(i, i).id for i in range(count)]


@app.task
def crash() -> None:
    """The pool process dies under the task: the main process reports the task failed."""
    os._exit(1)
