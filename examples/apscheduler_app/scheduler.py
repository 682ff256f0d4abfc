"""An APScheduler (3.x) process whose job runs become workflows with no when-coordinator code.

Run the hub, then the scheduler, as you would without coordination::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination opentelemetry-instrument python scheduler.py

Every run of every job is a workflow: ``tick`` every ``TICK_SECONDS`` (default 1), and, once
at start, ``add`` five times, ``fail``, ``long_job`` (pause and cancel it from the hub) and
``fan_out``, which schedules two jobs from inside its workflow: their runs are its children;
``add`` once more in a process pool, whose worker reports as another instance of the service.
Only ``long_job`` imports ``when_coordinator``, to honour pause and cancel at its safe points.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from apscheduler.executors.pool import ProcessPoolExecutor, ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from when_coordinator import current_workflow

log = logging.getLogger("scheduler")
scheduler = BlockingScheduler(
    timezone="UTC",
    job_defaults={"misfire_grace_time": 60},
    executors={"default": ThreadPoolExecutor(4), "processpool": ProcessPoolExecutor(1)},
)


def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


def tick() -> None:
    log.warning("tick")


def fail(reason: str) -> None:
    raise ValueError(reason)


def long_job(steps: int, delay: float = 0.1) -> int:
    """A long job that the hub can pause and cancel between steps."""
    run = current_workflow()
    for step in range(steps):
        if run is not None:
            run.progress(100 * step / steps, "working")
            run.safe_point()
        time.sleep(delay)
    return steps


def fan_out(count: int) -> None:
    """Schedules ``count`` jobs from inside its workflow: their runs are its children."""
    for i in range(count):
        scheduler.add_job(add, args=(10 + i, 10 + i), id=f"child-{i}", name="add")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    scheduler.add_job(tick, "interval", seconds=float(os.environ.get("TICK_SECONDS", "1")))
    for i in range(5):
        scheduler.add_job(add, args=(i, i), id=f"add-{i}", name="add")
    scheduler.add_job(fail, args=("boom",), id="fail")
    scheduler.add_job(long_job, args=(6000, 0.05), id="long_job")
    scheduler.add_job(fan_out, args=(2,), id="fan_out")
    scheduler.add_job(add, args=(7, 7), id="in-a-process", name="add", executor="processpool")
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # Ctrl-C: stop
        scheduler.start()


if __name__ == "__main__":
    main()
