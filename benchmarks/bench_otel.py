"""Cost of the OpenTelemetry layer, beside the bare OpenTelemetry SDK doing the same work.

Three comparisons, each measured in one run with the baseline on the same machine (issue 7's
figures 1 to 3, with its targets):

1. A whole workflow (auto lifecycle, 10 progress calls with a stage each, delivered to a
   local hub) beside the least that job needs (issue 13): a bare SDK span given the same
   number of ``add_event`` calls (one per phase change and per progress, as a
   hand-instrumented workflow would), plus the frames our client sent for such a workflow,
   pre-encoded, handed per workflow to a raw ``websockets`` client on its own thread and loop
   (registered with the same hub, as ours is) and acknowledged by the hub (a WebSocket ping
   after the last frame of the batch, answered). Target: at most 1.5x. The row beside the
   bare span alone (issue 7's) is kept for information. All tracer providers export through
   a ``BatchSpanProcessor`` to an exporter that discards and are flushed at the end of each
   batch.
2. What ``wf.progress()`` costs its caller beside ``span.add_event()``: the phase manager
   update, the span attribute and the enqueue; the client thread sends in the background.
   Target: at most 1.5 us more.
3. Log records per second from ``logging`` through ``opentelemetry-instrumentation-logging``'s
   ``LoggingHandler`` (the one the instrumentor attaches) and a
   ``BatchLogRecordProcessor`` to our exporter and on to the hub, beside the same pipeline
   with an exporter that discards; every record must reach the hub. Target: at least 0.8x.
   And beside the same pipeline exporting with the SDK's OTLP/HTTP exporter (protobuf) to a
   local receiver in its own process (the peer a user would pick instead; it parses each
   request, counts the records and answers as a Collector does), every record received.
   Target (issue 13): at least 1.0x.

``BENCH_METRICS=on`` runs them with the package's metrics on (otel/metrics.py), through an SDK
meter provider whose periodic reader collects every second into an exporter that discards: a
pessimistic setting (the SDK's default interval is 60 s). Off (the default), no meter provider
is set, as in a service without metrics.

The hub runs in its own process (``python -m benchmarks.bench_otel hub``), as it would in
production, so that it does not compete with the measured code for the GIL; the client
thread does, since it is part of what a service pays.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue
from websockets.asyncio.client import ClientConnection, connect

from when_coordinator import Config, Coordinator, workflow
from when_coordinator.otel import CoordinationLogExporter
from when_coordinator.otel import metrics as when_metrics
from when_coordinator.protocol import Message, MessageType, RegisterPayload, decode, encode

from .harness import Child, Figure, compare, measure, say, serve_commands

PROGRESS_CALLS = 10
STAGES = tuple(f"stage-{i}" for i in range(PROGRESS_CALLS))
WORKFLOWS_PER_BATCH = 100
MAX_WORKFLOW_RATIO = 1.5
MAX_PROGRESS_EXTRA_US = 1.5
LOG_RECORDS = 10_000
LOG_REPEAT = 5
MIN_LOG_RATIO = 0.8
MIN_OTLP_RATIO = 1.0


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _DiscardLogs(LogRecordExporter):
    """The log baseline: accepts every batch and does nothing with it."""

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _DiscardMetrics(MetricExporter):
    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _metrics_provider() -> MeterProvider | None:
    """The package's metrics on (``BENCH_METRICS=on``), or None: see the module docstring."""
    if os.environ.get("BENCH_METRICS", "off") != "on":
        when_metrics.disable_metrics()
        return None
    reader = PeriodicExportingMetricReader(_DiscardMetrics(), export_interval_millis=1_000)
    provider = MeterProvider(metric_readers=[reader])
    if not when_metrics.enable_metrics(provider):
        raise RuntimeError("BENCH_METRICS=on, but WHEN_METRICS_ENABLED switches them off")
    return provider


def _hub_logs(hub: Child) -> int:
    """Log records the hub in the child process has received so far."""
    received: int = hub.ask(op="logs")["logs"]
    return received


def _wait_logs(hub: Child, count: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (received := _hub_logs(hub)) < count and time.monotonic() < deadline:
        time.sleep(0.01)  # polling another process's count, bounded in time
    return received


def _coordinator(url: str) -> Coordinator:
    coordinator = Coordinator(
        Config(
            when_url=url,
            service_name="bench-otel",
            outbox_max_messages=100_000,
            outbox_max_bytes=64 * 1024 * 1024,
        )
    )
    coordinator.connect()
    if not coordinator.wait_registered(10):
        raise RuntimeError("the coordinator did not register with the bench hub")
    return coordinator


def _us(seconds: float) -> float:
    return seconds * 1e6


# --------------------------------------------------------------------------- 1. workflows

_WF = "\x00wf\x00"  # where a frame template has the workflow id
_ID = "\x00id\x00"  # and the message id


class _RawService:
    """The least a service needs to deliver a workflow's messages: a plain ``websockets``
    client on its own thread and event loop (as our client thread is), registered with the
    hub, sending pre-encoded frames as the application hands them over, and asking for the
    hub's acknowledgement (a WebSocket ping, answered after every frame before it) at the end
    of a batch. Frames the hub sends (its JSON pings) are read and dropped."""

    def __init__(self, url: str, templates: Sequence[str]) -> None:
        self.templates = tuple(templates)
        self._ids = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-ws", daemon=True)
        self._thread.start()
        self._queue: asyncio.Queue[list[str]] = asyncio.Queue()
        self.ws: ClientConnection = self._run(self._connect(url))

    def _run(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self, url: str) -> ClientConnection:
        ws = await connect(
            url,
            compression=None,
            max_size=None,
            additional_headers={"X-Service-Name": "bench-raw"},
        )
        await ws.send(encode(Message.create(RegisterPayload("bench-raw", instance_id="raw-1"))))
        while decode(await ws.recv()).type is not MessageType.REGISTERED:
            pass
        self._reader = asyncio.create_task(self._drop_incoming(ws))
        self._sender = asyncio.create_task(self._send_handed(ws))
        return ws

    @staticmethod
    async def _drop_incoming(ws: ClientConnection) -> None:
        async for _ in ws:
            pass

    async def _send_handed(self, ws: ClientConnection) -> None:
        while True:
            frames = await self._queue.get()
            for frame in frames:
                await ws.send(frame)
            self._queue.task_done()

    def hand(self) -> None:
        """From the application thread: one workflow's frames, with a fresh workflow id and
        fresh message ids put into the templates, queued for the client's thread."""
        workflow_id = f"raw-wf-{next(self._ids)}"
        frames = [
            t.replace(_WF, workflow_id).replace(_ID, f"raw-{workflow_id}-{i}")
            for i, t in enumerate(self.templates)
        ]
        self.loop.call_soon_threadsafe(self._queue.put_nowait, frames)

    def acknowledged(self) -> None:
        """Block until every handed frame is sent and the hub answered a ping sent after them."""

        async def go() -> None:
            await self._queue.join()
            await (await self.ws.ping())

        self._run(go())

    def close(self) -> None:
        async def go() -> None:
            self._sender.cancel()
            await self.ws.close()
            await asyncio.wait([self._reader], timeout=10)

        try:
            self._run(go())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def _templates(coordinator: Coordinator, hub: Child) -> list[str]:
    """The frames our client sent for one benchmark workflow, as the hub received them, with
    the workflow id and the message ids made into placeholders."""
    provider = TracerProvider()
    with workflow("bench", coordinator=coordinator, tracer_provider=provider) as wf:
        for i, stage in enumerate(STAGES):
            wf.progress(10.0 * (i + 1), stage)
        workflow_id = wf.id
    provider.shutdown()
    if not coordinator.flush(30):
        raise RuntimeError("the hub did not acknowledge the sample workflow in time")
    frames: list[str] = hub.ask(op="frames", workflow_id=workflow_id)["frames"]
    if not frames:
        raise RuntimeError(f"the hub has no frames of workflow {workflow_id}")
    return [frame.replace(decode(frame).id, _ID).replace(workflow_id, _WF) for frame in frames]


def _events_of_one_workflow(coordinator: Coordinator) -> list[int]:
    """Attribute counts of the events one benchmark workflow puts on its span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _one_workflow(coordinator, provider)
    (span,) = exporter.get_finished_spans()
    provider.shutdown()
    return [len(event.attributes or {}) for event in span.events]


def _one_workflow(coordinator: Coordinator, provider: TracerProvider) -> None:
    with workflow("bench", coordinator=coordinator, tracer_provider=provider) as wf:
        for i, stage in enumerate(STAGES):
            wf.progress(10.0 * (i + 1), stage)


def _workflows(coordinator: Coordinator, hub: Child) -> list[Figure]:
    events = _events_of_one_workflow(coordinator)
    raw = _RawService(hub.hello["url"], _templates(coordinator, hub))
    ours_provider = TracerProvider()
    ours_provider.add_span_processor(BatchSpanProcessor(_Discard()))
    offline = Coordinator(Config(service_name="bench-offline"))  # no hub: sends nothing
    bare_provider = TracerProvider()
    bare_provider.add_span_processor(BatchSpanProcessor(_Discard()))
    tracer = bare_provider.get_tracer("bench")
    event_attributes: list[dict[str, AttributeValue]] = [
        {f"when.attr.{j}": f"value-{j}" for j in range(count)} for count in events
    ]

    def ours() -> None:
        for _ in range(WORKFLOWS_PER_BATCH):
            _one_workflow(coordinator, ours_provider)
        ours_provider.force_flush()
        if not coordinator.flush(30):
            raise RuntimeError("the hub did not acknowledge the workflows in time")

    def bare() -> None:
        for _ in range(WORKFLOWS_PER_BATCH):
            with tracer.start_as_current_span("bench") as span:
                for attributes in event_attributes:
                    span.add_event("event", attributes)
        bare_provider.force_flush()

    def bare_and_raw() -> None:
        for _ in range(WORKFLOWS_PER_BATCH):
            with tracer.start_as_current_span("bench") as span:
                for attributes in event_attributes:
                    span.add_event("event", attributes)
            raw.hand()
        bare_provider.force_flush()
        raw.acknowledged()

    def ours_offline() -> None:
        for _ in range(WORKFLOWS_PER_BATCH):
            _one_workflow(offline, ours_provider)
        ours_provider.force_flush()

    dropped_before = coordinator.stats().dropped
    try:
        mine, least = compare(ours, bare_and_raw, ops=WORKFLOWS_PER_BATCH, repeat=5, min_time=0.5)
        mine_again, base = compare(ours, bare, ops=WORKFLOWS_PER_BATCH, repeat=5, min_time=0.5)
        alone, base_again = compare(
            ours_offline, bare, ops=WORKFLOWS_PER_BATCH, repeat=5, min_time=0.3
        )
    finally:
        raw.close()
    # What one batch sends: workflow_created, a phase_changed per transition, and the progress
    # left after updates still queued were merged (coalesced) into the next.
    before = coordinator.stats()
    ours()
    after = coordinator.stats()
    messages = (after.sent - before.sent) / WORKFLOWS_PER_BATCH
    merged = (after.coalesced - before.coalesced) / WORKFLOWS_PER_BATCH
    ours_provider.shutdown()
    bare_provider.shutdown()
    offline.close()
    dropped = coordinator.stats().dropped - dropped_before
    if dropped:
        raise RuntimeError(f"the coordinator dropped {dropped} messages")
    return [
        Figure.versus(
            f"[1] workflow, {PROGRESS_CALLS} progress, to hub",
            _us(mine.median),
            _us(least.median),
            "us/run",
            max_ratio=MAX_WORKFLOW_RATIO,
            what=f"SDK span + {len(events)} add_event + raw websockets, "
            f"{len(raw.templates)} frames acked",
        ),
        Figure.info(
            "    same, beside the bare span alone (issue 7)",
            _us(mine_again.median),
            "us/run",
            _us(base.median),
        ),
        Figure.info(
            "    same workflow, no hub (layer alone)",
            _us(alone.median),
            "us/run",
            _us(base_again.median),
        ),
        Figure.info("    messages sent per workflow", messages, "msg"),
        Figure.info("    progress updates merged per workflow", merged, "updates"),
        Figure.info(
            "    delivery, per message sent (the difference)",
            _us(mine.median - alone.median) / messages,
            "us/msg",
        ),
        Figure.info(
            "    raw delivery, per frame (bare+raw minus bare)",
            _us(least.median - base.median) / len(raw.templates),
            "us/msg",
        ),
    ]


# --------------------------------------------------------------------------- 2. progress


def _progress(coordinator: Coordinator) -> list[Figure]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    span = provider.get_tracer("bench").start_span("bare")
    attributes: dict[str, AttributeValue] = {
        "when.progress.percent": 50.0,
        "when.progress.stage": "load",
        "when.progress.message": "",
    }
    figures = []
    with workflow("bench-progress", coordinator=coordinator, tracer_provider=provider) as wf:
        wf.progress(1.0, "load")
        mine, base = compare(
            lambda: wf.progress(50.0, "load"),
            lambda: span.add_event("when.progress", attributes),
            repeat=9,
            min_time=0.05,
        )
        coordinator.flush(30)
        extra = _us(mine.median - base.median)
        figures.append(
            Figure(
                "[2] wf.progress() caller cost",
                _us(mine.median),
                _us(base.median),
                "us/call",
                mine.median / base.median,
                f"<= add_event + {MAX_PROGRESS_EXTRA_US:g} us",
                extra <= MAX_PROGRESS_EXTRA_US,
            )
        )
        stages = [f"s{i}" for i in range(64)]
        counter = iter(range(10**9))
        changing = measure(
            lambda: wf.progress(50.0, stages[next(counter) % 64]), repeat=5, min_time=0.05
        )
        figures.append(
            Figure.info(
                "    wf.progress() with a new stage each call",
                _us(changing.median),
                "us/call",
                _us(base.median),
            )
        )
    span.end()
    provider.shutdown()
    coordinator.flush(30)
    return figures


# --------------------------------------------------------------------------- 3. logs


def _log_pipeline(exporter: Any) -> tuple[logging.Logger, LoggerProvider, LoggingHandler]:
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=LOG_RECORDS * 2, max_export_batch_size=512)
    )
    handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger(f"bench.logs.{id(exporter)}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, provider, handler


def _emit(logger: logging.Logger, provider: LoggerProvider) -> None:
    for i in range(LOG_RECORDS):
        logger.info("loaded batch %d", i, extra={"rows": i, "table": "orders"})
    provider.force_flush(60_000)


def _logs(coordinator: Coordinator, hub: Child) -> list[Figure]:
    otlp = Child("bench_otel", "otlp")
    try:
        return _log_rounds(coordinator, hub, otlp)
    finally:
        otlp.close()


def _log_rounds(coordinator: Coordinator, hub: Child, otlp: Child) -> list[Figure]:
    ours_logger, ours_provider, _ = _log_pipeline(CoordinationLogExporter(coordinator))
    base_logger, base_provider, _ = _log_pipeline(_DiscardLogs())
    otlp_logger, otlp_provider, _ = _log_pipeline(
        OTLPLogExporter(endpoint=f"{otlp.hello['url']}/v1/logs", timeout=30)
    )
    ours_rates: list[float] = []
    base_rates: list[float] = []
    otlp_rates: list[float] = []
    lost = otlp_lost = 0
    for _ in range(LOG_REPEAT):
        before = _hub_logs(hub)
        started = time.perf_counter()
        _emit(ours_logger, ours_provider)
        if not coordinator.flush(60):
            raise RuntimeError("the hub did not acknowledge the logs in time")
        ours_rates.append(LOG_RECORDS / (time.perf_counter() - started))
        lost += LOG_RECORDS - (_wait_logs(hub, before + LOG_RECORDS) - before)

        started = time.perf_counter()
        _emit(base_logger, base_provider)
        base_rates.append(LOG_RECORDS / (time.perf_counter() - started))

        before = _hub_logs(otlp)
        started = time.perf_counter()
        _emit(otlp_logger, otlp_provider)  # force_flush returns once the receiver answered
        otlp_rates.append(LOG_RECORDS / (time.perf_counter() - started))
        otlp_lost += LOG_RECORDS - (_wait_logs(otlp, before + LOG_RECORDS) - before)
    ours_provider.shutdown()
    base_provider.shutdown()
    otlp_provider.shutdown()
    if otlp_lost:
        raise RuntimeError(f"the OTLP receiver is missing {otlp_lost} records")
    ours, base, by_otlp = (statistics.median(r) for r in (ours_rates, base_rates, otlp_rates))
    ratio, otlp_ratio = ours / base, ours / by_otlp
    return [
        Figure(
            "[3] log records/s logging -> SDK -> hub",
            ours,
            base,
            "rec/s",
            ratio,
            f">= {MIN_LOG_RATIO:g}x discarding exporter, 0 lost",
            ratio >= MIN_LOG_RATIO and lost == 0,
        ),
        Figure(
            "[3] same, beside OTLP/HTTP to a local receiver",
            ours,
            by_otlp,
            "rec/s",
            otlp_ratio,
            f">= {MIN_OTLP_RATIO:g}x SDK OTLP/HTTP exporter, 0 lost",
            otlp_ratio >= MIN_OTLP_RATIO and lost == 0,
        ),
        Figure.info("    log records lost on the way to the hub", float(lost), "records"),
    ]


# --------------------------------------------------------------------------- entry points


def run() -> list[Figure]:
    meter_provider = _metrics_provider()
    hub = Child("bench_otel", "hub")
    coordinator = _coordinator(hub.hello["url"])
    try:
        figures = _workflows(coordinator, hub)
        figures += _progress(coordinator)
        figures += _logs(coordinator, hub)
        return figures
    finally:
        coordinator.close(10)
        hub.close()
        if meter_provider is not None:
            when_metrics.disable_metrics()
            meter_provider.shutdown()


async def _serve_hub() -> None:
    from when_coordinator.hub import Hub  # noqa: PLC0415

    hub = Hub(
        rate_limit=1e9,
        rate_burst=10**9,
        flood_close_after=None,
        log_buffer=1_000,
        workflow_log_buffer=10,
        record_limit=1_000,
    )
    async with hub:
        say(url=hub.url)

        async def answer(command: dict[str, Any]) -> dict[str, Any]:
            if command.get("op") == "frames":  # what one workflow's service sent, as text
                wanted = command["workflow_id"]
                return {
                    "frames": [
                        encode(r.message) for r in hub.received if r.message.workflow_id == wanted
                    ]
                }
            return {"logs": hub.state.logs.total}

        await serve_commands(answer)


def _serve_otlp() -> None:
    """An OTLP/HTTP receiver on loopback, as a Collector receives: parse each logs request,
    count its records, answer with an empty response. Threads, HTTP/1.1 keep-alive."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: PLC0415
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
    )

    reply = ExportLogsServiceResponse().SerializeToString()
    lock = threading.Lock()
    received = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            request = ExportLogsServiceRequest()
            request.ParseFromString(body)
            count = sum(
                len(scope.log_records)
                for resource in request.resource_logs
                for scope in resource.scope_logs
            )
            with lock:
                received[0] += count
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="otlp", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    say(url=f"http://{host!s}:{port}")

    async def answer(command: dict[str, Any]) -> dict[str, Any]:
        with lock:
            return {"logs": received[0]}

    try:
        asyncio.run(serve_commands(answer))
    finally:
        server.shutdown()
        server.server_close()


def _main(argv: Sequence[str]) -> None:
    if list(argv) == ["hub"]:
        asyncio.run(_serve_hub())
        return
    if list(argv) == ["otlp"]:
        _serve_otlp()
        return
    from .harness import format_table  # noqa: PLC0415

    print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
