"""``WhenInstrumentor`` in this process, with the real SDK and a real hub on loopback.

Providers are passed to ``instrument()`` explicitly (``tracer_provider=``,
``logger_provider=``), so the process-wide providers stay untouched; what depends on them
(installing SDK providers where only the API's proxies exist, process pools, the
``opentelemetry-instrument`` command) runs in subprocesses in ``test_instrumentor_process.py``.

Absence ("nothing more reached the hub") is proven with a marker: the providers are flushed,
then the coordinator, then a marker log is sent on the same connection; once the hub has the
marker, anything sent before it has arrived too.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import sys
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs import LoggingHandler as SdkLoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from when_coordinator import Config, Coordinator, workflow
from when_coordinator.hub import ThreadedHub, WorkflowState
from when_coordinator.otel import (
    CoordinationLogExporter,
    CoordinationSpanProcessor,
    WhenInstrumentor,
    get_coordinator,
    set_coordinator,
)
from when_coordinator.protocol import MessageType, Phase

# SDK 1.40+ deprecates its LoggingHandler in favour of opentelemetry-instrumentation-logging's
# (the instrumentor's and the tests' own); one test makes the SDK's, as an old set-up would.
SDK_HANDLER_DEPRECATED = "ignore:`LoggingHandler` in `opentelemetry-sdk` is deprecated"

TIMEOUT = 10.0
INSTRUMENTOR_LOGGER = "when_coordinator.otel.instrumentor"

JOBS_SOURCE = """
import asyncio
import logging

log = logging.getLogger("jobs")
log.setLevel(logging.INFO)


def job(value):
    log.info("job running with %s", value)
    return value * 2


def failing(value):
    raise RuntimeError(f"boom {value}")


async def ajob(value):
    await asyncio.sleep(0)
    return value + 1


async def afailing(value):
    await asyncio.sleep(0)
    raise ValueError(f"async boom {value}")


class Runner:
    def run(self, value):
        return value * 3

    async def arun(self, value):
        await asyncio.sleep(0)
        return value * 4

    @staticmethod
    def static(value):
        return value - 1

    @classmethod
    def klass(cls, value):
        return f"{cls.__name__}:{value}"


class SubRunner(Runner):
    pass
"""


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def hub(otel_hub: ThreadedHub) -> ThreadedHub:
    """A fresh hub per test (``settled`` counts every workflow a hub has)."""
    return otel_hub


@pytest.fixture
def logger_provider() -> Iterator[LoggerProvider]:
    provider = LoggerProvider()
    yield provider
    provider.shutdown()


@pytest.fixture
def instrumentor() -> Iterator[WhenInstrumentor]:
    """The (singleton) instrumentor, never left instrumented, and the default coordinator as
    it was."""
    instance = WhenInstrumentor()
    previous = set_coordinator(None)
    yield instance
    if instance.is_instrumented_by_opentelemetry:
        instance.uninstrument()
    set_coordinator(previous)


@pytest.fixture
def make_config(hub: ThreadedHub) -> Callable[..., Config]:
    def make(*entrypoints: str, **overrides: Any) -> Config:
        settings: dict[str, Any] = {
            "when_url": hub.url,
            "service_name": "instrumentor-tests",
            "reconnect_initial_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "close_timeout": 5.0,
            "workflow_entrypoints": entrypoints,
        }
        settings.update(overrides)
        return Config(**settings)

    return make


@pytest.fixture
def instrument(
    instrumentor: WhenInstrumentor,
    make_config: Callable[..., Config],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> Callable[..., Coordinator]:
    """Instrument with the test's providers; returns the coordinator the instrumentor uses."""

    def run(*entrypoints: str, **kwargs: Any) -> Coordinator:
        config = kwargs.pop("config", None) or make_config(*entrypoints)
        kwargs.setdefault("tracer_provider", tracer_provider)
        kwargs.setdefault("logger_provider", logger_provider)
        instrumentor.instrument(config=config, **kwargs)
        assert instrumentor.is_instrumented_by_opentelemetry
        return get_coordinator()

    return run


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], str]]:
    """Write the jobs module under a fresh name (not imported yet); forgotten at teardown."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make() -> str:
        name = f"when_jobs_{uuid.uuid4().hex[:12]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(JOBS_SOURCE), encoding="utf-8")
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


# ---------------------------------------------------------------------- helpers


def settled(hub: ThreadedHub, count: int) -> list[WorkflowState]:
    """Wait until the hub has ``count`` workflows, all terminal."""

    def done(h: ThreadedHub) -> bool:
        workflows = h.workflows.values()
        return len(workflows) >= count and all(w.phase.is_terminal for w in workflows)

    hub.wait_for(done, timeout=TIMEOUT)
    return list(hub.workflows.values())


def by_type(workflows: list[WorkflowState]) -> dict[str, WorkflowState]:
    return {w.action_type: w for w in workflows}


def phases(workflow: WorkflowState) -> list[str]:
    return [change.to_phase.value for change in workflow.history]


def prove_quiet(
    hub: ThreadedHub, coordinator: Coordinator, *providers: TracerProvider | LoggerProvider
) -> None:
    """Flush ``providers`` and ``coordinator``, then wait for a marker sent after them."""
    for provider in providers:
        provider.force_flush()
    coordinator.flush(TIMEOUT)
    marker = f"marker-{uuid.uuid4().hex}"
    coordinator.log_info(marker)
    hub.wait_for(lambda h: any(r.message == marker for r in h.logs), timeout=TIMEOUT)


def created(hub: ThreadedHub) -> list[str]:
    return [
        m.message.workflow_id
        for m in hub.received
        if m.message.type == MessageType.WORKFLOW_CREATED
    ]


def span_processors(provider: TracerProvider) -> list[Any]:
    return list(provider._active_span_processor._span_processors)


def log_processors(provider: LoggerProvider) -> list[Any]:
    return list(provider._multi_log_record_processor._log_record_processors)


def coordination_exporters(provider: LoggerProvider) -> list[CoordinationLogExporter]:
    found = []
    for processor in log_processors(provider):
        exporter = getattr(processor, "_exporter", None)
        if exporter is None:  # the SDK keeps it on its shared batch processor
            exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
        if isinstance(exporter, CoordinationLogExporter):
            found.append(exporter)
    return found


def otel_handlers() -> list[logging.Handler]:
    bridges = (LoggingHandler, SdkLoggingHandler)
    return [h for h in logging.getLogger().handlers if isinstance(h, bridges)]


# wrapt 2 names the base of its function wrappers BaseObjectProxy; wrapt 1 has ObjectProxy only.
PROXY: type = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def is_wrapped(owner: object, name: str) -> bool:
    return isinstance(getattr(owner, name), PROXY)


# ---------------------------------------------------------------------- registration


def test_registered_as_the_when_instrumentor_and_nothing_else() -> None:
    (entry,) = importlib.metadata.entry_points(group="opentelemetry_instrumentor", name="when")
    loaded = entry.load()
    assert loaded is WhenInstrumentor
    assert issubclass(loaded, BaseInstrumentor)
    assert tuple(WhenInstrumentor().instrumentation_dependencies()) == ()
    for group in ("opentelemetry_configurator", "opentelemetry_distro"):
        ours = [
            e
            for e in importlib.metadata.entry_points(group=group)
            if e.value.startswith("when_coordinator")
        ]
        assert ours == [], f"when-coordinator must not take the {group} slot"
    (exporter,) = importlib.metadata.entry_points(group="opentelemetry_logs_exporter", name="when")
    assert exporter.load() is CoordinationLogExporter


# ---------------------------------------------------------------------- providers


def test_attaches_processor_and_exporter_to_the_given_sdk_providers(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    before = len(span_processors(tracer_provider))
    instrument()
    added = span_processors(tracer_provider)[before:]
    assert [type(p) for p in added] == [CoordinationSpanProcessor]
    assert len(coordination_exporters(logger_provider)) == 1
    assert [type(p) for p in log_processors(logger_provider)] == [BatchLogRecordProcessor]
    (handler,) = otel_handlers()

    # A span from a raw tracer on that provider, carrying a workflow id, becomes a workflow;
    # a log record made inside it reaches the hub with that workflow's id.
    tracer = tracer_provider.get_tracer("raw")
    log = logging.getLogger("raw-service")
    log.setLevel(logging.INFO)
    with tracer.start_as_current_span("import-orders", attributes={"when.workflow.id": "wf-raw"}):
        log.info("importing orders")
    hub.wait_for(
        lambda h: (
            "wf-raw" in h.workflows
            and h.workflows["wf-raw"].phase is Phase.COMPLETED
            and any(r.message == "importing orders" for r in h.logs)
        ),
        timeout=TIMEOUT,
    )
    (record,) = [r for r in hub.logs if r.message == "importing orders"]
    assert record.workflow_id == "wf-raw"
    assert handler in logging.getLogger().handlers


def test_instrument_uninstrument_instrument_attaches_once(
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    before = len(span_processors(tracer_provider))
    instrument()
    instrumentor.uninstrument()
    coordinator = instrument()
    ours = [p for p in span_processors(tracer_provider) if isinstance(p, CoordinationSpanProcessor)]
    assert len(ours) == 1
    assert len(span_processors(tracer_provider)) == before + 1
    assert len(coordination_exporters(logger_provider)) == 1
    assert len(otel_handlers()) == 1

    log = logging.getLogger("once")
    log.setLevel(logging.INFO)
    with workflow("once", tracer_provider=tracer_provider) as run:
        log.info("logged once")
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    assert [r.workflow_id for r in hub.logs if r.message == "logged once"] == [run.id]
    assert created(hub).count(run.id) == 1


def test_the_instrumentor_is_a_singleton_whose_state_survives_construction(
    hub: ThreadedHub,
    make_config: Callable[..., Config],
    instrumentor: WhenInstrumentor,
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    """``WhenInstrumentor().uninstrument()`` (a new call of the constructor, as the contrib
    instrumentors are used) must undo what ``WhenInstrumentor().instrument()`` did."""
    original_start = threading.Thread.start
    WhenInstrumentor().instrument(
        config=make_config(),
        tracer_provider=tracer_provider,
        logger_provider=logger_provider,
    )
    assert is_wrapped(threading.Thread, "start")
    assert WhenInstrumentor() is instrumentor
    WhenInstrumentor().uninstrument()
    assert threading.Thread.start is original_start
    assert otel_handlers() == []


# ---------------------------------------------------------------------- uninstrument


def test_uninstrument_undoes_everything(
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    make_config: Callable[..., Config],
    make_module: Callable[[], str],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    name = make_module()
    module = importlib.import_module(name)
    originals = {
        "job": module.job,
        "run": module.Runner.__dict__["run"],
        "start": threading.Thread.start,
        "thread_run": threading.Thread.run,
        "submit": ThreadPoolExecutor.submit,
        "process_submit": ProcessPoolExecutor.submit,
        "basicConfig": logging.basicConfig,
    }
    handlers = list(logging.getLogger().handlers)
    default = Coordinator(Config(service_name="the-default"))
    set_coordinator(default)
    # The hub-facing coordinator is the test's, so that only the switched-off processor and
    # exporter (not a closed connection) can keep traffic away from the hub.
    coordinator = Coordinator(make_config())
    coordinator.connect()
    try:
        instrumentor.instrument(
            config=make_config(f"{name}:job", f"{name}:Runner.run"),
            coordinator=coordinator,
            tracer_provider=tracer_provider,
            logger_provider=logger_provider,
        )
        assert get_coordinator() is coordinator
        for owner, attribute in (
            (module, "job"),
            (module.Runner, "run"),
            (threading.Thread, "start"),
            (threading.Thread, "run"),
            (ThreadPoolExecutor, "submit"),
            (ProcessPoolExecutor, "submit"),
            (logging, "basicConfig"),
        ):
            assert is_wrapped(owner, attribute), attribute
        assert module.job(1) == 2
        settled(hub, 1)

        instrumentor.uninstrument()

        assert module.job is originals["job"]
        assert module.Runner.__dict__["run"] is originals["run"]
        assert threading.Thread.start is originals["start"]
        assert threading.Thread.run is originals["thread_run"]
        assert ThreadPoolExecutor.submit is originals["submit"]
        assert ProcessPoolExecutor.submit is originals["process_submit"]
        assert logging.basicConfig is originals["basicConfig"]
        assert logging.getLogger().handlers == handlers
        assert get_coordinator() is default

        # The processor and exporter stay on the providers (the SDK cannot remove them) but
        # are switched off: nothing more reaches the hub.
        (processor,) = [
            p for p in span_processors(tracer_provider) if isinstance(p, CoordinationSpanProcessor)
        ]
        assert processor.enabled is False
        assert [e.enabled for e in coordination_exporters(logger_provider)] == [False]
        assert module.job(2) == 4
        assert module.Runner().run(1) == 3
        tracer = tracer_provider.get_tracer("raw")
        with tracer.start_as_current_span("late", attributes={"when.workflow.id": "wf-late"}):
            pass
        logger_provider.get_logger("direct").emit(body="after uninstrument")
        logging.getLogger("jobs").warning("after uninstrument, through logging")
        prove_quiet(hub, coordinator, tracer_provider, logger_provider)
        assert len(hub.workflows) == 1
        assert "wf-late" not in hub.workflows
        assert not [r for r in hub.logs if "after uninstrument" in r.message]
        assert coordinator.is_connected  # still open: it was the test's, not the instrumentor's
    finally:
        coordinator.close()
        default.close()


def test_static_class_and_inherited_methods_as_entrypoints_and_back(
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
) -> None:
    """Uninstrument puts back what the class held: a staticmethod stays a staticmethod (not a
    plain function that would then receive the instance), a classmethod a classmethod, and an
    inherited method is inherited again."""
    name = make_module()
    module = importlib.import_module(name)
    runner, sub = module.Runner, module.SubRunner
    held = {key: runner.__dict__[key] for key in ("static", "klass", "run")}
    instrument(f"{name}:Runner.static", f"{name}:Runner.klass", f"{name}:SubRunner.run")
    assert runner.static(2) == 1
    assert runner().static(2) == 1
    assert runner.klass(1) == "Runner:1"
    assert sub().klass(1) == "SubRunner:1"
    assert sub().run(1) == 3
    assert runner().run(1) == 3  # not an entry point: no workflow
    workflows = settled(hub, 5)
    assert Counter(w.action_type for w in workflows) == Counter(
        {"Runner.static": 2, "Runner.klass": 2, "SubRunner.run": 1}
    )

    instrumentor.uninstrument()
    assert {key: runner.__dict__[key] for key in held} == held
    assert "run" not in sub.__dict__
    assert runner().static(2) == 1
    assert sub().klass(1) == "SubRunner:1"
    assert sub().run(1) == 3


def test_uninstrument_closes_the_coordinator_it_made(
    hub: ThreadedHub, instrumentor: WhenInstrumentor, instrument: Callable[..., Coordinator]
) -> None:
    coordinator = instrument()
    assert coordinator.wait_registered(TIMEOUT)
    hub.wait_for(lambda h: any(s.connected for s in h.services.values()), timeout=TIMEOUT)
    instrumentor.uninstrument()
    hub.wait_for(lambda h: not any(s.connected for s in h.services.values()), timeout=TIMEOUT)
    assert not coordinator.is_connected


# ---------------------------------------------------------------------- entry points


@pytest.mark.parametrize("imported", ["before", "after"])
def test_entrypoints_run_as_workflows(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
    span_exporter: InMemorySpanExporter,
    imported: str,
) -> None:
    name = make_module()
    if imported == "before":
        importlib.import_module(name)
    instrument(
        f"{name}:job",
        f"{name}:failing",
        f"{name}:ajob",
        f"{name}:afailing",
        f"{name}:Runner.run",
        f"{name}:Runner.arun",
    )
    assert (name in sys.modules) == (imported == "before")
    module: ModuleType = importlib.import_module(name)
    assert is_wrapped(module, "job"), "imported after instrument(): patched on import"

    assert module.job(21) == 42
    with pytest.raises(RuntimeError, match="boom 7"):
        module.failing(7)
    assert asyncio.run(module.ajob(1)) == 2
    with pytest.raises(ValueError, match="async boom 3"):
        asyncio.run(module.afailing(3))
    assert module.Runner().run(2) == 6
    assert asyncio.run(module.Runner().arun(2)) == 8

    workflows = by_type(settled(hub, 6))
    assert set(workflows) == {"job", "failing", "ajob", "afailing", "Runner.run", "Runner.arun"}
    for action in ("job", "ajob", "Runner.run", "Runner.arun"):
        assert workflows[action].phase is Phase.COMPLETED, action
        assert phases(workflows[action])[-4:] == [
            "planning",
            "execution",
            "completing",
            "completed",
        ], action
    failed = workflows["failing"]
    assert failed.phase is Phase.FAILED
    assert "RuntimeError: boom 7" in failed.reason
    assert [e.error for e in failed.errors] == ["RuntimeError: boom 7"]
    assert workflows["afailing"].phase is Phase.FAILED
    assert [e.error for e in workflows["afailing"].errors] == ["ValueError: async boom 3"]
    assert sorted(created(hub)) == sorted(w.workflow_id for w in workflows.values())

    # The workflows are spans of the provider given to instrument().
    finished = {
        (s.attributes or {})["when.workflow.id"]: s for s in span_exporter.get_finished_spans()
    }
    assert set(finished) == {w.workflow_id for w in workflows.values()}
    assert finished[failed.workflow_id].status.description == "RuntimeError: boom 7"


def test_invalid_entrypoints_are_logged_not_raised(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = make_module()
    importlib.import_module(name)
    caplog.set_level(logging.ERROR, logger=INSTRUMENTOR_LOGGER)
    bad = ["no_colon", f"{name}:", ":job", "not-a-module:job", f"{name}:job()", "a:b:c"]
    missing = [f"{name}:missing", f"{name}:Runner.missing", f"{name}:Nothing.run"]
    instrument(*bad, *missing, f"{name}:job")

    errors = [r.getMessage() for r in caplog.records if r.name == INSTRUMENTOR_LOGGER]
    for spec in bad:
        assert any(repr(spec) in e and "module:function" in e for e in errors), (spec, errors)
    for spec in missing:
        assert any(spec in e and "not found" in e for e in errors), (spec, errors)
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.name == INSTRUMENTOR_LOGGER)

    # The valid one still works.
    module = sys.modules[name]
    assert module.job(1) == 2
    assert [w.action_type for w in settled(hub, 1)] == ["job"]


def test_reinstrumenting_before_the_import_patches_once(
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
) -> None:
    """The import hook of an uninstrumented run must not wrap the function a second time."""
    name = make_module()
    instrument(f"{name}:job")
    instrumentor.uninstrument()
    coordinator = instrument(f"{name}:job")
    module = importlib.import_module(name)
    assert is_wrapped(module, "job")
    assert not isinstance(module.job.__wrapped__, PROXY), "wrapped twice"
    assert module.job(1) == 2
    settled(hub, 1)
    prove_quiet(hub, coordinator)
    (only,) = hub.workflows.values()
    assert only.action_type == "job"
    assert only.parent_workflow_id == ""


def test_uninstrumented_before_the_import_leaves_the_module_alone(
    instrumentor: WhenInstrumentor,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
) -> None:
    name = make_module()
    instrument(f"{name}:job")
    instrumentor.uninstrument()
    module = importlib.import_module(name)
    assert not is_wrapped(module, "job")


# ---------------------------------------------------------------------- logs


def test_logging_records_reach_the_hub_with_their_workflow(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    name = make_module()
    coordinator = instrument(f"{name}:job")
    module = importlib.import_module(name)
    outside = logging.getLogger("outside")
    outside.setLevel(logging.INFO)
    outside.info("before any workflow")
    module.job(5)
    (job,) = settled(hub, 1)
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    records = {r.message: r for r in hub.logs}
    assert records["job running with 5"].workflow_id == job.workflow_id
    assert records["job running with 5"].entry.trace_id
    assert records["before any workflow"].workflow_id == ""
    assert records["job running with 5"].entry.source_file.endswith(f"{name}.py")
    assert len(hub.logs_for(job.workflow_id)) == 1


def test_the_package_own_records_stay_out_of_the_hub(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    coordinator = instrument()
    logging.getLogger("when_coordinator.client").warning("the package's own warning")
    logging.getLogger("app").warning("the application's warning")
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    messages = [r.message for r in hub.logs]
    assert "the application's warning" in messages
    assert "the package's own warning" not in messages


class RefusingTracerProvider(TracerProvider):
    """An SDK provider that refuses processors, as a wrapper with its own rules might."""

    def add_span_processor(self, span_processor: Any) -> None:
        raise RuntimeError("no processors here")


class RefusingLoggerProvider(LoggerProvider):
    def add_log_record_processor(self, log_record_processor: Any) -> None:
        raise RuntimeError("no processors here")


def test_providers_that_refuse_get_one_warning_each_and_instrument_never_raises(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    make_module: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracer_provider, logger_provider = RefusingTracerProvider(), RefusingLoggerProvider()
    name = make_module()
    with caplog.at_level(logging.WARNING, logger=INSTRUMENTOR_LOGGER):
        coordinator = instrument(
            f"{name}:job", tracer_provider=tracer_provider, logger_provider=logger_provider
        )
    warned = [r.getMessage() for r in caplog.records if r.name == INSTRUMENTOR_LOGGER]
    assert len(warned) == 2, warned
    assert "cannot attach its span processor" in warned[0]
    assert "cannot attach its log exporter" in warned[1]
    importlib.import_module(name).job(6)  # the workflow and its record still reach the hub
    (job,) = settled(hub, 1)
    assert job.phase is Phase.COMPLETED
    coordinator.flush(TIMEOUT)
    hub.wait_for(lambda h: len(h.logs_for(job.workflow_id)) == 1, timeout=TIMEOUT)
    assert hub.logs_for(job.workflow_id)[0].message == "job running with 6"
    tracer_provider.shutdown()
    logger_provider.shutdown()


def test_an_otel_logging_handler_added_later_does_not_duplicate_records(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    """A bridge handler added to the root logger after instrumentation (as the logging
    instrumentation of ``opentelemetry-instrumentation-logging`` does when it runs after this
    instrumentor) feeds the same pipeline: ours steps aside, and each record arrives once."""
    coordinator = instrument()
    log = logging.getLogger("late-handler")
    log.setLevel(logging.INFO)
    log.info("before the second handler")
    later = LoggingHandler(logger_provider=logger_provider)
    logging.getLogger().addHandler(later)
    try:
        log.info("with two handlers")
    finally:
        logging.getLogger().removeHandler(later)
    log.info("after the second handler left")
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    messages = Counter(r.message for r in hub.logs if not r.message.startswith("marker-"))
    assert messages == Counter(
        ["before the second handler", "with two handlers", "after the second handler left"]
    )


def test_logs_disabled_attaches_no_handler_and_no_exporter(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    make_config: Callable[..., Config],
    make_module: Callable[[], str],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    name = make_module()
    handlers = list(logging.getLogger().handlers)
    coordinator = instrument(config=make_config(f"{name}:job", logs_enabled=False))
    assert logging.getLogger().handlers == handlers
    assert coordination_exporters(logger_provider) == []
    assert not is_wrapped(logging, "basicConfig")
    module = importlib.import_module(name)
    module.job(3)
    (job,) = settled(hub, 1)
    assert job.phase is Phase.COMPLETED
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    assert not [r for r in hub.logs if r.message.startswith("job running")]


def test_logs_enabled_false_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    """No ``config=``: the instrumentor reads ``WHEN_*`` as ``opentelemetry-instrument`` runs it."""
    monkeypatch.setenv("WHEN_URL", hub.url)
    monkeypatch.setenv("WHEN_SERVICE_NAME", "from-env")
    monkeypatch.setenv("WHEN_LOGS_ENABLED", "false")
    handlers = list(logging.getLogger().handlers)
    instrumentor.instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    assert get_coordinator().config.service_name == "from-env"
    assert logging.getLogger().handlers == handlers
    assert coordination_exporters(logger_provider) == []


def test_an_unusable_environment_is_logged_and_nothing_connects(
    monkeypatch: pytest.MonkeyPatch,
    instrumentor: WhenInstrumentor,
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``opentelemetry-instrument`` must never crash the service over a bad ``WHEN_*``."""
    monkeypatch.setenv("WHEN_URL", "http://not-a-websocket-url")
    caplog.set_level(logging.ERROR, logger=INSTRUMENTOR_LOGGER)
    instrumentor.instrument(tracer_provider=tracer_provider, logger_provider=logger_provider)
    assert instrumentor.is_instrumented_by_opentelemetry
    (error,) = [r.getMessage() for r in caplog.records if r.name == INSTRUMENTOR_LOGGER]
    assert "WHEN_URL" in error
    assert not get_coordinator().config.enabled
    with workflow("still-traced", tracer_provider=tracer_provider) as run:
        assert run.span.is_recording()


# ---------------------------------------------------------------------- threads


def test_workflow_context_is_carried_into_threads_and_thread_pools(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    logger_provider: LoggerProvider,
) -> None:
    coordinator = instrument()
    log = logging.getLogger("threads")
    log.setLevel(logging.INFO)

    def child(kind: str) -> str:
        log.info("logged from a %s", kind)
        with workflow(f"child-in-{kind}", tracer_provider=tracer_provider) as run:
            pass
        return run.parent_id

    parents: dict[str, str] = {}
    with workflow("parent", tracer_provider=tracer_provider) as parent:
        thread = threading.Thread(target=lambda: parents.update(thread=child("thread")))
        thread.start()
        thread.join(TIMEOUT)
        with ThreadPoolExecutor(max_workers=2) as pool:
            parents["submit"] = pool.submit(child, "pool").result(TIMEOUT)
            parents["map"] = next(iter(pool.map(child, ["map"])))

    assert parents == dict.fromkeys(("thread", "submit", "map"), parent.id)
    workflows = by_type(settled(hub, 4))
    for kind in ("thread", "pool", "map"):
        assert workflows[f"child-in-{kind}"].parent_workflow_id == parent.id, kind
        assert workflows[f"child-in-{kind}"].root_workflow_id == parent.id, kind
    prove_quiet(hub, coordinator, tracer_provider, logger_provider)
    records = {r.message: r for r in hub.logs}
    for kind in ("thread", "pool", "map"):
        assert records[f"logged from a {kind}"].workflow_id == parent.id, kind


def test_a_reused_pool_thread_runs_each_task_in_its_submitter_workflow(
    hub: ThreadedHub,
    instrument: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
) -> None:
    """A pool thread started inside one workflow and reused by another: each task belongs to
    the workflow that submitted it, not to the one that happened to start the thread."""
    instrument()

    def child(kind: str) -> str:
        with workflow(f"child-of-{kind}", tracer_provider=tracer_provider) as run:
            pass
        return run.parent_id

    with ThreadPoolExecutor(max_workers=1) as pool:
        with workflow("first", tracer_provider=tracer_provider) as first:
            assert pool.submit(child, "first").result(TIMEOUT) == first.id  # starts the thread
        with workflow("second", tracer_provider=tracer_provider) as second:
            assert pool.submit(child, "second").result(TIMEOUT) == second.id
        assert pool.submit(child, "none").result(TIMEOUT) == ""
    workflows = by_type(settled(hub, 5))
    assert workflows["child-of-second"].parent_workflow_id == second.id
    assert workflows["child-of-none"].parent_workflow_id == ""


@pytest.mark.filterwarnings(SDK_HANDLER_DEPRECATED)
@pytest.mark.parametrize("kind", [LoggingHandler, SdkLoggingHandler])
def test_an_existing_otel_logging_handler_is_used_not_doubled(
    hub: ThreadedHub,
    instrumentor: WhenInstrumentor,
    instrument: Callable[..., Coordinator],
    logger_provider: LoggerProvider,
    kind: type[logging.Handler],
) -> None:
    """The logging instrumentation (or the SDK's deprecated handler, with
    ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED``) already put a handler on the root
    logger: the instrumentor adds none, and leaves that one in place when uninstrumented."""
    existing = kind(logger_provider=logger_provider)  # type: ignore[call-arg]
    root = logging.getLogger()
    root.addHandler(existing)
    try:
        handlers = list(root.handlers)
        instrument()
        # No second bridge; the instrumentor's only addition there keeps the last resort.
        assert otel_handlers() == [existing]
        added = [type(h).__name__ for h in root.handlers if h not in handlers]
        assert added == ["LastResortKeeper"]
        assert len(coordination_exporters(logger_provider)) == 1
        instrumentor.uninstrument()
        assert root.handlers == handlers
    finally:
        root.removeHandler(existing)


def test_without_instrumentation_threads_do_not_inherit_the_workflow(
    tracer_provider: TracerProvider,
) -> None:
    """The control for the test above: what the thread patches change."""
    quiet = Coordinator(Config(service_name="quiet"))  # no hub: nothing connects
    seen: list[str] = []
    try:
        with workflow("parent", coordinator=quiet, tracer_provider=tracer_provider):
            thread = threading.Thread(
                target=lambda: seen.append(workflow("child", coordinator=quiet).new().parent_id)
            )
            thread.start()
            thread.join(TIMEOUT)
    finally:
        quiet.close()
    assert seen == [""]
