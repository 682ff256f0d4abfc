"""Quickstart: one workflow with progress, a checkpoint and logs, seen live by a hub.

    python examples/quickstart.py

starts a hub of its own inside this process. To report to a hub you run yourself:

    when-coordinator hub --port 8080 &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination python examples/quickstart.py

The workflow is an OpenTelemetry span; its phases, progress and checkpoint reach the hub as they
happen, and the records it logs through ``logging`` reach the hub filed under it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider

from when_coordinator import Config, Coordinator, set_coordinator, workflow
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.otel import CoordinationLogExporter, CoordinationSpanProcessor

log = logging.getLogger("quickstart")

ROWS = 1_000
CHUNK = 250


def hub_view(when_url: str, path: str) -> dict[str, Any]:
    """GET from the hub's operator API, on the same port as the coordination URL."""
    parts = urlsplit(when_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    with urllib.request.urlopen(f"{scheme}://{parts.netloc}{path}", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data


def settled(when_url: str, workflow_id: str, logs: int, timeout: float = 5.0) -> dict[str, Any]:
    """The hub's record of the workflow once the hub has seen it end and got its logs."""
    deadline = time.monotonic() + timeout
    while True:
        record = hub_view(when_url, f"/v1/workflows/{workflow_id}")
        done = record["phase"] in ("completed", "failed", "cancelled")
        if (done and record["log_count"] >= logs) or time.monotonic() > deadline:
            return record
        time.sleep(0.02)


def main() -> int:
    with contextlib.ExitStack() as stack:
        when_url = os.environ.get("WHEN_URL", "")
        if not when_url:
            hub = stack.enter_context(ThreadedHub(Hub(port=0)))
            when_url = hub.url
            print(f"started an embedded hub at {when_url}")

        # One connection to the hub; workflow() uses it from now on.
        coordinator = Coordinator(Config.from_env(when_url=when_url, service_name="quickstart"))
        coordinator.connect()
        stack.callback(coordinator.close)
        if not coordinator.wait_registered(5):
            print(f"could not register with the hub at {when_url}", file=sys.stderr)
            return 1
        set_coordinator(coordinator)

        # Spans: the processor tells the hub which nested span is the current action.
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(CoordinationSpanProcessor(coordinator))
        trace.set_tracer_provider(tracer_provider)
        stack.callback(tracer_provider.shutdown)

        # Logs: Python logging -> OpenTelemetry logs -> the hub, filed under the workflow.
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(CoordinationLogExporter(coordinator))
        )
        log.addHandler(LoggingHandler(logger_provider=logger_provider))
        log.setLevel(logging.INFO)
        stack.callback(logger_provider.shutdown)

        tracer = trace.get_tracer("quickstart")
        with workflow("quickstart-import") as wf:
            print(f"workflow {wf.id} is in {wf.phase.value}")
            log.info("importing %d rows", ROWS, extra={"source": "rows.csv"})
            chunks = ROWS // CHUNK
            for n in range(1, chunks + 1):
                with tracer.start_as_current_span("load-chunk"):
                    time.sleep(0.01)  # the real work would be here
                    wf.progress(
                        100 * n / chunks,
                        message=f"chunk {n} of {chunks}",
                        current_item=n * CHUNK,
                        total_items=ROWS,
                    )
                print(f"  progress {100 * n / chunks:5.1f}%  ({n * CHUNK} rows)")
                if n == chunks // 2:
                    checkpoint = wf.checkpoint(
                        "half-way", "half of the rows are in", state={"rows": n * CHUNK}
                    )
                    print(f"  checkpoint {checkpoint!r}")
                    log.info("checkpoint %s written", checkpoint)
            log.warning("2 rows had an empty email and were kept anyway")
        print(f"workflow {wf.id} ended {wf.phase.value}")

        logger_provider.force_flush(5_000)
        coordinator.flush(5)
        record = settled(when_url, wf.id, logs=3)
        phases = " -> ".join(change["to"] for change in record["history"])
        print(f"the hub saw: {phases}")
        print(
            f"  progress {record['progress']:g}%, checkpoint {record['checkpoint_id']!r}, "
            f"{record['log_count']} log records"
        )
        for entry in record["logs"]:
            print(f"  [{entry['level']}] {entry['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
