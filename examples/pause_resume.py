"""A workflow paused and resumed from the hub, at a point the workflow chooses.

    python examples/pause_resume.py

starts a hub of its own inside this process; set ``WHEN_URL`` to report to another hub. An
operator (here a thread speaking the hub's operator HTTP API, as ``when-coordinator pause``
and ``resume`` do) pauses the workflow while it runs, looks at it while it is parked, and
resumes it. The workflow honours the pause at its next ``safe_point()``: it reports
``paused`` with its latest checkpoint, waits there, and carries on when resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from when_coordinator import Config, Coordinator, set_coordinator, workflow
from when_coordinator.hub import Hub, ThreadedHub

BATCHES = 20


class Operator:
    """The hub's operator HTTP API, reached through the port of the coordination URL."""

    def __init__(self, when_url: str) -> None:
        parts = urlsplit(when_url)
        self.base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            data: dict[str, Any] = json.load(response)
        return data

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/workflows/{quote(workflow_id)}?logs=0")

    def command(self, workflow_id: str, command: str, query: str = "") -> None:
        self._call("POST", f"/v1/workflows/{quote(workflow_id)}/{command}?{query}")

    def wait(
        self, workflow_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):  # not known to the hub yet
                record = self.workflow(workflow_id)
                if check(record):
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflow {workflow_id} did not get there in {timeout:g} s")
            time.sleep(0.02)


def operate(operator: Operator, workflow_id: str, failures: list[BaseException]) -> None:
    """Pause the running workflow, look at it while it is parked, resume it."""
    try:
        operator.wait(workflow_id, lambda w: w["phase"] == "execution")
        print("operator: pause it (reason: 'nightly backup')")
        operator.command(workflow_id, "pause", "reason=nightly+backup")
        parked = operator.wait(workflow_id, lambda w: w["phase"] == "paused")
        print(
            f"operator: it is paused at checkpoint {parked['checkpoint_id']!r}, "
            f"{parked['progress']:.0f}% done; resuming"
        )
        operator.command(workflow_id, "resume")
    except BaseException as exc:
        failures.append(exc)
        with contextlib.suppress(Exception):
            operator.command(workflow_id, "cancel", "reason=operator+failed")


def main() -> int:
    with contextlib.ExitStack() as stack:
        when_url = os.environ.get("WHEN_URL", "")
        if not when_url:
            hub = stack.enter_context(ThreadedHub(Hub(port=0)))
            when_url = hub.url
            print(f"started an embedded hub at {when_url}")

        coordinator = Coordinator(Config.from_env(when_url=when_url, service_name="reports"))
        coordinator.connect()
        stack.callback(coordinator.close)
        if not coordinator.wait_registered(5):
            print(f"could not register with the hub at {when_url}", file=sys.stderr)
            return 1
        set_coordinator(coordinator)
        tracer_provider = TracerProvider()
        trace.set_tracer_provider(tracer_provider)
        stack.callback(tracer_provider.shutdown)

        operator = Operator(when_url)
        failures: list[BaseException] = []
        with workflow("nightly-report") as wf:
            print(f"workflow {wf.id}: {BATCHES} batches")
            helper = threading.Thread(target=operate, args=(operator, wf.id, failures))
            helper.start()
            for batch in range(1, BATCHES + 1):
                time.sleep(0.05)  # the real work would be here
                wf.checkpoint(f"batch-{batch}", state={"next_batch": batch + 1})
                wf.progress(
                    100 * batch / BATCHES, "render", current_item=batch, total_items=BATCHES
                )
                parking = wf.pause_requested
                if parking:
                    print(f"workflow: pause requested after batch {batch}; parking")
                wf.safe_point()  # a requested pause completes here, and waits for the resume
                if parking:
                    print(f"workflow: resumed, carrying on with batch {batch + 1}")
            helper.join(10)
        print(f"workflow {wf.id} ended {wf.phase.value}")

        coordinator.flush(5)
        record = operator.wait(
            wf.id, lambda w: w["phase"] in ("completed", "failed", "cancelled"), timeout=5
        )
        print("the hub saw: " + " -> ".join(change["to"] for change in record["history"]))
        if failures or record["phase"] != "completed":
            print(f"something went wrong: {failures or record['phase']}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
