"""Log forwarding: ``LogForwarder`` batching and ``CoordinatorLogHandler``'s mapping of Python
``logging`` records, end to end to a real loopback server where it matters."""

from __future__ import annotations

import gc
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from tests.support.faults import free_port
from tests.support.scripted_server import Frame, ScriptedServer, fast_config
from when_coordinator import (
    Config,
    Coordinator,
    CoordinatorLogHandler,
    LogEntry,
    LogForwarder,
    LogLevel,
    Message,
)
from when_coordinator._workflow_context import with_workflow
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.protocol import parse_timestamp


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    """A logger of the application's own, not propagating to pytest's handlers."""
    logger = logging.getLogger("app.under.test")
    logger.setLevel(1)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(1)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def batches(server: ScriptedServer) -> list[list[dict[str, Any]]]:
    return [list(f.payload["logs"]) for f in server.of_type("log_batch")]


def messages_of(frames: list[Frame]) -> list[str]:
    out: list[str] = []
    for f in frames:
        if f.type == "log":
            out.append(f.payload["message"])
        elif f.type == "log_batch":
            out.extend(entry["message"] for entry in f.payload["logs"])
    return out


# ---------------------------------------------------------------------- LogForwarder


def test_one_batch_per_buffer_size(server: ScriptedServer, client: Coordinator) -> None:
    forwarder = LogForwarder(client, buffer_size=5, flush_interval=60)
    for i in range(12):
        forwarder.add(LogEntry(message=f"m{i}"))
    assert client.flush(5)
    server.barrier()
    assert [[e["message"] for e in b] for b in batches(server)] == [
        [f"m{i}" for i in range(5)],
        [f"m{i}" for i in range(5, 10)],
    ]
    forwarder.flush()
    assert client.flush(5)
    server.barrier()
    assert [e["message"] for e in batches(server)[-1]] == ["m10", "m11"]
    forwarder.flush()  # nothing buffered: nothing sent
    forwarder.stop()
    assert client.flush(5)
    server.barrier()
    assert len(batches(server)) == 3
    assert server.count("log") == 0
    assert all(f.workflow_id == "" for f in server.of_type("log_batch"))


def test_the_timer_sends_what_is_buffered(server: ScriptedServer, client: Coordinator) -> None:
    forwarder = LogForwarder(client, buffer_size=100, flush_interval=0.1)
    started = time.monotonic()
    for i in range(3):
        forwarder.add(LogEntry(message=f"t{i}"))
    server.wait_for(lambda s: s.count("log_batch") >= 1, 5, "a timed batch")
    assert time.monotonic() - started >= 0.05
    assert [e["message"] for e in batches(server)[0]] == ["t0", "t1", "t2"]
    forwarder.add(LogEntry(message="t3"))  # the timer keeps running
    server.wait_for(lambda s: s.count("log_batch") >= 2, 5, "a second timed batch")
    forwarder.stop()


def test_stop_flushes_once_and_later_entries_go_one_by_one(
    server: ScriptedServer, client: Coordinator
) -> None:
    forwarder = LogForwarder(client, buffer_size=100, flush_interval=60)
    forwarder.add(LogEntry(message="s1"))
    forwarder.add(LogEntry(message="s2"))
    forwarder.stop()
    forwarder.stop()  # idempotent
    forwarder.add(LogEntry(message="after stop"))
    forwarder.stop()
    assert client.flush(5)
    server.barrier()
    assert [[e["message"] for e in b] for b in batches(server)] == [["s1", "s2"]]
    assert [f.payload["message"] for f in server.of_type("log")] == ["after stop"]


def test_missing_timestamps_are_filled_with_the_time_of_logging(
    server: ScriptedServer, client: Coordinator
) -> None:
    forwarder = LogForwarder(client, buffer_size=3, flush_interval=60)
    before = datetime.now(timezone.utc)
    forwarder.add(LogEntry(message="no time"))
    forwarder.log("warn", "via log()", workflow_id="wf-1", action_id="a-1", fields={"n": 1})
    after = datetime.now(timezone.utc)
    forwarder.add(LogEntry(timestamp="2026-01-02T03:04:05.5Z", message="has time"))
    assert client.flush(5)
    server.barrier()
    first, second, third = batches(server)[0]
    for entry in (first, second):
        assert entry["timestamp"].endswith("Z")
        assert before <= parse_timestamp(entry["timestamp"]) <= after
    assert third["timestamp"] == "2026-01-02T03:04:05.5Z"
    assert second == {
        "timestamp": second["timestamp"],
        "level": "warn",
        "message": "via log()",
        "workflow_id": "wf-1",
        "action_id": "a-1",
        "fields": {"n": 1},
    }
    forwarder.stop()


def test_concurrent_adds_lose_and_duplicate_nothing(
    server: ScriptedServer, client: Coordinator
) -> None:
    forwarder = LogForwarder(client, buffer_size=7, flush_interval=0.05)
    threads, per_thread = 8, 250
    start = threading.Barrier(threads, timeout=10)

    def add(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            forwarder.add(LogEntry(message=f"{t}:{i}"))

    workers = [threading.Thread(target=add, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    forwarder.stop()
    assert client.flush(10)
    server.barrier()
    got = [e["message"] for batch in batches(server) for e in batch]
    assert sorted(got) == sorted(f"{t}:{i}" for t in range(threads) for i in range(per_thread))
    assert len(got) == len(set(got))
    assert all(1 <= len(batch) <= 7 for batch in batches(server))
    for t in range(threads):  # each thread's entries stay in order
        mine = [int(m.split(":")[1]) for m in got if m.startswith(f"{t}:")]
        assert mine == sorted(mine)


def test_an_entry_added_while_stop_runs_is_not_left_behind(
    server: ScriptedServer, client: Coordinator
) -> None:
    forwarder = LogForwarder(client, buffer_size=100, flush_interval=60)
    real_lock = forwarder._lock

    class StopInBetween:
        """Runs stop() on another thread just before add() gets the lock: the interleaving
        that left the entry in a buffer nobody would flush again."""

        interfered = False

        def __enter__(self) -> None:
            if not StopInBetween.interfered and threading.current_thread() is main:
                StopInBetween.interfered = True
                stopper = threading.Thread(target=forwarder.stop)
                stopper.start()
                stopper.join(5)
            real_lock.acquire()

        def __exit__(self, *exc: object) -> None:
            real_lock.release()

    main = threading.current_thread()
    forwarder._lock = StopInBetween()  # type: ignore[assignment]
    forwarder.add(LogEntry(message="racing stop"))
    assert StopInBetween.interfered
    assert client.flush(5)
    server.barrier()
    assert messages_of(server.snapshot()) == ["racing stop"]


def test_forwarder_arguments_are_checked() -> None:
    coordinator = Coordinator(fast_config("ws://127.0.0.1:9/x"))
    with pytest.raises(ValueError, match="buffer_size"):
        LogForwarder(coordinator, buffer_size=0)
    with pytest.raises(ValueError, match="flush_interval"):
        LogForwarder(coordinator, flush_interval=0)
    forwarder = LogForwarder(coordinator)
    with pytest.raises(TypeError):
        forwarder.add("not an entry")  # type: ignore[arg-type]
    # Checked as the coordinator's log_with_context checks them: an error now, not a record
    # dropped later when the client thread cannot encode it.
    with pytest.raises(TypeError, match="message"):
        forwarder.log("info", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflow_id"):
        forwarder.log("info", "text", workflow_id=7)  # type: ignore[arg-type]
    forwarder.stop()
    coordinator.close(0)


# ---------------------------------------------------------------------- the handler's mapping


def handler_entry(
    logger: logging.Logger, emit: Any, *, handler: CoordinatorLogHandler | None = None
) -> LogEntry:
    """Log through ``logger`` with ``emit(logger)`` and map the record like the handler."""
    capture = Capture()
    logger.addHandler(capture)
    try:
        emit(logger)
    finally:
        logger.removeHandler(capture)
    assert len(capture.records) == 1
    if handler is None:
        handler = CoordinatorLogHandler(Coordinator(fast_config("ws://127.0.0.1:9/x")))
    return handler.to_entry(capture.records[0])


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (5, "debug"),  # a TRACE level below DEBUG
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warn"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "fatal"),
    ],
)
def test_levels_map_to_protocol_levels(
    app_logger: logging.Logger, level: int, expected: str
) -> None:
    entry = handler_entry(app_logger, lambda lg: lg.log(level, "at %s", "level"))
    assert entry.level == expected
    assert entry.message == "at level"


ID_KEYS = {
    "trace_id": ("trace_id", "traceID", "traceId"),
    "span_id": ("span_id", "spanID", "spanId"),
    "workflow_id": ("workflow_id", "workflowID", "workflowId"),
    "action_id": ("action_id", "actionID", "actionId"),
    "correlation_id": ("correlation_id", "correlationID", "correlationId"),
}
ID_VARIANTS = [(key, name) for key, names in ID_KEYS.items() for name in names]


@pytest.mark.parametrize(("key", "name"), ID_VARIANTS)
def test_id_extras_become_entry_keys_when_strings(
    app_logger: logging.Logger, key: str, name: str
) -> None:
    entry = handler_entry(app_logger, lambda lg: lg.info("ids", extra={name: "v-1", "other": 2}))
    assert getattr(entry, key) == "v-1"
    assert dict(entry.fields) == {"other": 2}


@pytest.mark.parametrize(("key", "name"), ID_VARIANTS)
def test_id_extras_go_to_fields_otherwise(app_logger: logging.Logger, key: str, name: str) -> None:
    entry = handler_entry(app_logger, lambda lg: lg.info("ids", extra={name: 42}))
    assert getattr(entry, key) == ""
    assert dict(entry.fields) == {name: 42}


def test_other_extras_go_to_fields_and_standard_attributes_do_not(
    app_logger: logging.Logger,
) -> None:
    entry = handler_entry(
        app_logger,
        lambda lg: lg.warning("rows %d", 10, extra={"table": "orders", "rows": 10, "ok": True}),
    )
    assert dict(entry.fields) == {"table": "orders", "rows": 10, "ok": True}
    assert entry.message == "rows 10"
    data = entry.to_dict()
    assert set(data) == {"timestamp", "level", "message", "fields", "source_file", "source_line"}


def caller_line() -> int:
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno


def test_source_file_and_line_come_from_the_call_site(app_logger: logging.Logger) -> None:
    capture = Capture()
    app_logger.addHandler(capture)
    line = caller_line() + 1
    app_logger.info("here")
    app_logger.removeHandler(capture)
    entry = CoordinatorLogHandler(Coordinator(fast_config("ws://127.0.0.1:9/x"))).to_entry(
        capture.records[0]
    )
    assert entry.source_file == __file__
    assert entry.source_line == line
    before = time.time()
    assert abs(parse_timestamp(entry.timestamp).timestamp() - before) < 5


def test_exception_text_goes_to_fields(app_logger: logging.Logger) -> None:
    def emit(logger: logging.Logger) -> None:
        try:
            raise ValueError("boom in the pipeline")
        except ValueError:
            logger.exception("step failed")

    entry = handler_entry(app_logger, emit)
    assert entry.level == "error"
    text = entry.fields["exception"]
    assert "Traceback" in text
    assert "ValueError: boom in the pipeline" in text


def test_trace_and_span_ids_come_from_the_active_span(app_logger: logging.Logger) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test_logs")
    with tracer.start_as_current_span("work") as span:
        entry = handler_entry(app_logger, lambda lg: lg.info("inside a span"))
        context = span.get_span_context()
    assert entry.trace_id == f"{context.trace_id:032x}"
    assert entry.span_id == f"{context.span_id:016x}"
    outside = handler_entry(app_logger, lambda lg: lg.info("outside"))
    assert outside.trace_id == outside.span_id == ""
    with tracer.start_as_current_span("work"):
        explicit = handler_entry(app_logger, lambda lg: lg.info("x", extra={"trace_id": "t-own"}))
    assert explicit.trace_id == "t-own"
    provider.shutdown()


@dataclass(frozen=True)
class RunningWorkflow:
    """What the handler reads of the running workflow (``_workflow_context``)."""

    id: str
    action_id: str


def test_the_workflow_comes_from_the_opentelemetry_context(app_logger: logging.Logger) -> None:
    token = otel_context.attach(with_workflow(RunningWorkflow("wf-ctx", "act-ctx")))
    try:
        entry = handler_entry(app_logger, lambda lg: lg.info("in a workflow"))
        explicit = handler_entry(
            app_logger, lambda lg: lg.info("explicit", extra={"workflowId": "wf-own"})
        )
        no_action = otel_context.attach(with_workflow(RunningWorkflow("wf-2", "")))
        bare = handler_entry(app_logger, lambda lg: lg.info("no action"))
        otel_context.detach(no_action)
    finally:
        otel_context.detach(token)
    assert (entry.workflow_id, entry.action_id) == ("wf-ctx", "act-ctx")
    assert explicit.workflow_id == "wf-own"
    assert (bare.workflow_id, bare.action_id) == ("wf-2", "")
    outside = handler_entry(app_logger, lambda lg: lg.info("outside"))
    assert outside.workflow_id == ""


# ---------------------------------------------------------------------- the handler end to end


def test_the_handler_sends_records_as_log_messages(
    server: ScriptedServer, client: Coordinator, app_logger: logging.Logger
) -> None:
    app_logger.addHandler(CoordinatorLogHandler(client))
    app_logger.error("order %s failed", "o-1", extra={"workflow_id": "wf-9", "attempt": 3})
    assert client.flush(5)
    server.barrier()
    (log,) = server.of_type("log")
    assert log.workflow_id == ""  # a log never carries the envelope's workflow id
    payload = log.payload
    assert payload["level"] == "error"
    assert payload["message"] == "order o-1 failed"
    assert payload["workflow_id"] == "wf-9"
    assert payload["fields"] == {"attempt": 3}
    assert payload["source_file"] == __file__
    assert isinstance(payload["source_line"], int)


def test_the_handler_batches_through_a_forwarder(
    server: ScriptedServer, client: Coordinator, app_logger: logging.Logger
) -> None:
    forwarder = LogForwarder(client, buffer_size=4, flush_interval=60)
    app_logger.addHandler(CoordinatorLogHandler(forwarder, level=logging.INFO))
    app_logger.debug("below the handler's level")
    for i in range(4):
        app_logger.info("batched %d", i)
    assert client.flush(5)
    server.barrier()
    assert [[e["message"] for e in b] for b in batches(server)] == [
        [f"batched {i}" for i in range(4)]
    ]
    forwarder.stop()


def test_no_recursion_through_the_package_or_the_client_thread(
    server: ScriptedServer, client: Coordinator
) -> None:
    root = logging.getLogger()
    handler = CoordinatorLogHandler(client)
    old_level = root.level
    root.setLevel(logging.DEBUG)  # websockets logs at DEBUG on the client thread too
    root.addHandler(handler)
    try:
        done = threading.Event()

        def on_notice(message: Message) -> None:  # runs on the client's thread
            logging.getLogger("app.callback").warning("logged on the client thread")
            done.set()

        client.on_message("notice", on_notice)
        server.send({"id": "n", "type": "notice"})
        assert done.wait(5)
        logging.getLogger("when_coordinator.client").warning("the package's own record")
        server.send("not json")  # makes the client log a warning about the bad frame
        for i in range(3):
            logging.getLogger("app").info("application record %d", i)
        assert client.flush(5)
        server.barrier()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert messages_of(server.snapshot()) == [f"application record {i}" for i in range(3)]


def test_entries_are_kept_through_a_disconnection(
    server: ScriptedServer, app_logger: logging.Logger
) -> None:
    coordinator = Coordinator(fast_config(server.url))
    lost, back = threading.Event(), threading.Event()
    coordinator.on_disconnected(lost.set)
    coordinator.connect()
    assert coordinator.wait_registered(5)
    forwarder = LogForwarder(coordinator, buffer_size=2, flush_interval=60)
    app_logger.addHandler(CoordinatorLogHandler(coordinator))
    app_logger.addHandler(CoordinatorLogHandler(forwarder))
    server.stop()
    assert lost.wait(5)
    coordinator.on_connected(back.set)
    for i in range(5):
        app_logger.warning("while away %d", i)
    forwarder.stop()
    server.start(server.port)
    assert back.wait(10)
    assert coordinator.flush(10)
    server.barrier()
    got = messages_of(server.snapshot())
    expected = [f"while away {i}" for i in range(5)]
    assert sorted(got) == sorted(expected * 2)  # once directly, once through the forwarder
    assert coordinator.stats().dropped == 0
    coordinator.close()


# ---------------------------------------------------------------------- close and exit


def test_close_delivers_what_attached_forwarders_buffer_to_the_real_hub(
    app_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """The getting-started recipe: ``LogForwarder(coordinator, flush_interval=5)``, then
    ``close()`` well before the timer would have flushed."""
    with ThreadedHub(Hub(port=0)) as hub:
        coordinator = Coordinator(Config(when_url=hub.url, service_name="forwarded"))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        forwarder = LogForwarder(coordinator, flush_interval=5)
        app_logger.addHandler(CoordinatorLogHandler(LogForwarder(coordinator, flush_interval=5)))
        for i in range(3):
            forwarder.log(LogLevel.INFO, f"forwarded {i}")
            app_logger.info("handled %d", i)
        with caplog.at_level(logging.WARNING, logger="when_coordinator"):
            coordinator.close()
        expected = {f"forwarded {i}" for i in range(3)} | {f"handled {i}" for i in range(3)}
        hub.wait_for(lambda h: {r.message for r in h.logs} >= expected, timeout=5)
        assert sorted(r.message for r in hub.logs) == sorted(expected)
    stats = coordinator.stats()
    assert stats.dropped == 0, stats
    assert stats.delivered == stats.sent == 2  # one log_batch per forwarder
    assert [r for r in caplog.records if r.name.startswith("when_coordinator")] == []


def test_a_forwarder_attached_to_a_coordinator_can_still_be_collected(client: Coordinator) -> None:
    forwarder = LogForwarder(client, flush_interval=60)
    ref = weakref.ref(forwarder)
    del forwarder
    gc.collect()
    assert ref() is None


def test_a_drop_at_close_is_warned_once_with_the_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator = Coordinator(fast_config(f"ws://127.0.0.1:{free_port()}/v1/coordination"))
    coordinator.connect()  # nothing listens: everything stays queued
    forwarder = LogForwarder(coordinator, flush_interval=60)
    for i in range(3):
        coordinator.log_info(f"direct {i}")
        forwarder.log(LogLevel.INFO, f"buffered {i}")
    coordinator.send_progress("wf-1", "", 50.0, "", "")
    with caplog.at_level(logging.WARNING, logger="when_coordinator"):
        coordinator.close(0.2)
        for i in range(5):  # after close(): dropped, warned about once
            coordinator.log_info(f"late {i}")
            forwarder.log(LogLevel.INFO, f"late {i}")
    warnings = [r.getMessage() for r in caplog.records if "cannot connect" not in r.getMessage()]
    assert len(warnings) == 2, warnings
    at_close, late = warnings
    assert "closed with 5 message(s) undelivered" in at_close
    assert "(log: 3, log_batch: 1, progress: 1)" in at_close
    assert "sent after close() was dropped" in late
    stats = coordinator.stats()
    assert stats.drop_reasons["not sending: closed"] == 10
