"""``when-coordinator demo``: the whole loop in one command.

An embedded reference hub, a service whose workflow (with a child workflow) reports progress,
checkpoints and logs, a pause and a resume sent from the hub, and a summary of what the hub saw.
Everything runs in this process on loopback and stops before the command returns.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .client import Config, Coordinator, CoordinatorLogHandler, LogForwarder
from .hub import Hub, ThreadedHub
from .otel import CoordinationSpanProcessor, workflow
from .protocol import Phase

__all__ = ["main"]

WORKFLOW_ID = "nightly-etl-demo"


def _service(
    coordinator: Coordinator,
    provider: TracerProvider,
    log: logging.Logger,
    paused_once: threading.Event,
) -> None:
    """What a service author writes: a workflow with stages, a child and safe points."""
    tracer = provider.get_tracer("demo-service")
    with workflow(
        "nightly-etl",
        workflow_id=WORKFLOW_ID,
        action_type="ETL",
        coordinator=coordinator,
        tracer_provider=provider,
    ) as wf:
        log.info("nightly ETL started", extra={"rows_expected": 3000})
        with tracer.start_as_current_span("extract"):
            for batch in range(1, 4):
                wf.progress(batch * 10, message=f"read batch {batch} of 3")
            wf.checkpoint("after-extract", "extract done", state={"rows": 3000})
        with tracer.start_as_current_span("transform"):
            with workflow(
                "transform-partition",
                workflow_id=f"{WORKFLOW_ID}-partition-1",
                coordinator=coordinator,
                tracer_provider=provider,
            ) as child:
                for percent in (25, 50, 75, 100):
                    child.progress(percent, "normalise")
                log.info("partition transformed", extra={"partition": 1})
            wf.progress(60, message="transformed")
            # Work in small units with a safe point between them. The hub pauses us here: the
            # safe point completes the pause and blocks until the hub resumes the workflow.
            while not paused_once.is_set():
                time.sleep(0.005)  # one unit of (simulated) work
                if wf.pause_requested:
                    log.warning("pause requested by the hub: stopping at a safe point")
                    paused_once.set()
                wf.safe_point()
        with tracer.start_as_current_span("load"):
            wf.progress(90, message="loading")
            wf.checkpoint("after-load", "load done")
            wf.progress(100, message="done")
        log.info("nightly ETL finished")


def _timeline(hub: ThreadedHub, started: float) -> list[str]:
    lines = []
    for workflow_id in (WORKFLOW_ID, f"{WORKFLOW_ID}-partition-1"):
        state = hub.workflows.get(workflow_id)
        if state is None:
            continue
        parent = f" (child of {state.parent_workflow_id})" if state.parent_workflow_id else ""
        lines.append(f"  {workflow_id}{parent}: {state.phase.value}, {state.progress:g}%")
        for change in state.history:
            source = change.from_phase.value if change.from_phase else "(new)"
            checkpoint = f" [checkpoint {change.checkpoint_id}]" if change.checkpoint_id else ""
            lines.append(
                f"    +{(change.at - started) * 1000:7.1f} ms  {source:>10} -> "
                f"{change.to_phase.value:<10} {change.reason}{checkpoint}"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="when-coordinator demo",
        description="Run an embedded hub and a service; pause and resume a workflow from the "
        "hub; print what the hub saw.",
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="give up after SECONDS")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the hub and its dashboard running after the demo, until Ctrl-C",
    )
    parser.add_argument("--port", type=int, default=0, help="the hub's port (default: any free)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    started = time.time()
    with ThreadedHub(Hub(port=args.port)) as hub:
        print(f"hub listening on {hub.url}")
        coordinator = Coordinator(
            Config(
                when_url=hub.url,
                service_name="demo-service",
                version="1.0.0",
                capabilities=("etl",),
                reconnect_initial_delay=0.2,
            )
        )
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(CoordinationSpanProcessor(coordinator))
        provider.add_span_processor(SimpleSpanProcessor(spans))
        forwarder = LogForwarder(coordinator, buffer_size=20, flush_interval=0.5)
        log = logging.getLogger("demo-service")
        log.propagate = False
        log.setLevel(logging.INFO)
        handler = CoordinatorLogHandler(forwarder)
        log.addHandler(handler)

        coordinator.connect()
        if not coordinator.wait_registered(args.timeout):
            print("the service could not register with the hub")
            return 1
        print(f"service registered as {coordinator.service_id}")

        paused_once = threading.Event()
        failure: list[BaseException] = []

        def run_service() -> None:
            try:
                _service(coordinator, provider, log, paused_once)
            except BaseException as exc:  # reported below
                failure.append(exc)

        service = threading.Thread(target=run_service, name="demo-service")
        service.start()
        try:
            hub.wait_for(
                lambda h: (w := h.workflows.get(WORKFLOW_ID)) is not None and w.progress >= 60,
                args.timeout,
            )
            print("operator: pause")
            hub.pause(WORKFLOW_ID, reason="operator pause from the demo")
            hub.wait_for(lambda h: h.workflows[WORKFLOW_ID].phase is Phase.PAUSED, args.timeout)
            status = hub.status(WORKFLOW_ID)
            print(f"operator: status -> {status.phase.value} at {status.progress:g}%")
            print("operator: resume")
            hub.resume(WORKFLOW_ID, from_checkpoint=hub.workflows[WORKFLOW_ID].checkpoint_id)
            hub.wait_for(lambda h: h.workflows[WORKFLOW_ID].phase is Phase.COMPLETED, args.timeout)
        finally:
            paused_once.set()
            service.join(args.timeout)
            forwarder.stop()
            coordinator.close()
            log.removeHandler(handler)
            provider.shutdown()
        hub.wait_for(lambda h: len(h.logs) >= 4, args.timeout)
        if failure:
            print(f"the service failed: {failure[0]!r}")
            return 1

        print("\ntimeline (as the hub recorded it)")
        print("\n".join(_timeline(hub, started)))
        kinds = Counter(str(received.message.type) for received in hub.received)
        print("\nmessages the hub received")
        print("  " + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())))
        print(f"\nlogs at the hub: {len(hub.logs)}")
        for record in hub.logs:
            where = f" [{record.workflow_id}]" if record.workflow_id else ""
            print(f"  {record.entry.level.upper():5} {record.entry.message}{where}")
        stats = coordinator.stats()
        print(
            f"\nservice side: {stats.sent} messages sent, {stats.delivered} delivered, "
            f"{stats.dropped} dropped; {len(spans.get_finished_spans())} spans recorded"
        )
        print(f"\ndemo finished in {(time.time() - started) * 1000:.0f} ms")
        if args.keep:
            print(f"dashboard: {hub.http_url}/  (the hub keeps running: Ctrl-C stops it)")
            _keep()
        else:
            print("the hub stops now; `when-coordinator demo --keep` leaves it running")
            print(f"dashboard: {hub.http_url}/")
    return 0


def _keep() -> None:
    """Wait for Ctrl-C (or SIGTERM) while the hub serves, so a person can look at it."""
    sys.stdout.flush()
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
