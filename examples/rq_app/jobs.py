"""RQ jobs that become workflows with no when-coordinator code at all.

Run a Redis and the hub, then RQ's default (forking) worker, as you would without
coordination::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination \\
        opentelemetry-instrument rq worker --url redis://127.0.0.1:6379/0

and enqueue from anywhere: ``Queue(connection=Redis()).enqueue("jobs.add", 2, 3)``. Only
``long_job`` imports ``when_coordinator``, to honour pause and cancel from the hub.
"""

from __future__ import annotations

import logging
import time

from rq import Queue, get_current_job

from when_coordinator import current_workflow

log = logging.getLogger(__name__)


def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


def fail(reason: str) -> None:
    raise ValueError(reason)


def flaky(failures: int) -> str:
    """Fails its first ``failures`` attempts (enqueue it with ``retry=Retry(max=...)``)."""
    job = get_current_job()
    assert job is not None
    attempt = int(job.connection.incr(f"flaky-attempts:{job.id}"))
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"succeeded at attempt {attempt}"


def long_job(steps: int, delay: float = 0.1) -> int:
    """A long job that the hub can pause and cancel between steps."""
    run = current_workflow()
    for step in range(steps):
        if run is not None:
            run.progress(100 * step / steps, "working")
            run.safe_point()
        time.sleep(delay)
    return steps


def fan_out(count: int) -> list[str]:
    """Enqueues ``count`` jobs from inside its workflow: they are its children at the hub."""
    job = get_current_job()
    assert job is not None
    queue = Queue(job.origin, connection=job.connection)
    return [queue.enqueue(add, i, i).id for i in range(count)]


def sleepy(seconds: float) -> None:
    """A job without safe points: only RQ's stop-job (a forced cancel) ends it early."""
    time.sleep(seconds)
