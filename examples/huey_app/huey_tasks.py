# mypy: disallow-untyped-decorators=False
"""Huey tasks that become workflows with no when-coordinator code at all.

Run a Redis and the hub, then Huey's consumer, as you would without coordination::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination \\
        opentelemetry-instrument huey_consumer huey_tasks.huey --workers 2

and enqueue from anywhere (``python -c "import huey_tasks; huey_tasks.add(2, 3)"``). The Redis
is ``HUEY_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Only ``long_job`` imports
``when_coordinator``, to honour pause and cancel from the hub at its safe points.
"""

from __future__ import annotations

import logging
import os
import time

from huey import RedisHuey

from when_coordinator import current_workflow

huey = RedisHuey("when-example", url=os.environ.get("HUEY_REDIS_URL", "redis://127.0.0.1:6379/0"))

log = logging.getLogger(__name__)


@huey.task()
def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


@huey.task()
def fail(reason: str) -> None:
    raise ValueError(reason)


@huey.task(retries=3, context=True)
def flaky(failures: int, task: object = None) -> str:
    """Fails its first ``failures`` attempts, then succeeds (Huey retries it)."""
    attempt = huey.storage.conn.incr(f"flaky-attempts:{getattr(task, 'id', '')}")
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"succeeded at attempt {attempt}"


@huey.task(retries=1, retry_delay=1)
def retried_later() -> None:
    """Fails, to be retried a second later (time enough to revoke the retry)."""
    raise ConnectionError("not yet")


@huey.task()
def long_job(steps: int, delay: float = 0.1) -> int:
    """A long task that the hub can pause and cancel between steps."""
    run = current_workflow()
    for step in range(steps):
        if run is not None:
            run.progress(100 * step / steps, "working")
            run.safe_point()
        time.sleep(delay)
    return steps


@huey.task()
def fan_out(count: int) -> list[str]:
    """Enqueues ``count`` tasks from inside its workflow: they are its children at the hub."""
    return [add(i, i).id for i in range(count)]
