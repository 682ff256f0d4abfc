"""Dramatiq actors that become workflows with no when-coordinator code at all.

Run a Redis and the hub, then Dramatiq's worker processes, as you would without
coordination::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination opentelemetry-instrument dramatiq actors

and send messages from anywhere (``python -c "import actors; actors.add.send(2, 3)"``). The
broker is ``DRAMATIQ_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``). Only ``long_job``
imports ``when_coordinator``, to honour pause and cancel from the hub at its safe points;
``abortable_job`` uses ``dramatiq-abort``, which a hub cancel also triggers.
"""

from __future__ import annotations

import logging
import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from dramatiq_abort import Abortable, abort_requested
from dramatiq_abort.backends import RedisBackend

from when_coordinator import current_workflow

BROKER = os.environ.get("DRAMATIQ_BROKER_URL", "redis://127.0.0.1:6379/0")

broker = RedisBroker(url=BROKER)  # type: ignore[no-untyped-call]
broker.add_middleware(CurrentMessage())
broker.add_middleware(Abortable(backend=RedisBackend(client=broker.client)))
dramatiq.set_broker(broker)

log = logging.getLogger(__name__)


@dramatiq.actor
def add(x: int, y: int) -> int:
    log.warning("adding %s and %s", x, y)
    return x + y


@dramatiq.actor(max_retries=0)
def fail(reason: str) -> None:
    raise ValueError(reason)


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=100)
def flaky(failures: int) -> str:
    """Fails its first ``failures`` attempts, then succeeds (retried by ``Retries``)."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    attempt = int(broker.client.incr(f"flaky-attempts:{message.message_id}"))
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"succeeded at attempt {attempt}"


@dramatiq.actor(max_retries=0)
def long_job(steps: int, delay: float = 0.1) -> int:
    """A long actor that the hub can pause and cancel between steps."""
    run = current_workflow()
    for step in range(steps):
        if run is not None:
            run.progress(100 * step / steps, "working")
            run.safe_point()
        time.sleep(delay)
    return steps


@dramatiq.actor(max_retries=0)
def sleepy(seconds: float) -> None:
    """No safe points: only an abort (dramatiq-abort, or a hub cancel bridged to it) ends it."""
    for _ in range(int(seconds * 20)):
        time.sleep(0.05)


@dramatiq.actor(max_retries=0)
def polite(seconds: float) -> None:
    """Stops as soon as dramatiq-abort reports an abort request (a hub cancel is one)."""
    for _ in range(int(seconds * 20)):
        if abort_requested() is not None:
            log.warning("abort requested: stopping")
            return
        time.sleep(0.05)


@dramatiq.actor(max_retries=0)
def fan_out(count: int) -> list[str]:
    """Sends ``count`` messages from inside its workflow: they are its children at the hub."""
    ids = [add.send(i, i).message_id for i in range(count)]
    log.warning("sent %s", ",".join(ids))
    return ids
