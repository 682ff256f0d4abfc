"""Real services for the dashboard tests: ``Coordinator``s running real ``workflow()``s.

Each ``FleetService`` is what a service author writes: a coordinator, a tracer provider with
the coordination span processor, a log handler, and workflows on threads that report progress,
checkpoints and logs and call ``safe_point()`` between steps, so the hub's pause, resume and
cancel reach real code.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType

from opentelemetry.sdk.trace import TracerProvider

from when_coordinator import Config, Coordinator, CoordinatorLogHandler, LogForwarder, workflow
from when_coordinator.otel import CoordinationSpanProcessor


@dataclass
class Plan:
    """What one workflow does: steps of ``increment`` percent every ``step`` seconds."""

    name: str
    workflow_id: str
    increment: float = 2.0
    step: float = 0.1
    until: float = 100.0
    """Stop stepping here; ``hold`` then keeps the workflow running at that progress."""
    hold: bool = False
    stage: str = ""
    fail: str = ""
    """Raise this error at ``until`` (the workflow fails)."""
    children: int = 0
    checkpoint_every: float = 0.0


class FleetService:
    """One registered service running workflows on threads (closed by ``close``)."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        token: str | None = None,
        instance_id: str = "",
        version: str = "1.0.0",
        capabilities: tuple[str, ...] = (),
    ) -> None:
        self.coordinator = Coordinator(
            Config(
                when_url=url,
                service_name=name,
                instance_id=instance_id,
                version=version,
                capabilities=capabilities,
                auth_token=token or "",
                reconnect_initial_delay=0.05,
                reconnect_max_delay=0.5,
                close_timeout=5.0,
            )
        )
        self.provider = TracerProvider()
        self.provider.add_span_processor(CoordinationSpanProcessor(self.coordinator))
        self.forwarder = LogForwarder(self.coordinator, buffer_size=20, flush_interval=0.1)
        self.log = logging.getLogger(f"fleet.{name}.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)
        self._handler = CoordinatorLogHandler(self.forwarder)
        self.log.addHandler(self._handler)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failures: list[BaseException] = []

    def start(self, timeout: float = 10.0) -> FleetService:
        self.coordinator.connect()
        assert self.coordinator.wait_registered(timeout), "the service did not register"
        return self

    def run(self, plan: Plan) -> threading.Thread:
        thread = threading.Thread(target=self._guarded, args=(plan,), daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def _guarded(self, plan: Plan) -> None:
        try:
            self._work(plan)
        except RuntimeError as exc:
            if str(exc) != plan.fail:
                self.failures.append(exc)
        except BaseException as exc:
            self.failures.append(exc)

    def _work(self, plan: Plan) -> None:
        with workflow(
            plan.name,
            workflow_id=plan.workflow_id,
            coordinator=self.coordinator,
            tracer_provider=self.provider,
        ) as wf:
            self.log.info("%s started", plan.name)
            for n in range(plan.children):
                with workflow(
                    f"{plan.name}-part-{n + 1}",
                    workflow_id=f"{plan.workflow_id}-part-{n + 1}",
                    coordinator=self.coordinator,
                    tracer_provider=self.provider,
                ) as child:
                    child.progress(100, "part done")
            percent = 0.0
            last_checkpoint = 0.0
            while not self.stop.is_set() and percent < plan.until:
                percent = min(plan.until, percent + plan.increment)
                wf.progress(percent, plan.stage, message=f"{percent:.0f}% done")
                if plan.checkpoint_every and percent - last_checkpoint >= plan.checkpoint_every:
                    last_checkpoint = percent
                    wf.checkpoint(f"cp-{percent:.0f}", f"after {percent:.0f}%")
                    self.log.debug("checkpoint at %.0f%%", percent)
                wf.safe_point()
                self.stop.wait(plan.step)
            if plan.fail:
                self.log.error("giving up: %s", plan.fail)
                raise RuntimeError(plan.fail)
            while plan.hold and not self.stop.is_set():
                wf.safe_point()
                self.stop.wait(plan.step)
            self.log.info("%s finished", plan.name)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(2.0)
        self.forwarder.stop()
        self.coordinator.close(timeout=5.0)
        self.log.removeHandler(self._handler)
        self.provider.shutdown()

    def __enter__(self) -> FleetService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
