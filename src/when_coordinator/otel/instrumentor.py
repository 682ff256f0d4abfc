"""``WhenInstrumentor``: coordinate an unmodified service under ``opentelemetry-instrument``.

Registered under the ``opentelemetry_instrumentor`` entry point as ``when``, it runs after the
distro and configurator have built the SDK providers, and only adds to them:

- the ``CoordinationSpanProcessor`` on the tracer provider, and the ``CoordinationLogExporter``
  (behind a ``BatchLogRecordProcessor``) on the logger provider, unless ``OTEL_LOGS_EXPORTER``
  already names ``when``; where only the API's proxy providers exist it installs SDK ones. A
  provider is whatever is installed: the SDK's, or a proxy wrapping one (logfire's keep it in
  ``provider``); one it cannot attach to gets one warning saying what still works;
- a ``logging`` handler feeding Python log records into that logs pipeline (off with
  ``WHEN_LOGS_ENABLED=false``): ``opentelemetry-instrumentation-logging``'s ``LoggingHandler``,
  only where neither it nor the SDK's deprecated one is on the root logger already (under
  ``opentelemetry-instrument`` the logging instrumentation usually put one there); records of
  ``opentelemetry.*`` loggers (the SDK and its exporters reporting on themselves) never enter
  ours;
- the package's metrics (``otel/metrics.py``) through the meter provider: the
  ``meter_provider`` keyword, else the global one (off with ``OTEL_METRICS_EXPORTER=none``);
- workflow context carried into threads, timers and thread pools by
  ``opentelemetry-instrumentation-threading`` (switched on unless already on, or disabled in
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``): the workflow is in the OpenTelemetry Context.
  Added here only what it does not carry: ``Thread`` subclasses that override ``run``, and
  process pools (a W3C carrier, and a connection of its own for a forked worker);
- a workflow around every call of the functions named in ``WHEN_WORKFLOW_ENTRYPOINTS``
  (``module:function`` or ``module:Class.method``), also for modules imported later.

At exit it flushes only what it attached (its own processor, then the coordinator, within the
one ``close_timeout`` every exit-time flush of the coordinator shares), never another exporter:
the SDK's flush ignores its timeout, and an OTLP exporter facing a closed port retries for
seconds per batch. ``instrument()`` never raises into the application.

Under ``opentelemetry-instrument`` the logging handler and the threading instrumentation wait
until every instrumentor has run (the ``opentelemetry_post_instrument`` entry point), so that
what the logging and threading instrumentations do themselves is seen, not doubled.

It takes neither the configurator nor the distro slot, attaches nothing twice, and
``uninstrument()`` undoes what it did. SDK span and log processors cannot be removed from a
provider, so those are switched off instead (and switched on again by a new ``instrument()``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing.util
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.environment_variables import (
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS,
)
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from .._compat.otel import (
    ApiProxyLoggerProvider,
    BatchLogRecordProcessor,
    LoggerProvider,
    get_logger_provider,
    set_logger_provider,
)
from ..client import Config, ConfigError, Coordinator
from . import metrics as _metrics
from ._identity import ByIdentity
from ._logging_bridge import (
    BRIDGE_HANDLERS,
    CoordinatorRootHandler,
    LastResortKeeper,
    SkipOwnRecords,
    attach_logging_handler,
)
from .log_exporter import CoordinationLogExporter, bind_unbound_exporters
from .propagation import CarriedCall, carrier
from .span_processor import CoordinationSpanProcessor
from .tracking import set_coordinator
from .workflow import workflow

__all__ = ["WhenInstrumentor", "active_instrumentor", "parse_entrypoint"]

_log = logging.getLogger(__name__)

# One processor / exporter per provider, re-enabled rather than attached again.
_span_processors: ByIdentity[CoordinationSpanProcessor] = ByIdentity()
_log_exporters: ByIdentity[tuple[CoordinationLogExporter, Any]] = ByIdentity()

_ABSENT = object()


_active: WhenInstrumentor | None = None
_auto_instrumenting = False


def active_instrumentor() -> WhenInstrumentor | None:
    """The ``WhenInstrumentor`` while it is instrumenting this process, else None."""
    return _active


def _before_auto_instrumentation() -> None:
    """``opentelemetry_pre_instrument`` entry point: ``opentelemetry-instrument`` is about to
    run every instrumentor, in an order nobody defines."""
    global _auto_instrumenting  # noqa: PLW0603 - one flag for the process
    _auto_instrumenting = True


def _after_auto_instrumentation() -> None:
    """``opentelemetry_post_instrument`` entry point: every instrumentor has run; what the
    logging and threading instrumentations did is known, so ours adds only what is missing."""
    global _auto_instrumenting  # noqa: PLW0603
    _auto_instrumenting = False
    instrumentor = _active
    if instrumentor is not None and instrumentor._pending:
        try:
            instrumentor._complete()
        except Exception:
            _log.exception("when-coordinator could not complete its instrumentation")


def parse_entrypoint(spec: str) -> tuple[str, str]:
    """``"pkg.module:Class.method"`` to ``("pkg.module", "Class.method")``, or ValueError."""
    module, sep, qualname = spec.strip().partition(":")
    if (
        not sep
        or not module
        or not qualname
        or not all(part.isidentifier() for part in (*module.split("."), *qualname.split(".")))
    ):
        raise ValueError(
            f"workflow entry point {spec!r} must look like module:function or module:Class.method"
        )
    return module, qualname


class WhenInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """See the module docstring. ``instrument()`` takes optional keyword arguments:
    ``config``, ``coordinator``, ``tracer_provider``, ``logger_provider``, ``meter_provider``
    (default: the global one, see ``otel/metrics.py``)."""

    def __init__(self) -> None:
        if getattr(self, "_initialised", False):
            # BaseInstrumentor is a singleton and calls __init__ on every WhenInstrumentor():
            # ``WhenInstrumentor().uninstrument()`` must still know what instrument() did.
            return
        self._initialised = True
        self._coordinator: Coordinator | None = None
        self._owns_coordinator = False
        self._previous_default: Coordinator | None = None
        self._span_processor: CoordinationSpanProcessor | None = None
        self._log_exporter: CoordinationLogExporter | None = None
        self._log_processor: Any = None
        self._bound_exporters: list[CoordinationLogExporter] = []
        self._logging_handler: logging.Handler | None = None
        self._bridge_provider: Any = None  # where the logging handler will feed, once decided
        self._last_resort: logging.Handler | None = None
        self._bridge_in_use: logging.Handler | None = None  # another's, never removed here
        self._threading: BaseInstrumentor | None = None  # switched on here, off in uninstrument
        self._pending = False  # waiting for the end of opentelemetry-instrument's loading
        # (owner, name, what the owner itself held before, our wrapper), in wrapping order.
        self._wrapped: list[tuple[Any, str, Any, Any]] = []
        self._entrypoints_active = False
        self._generation = 0
        self._tracer_provider: Any = None
        self._pid = os.getpid()
        self._exit_hook = False
        self._metrics: _metrics.WorkflowMetrics | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def logging_handler(self) -> logging.Handler | None:
        """The handler feeding Python ``logging`` into the logs pipeline while instrumented:
        the instrumentor's own, or the bridge that was on the root logger already (the logging
        instrumentation's). For frameworks that replace the root logger's handlers (Celery's
        worker does) and must put it back."""
        return self._logging_handler or self._bridge_in_use

    def instrument(self, **kwargs: Any) -> Any:
        """``BaseInstrumentor.instrument()``, which never raises into the application: a step
        that fails is logged and the others still run."""
        try:
            return super().instrument(**kwargs)
        except Exception:
            _log.exception("when-coordinator could not instrument this process")
            return None

    # ------------------------------------------------------------------ instrument

    def _instrument(self, **kwargs: Any) -> None:
        global _active  # noqa: PLW0603 - the accessor's answer
        _active = self
        config = kwargs.get("config")
        if config is None:
            try:
                config = Config.from_env()
            except ConfigError as exc:
                _log.error("when-coordinator disabled: %s", exc)
                config = Config()
        if config.logs_enabled and self._last_resort is None:
            # Before the coordinator exists: its first "cannot connect" must reach stderr.
            self._last_resort = LastResortKeeper()
            logging.getLogger().addHandler(self._last_resort)
            # A root handler would make the application's logging.basicConfig() a no-op.
            self._wrap(logging, "basicConfig", self._basic_config)
        coordinator = kwargs.get("coordinator")
        self._owns_coordinator = coordinator is None
        if coordinator is None:
            coordinator = Coordinator(config)
            coordinator.connect()
        self._coordinator = coordinator
        self._pid = os.getpid()
        meter_provider = kwargs.get("meter_provider")
        before = _metrics.recorder
        if meter_provider is not None:
            _metrics.enable_metrics(meter_provider)
        else:
            _metrics.enable_from_global()
        # What instrument() switched on, uninstrument() switches off; not the application's.
        self._metrics = _metrics.recorder if _metrics.recorder is not before else None
        self._previous_default = set_coordinator(coordinator)
        self._bound_exporters = bind_unbound_exporters(coordinator)

        tracer_provider = kwargs.get("tracer_provider")
        target = None
        try:
            tracer_provider, target = _tracer_provider(tracer_provider)
            if target is not None:
                self._span_processor = _attach_span_processor(target, coordinator)
        except Exception:
            _log.debug("attaching to %r failed", tracer_provider, exc_info=True)
        if self._span_processor is None:
            _log.warning(
                "when-coordinator cannot attach its span processor to the tracer provider %s: "
                "workflow() and WHEN_WORKFLOW_ENTRYPOINTS workflows still reach the hub with "
                "their phases, progress and logs, but spans of other tracers neither become "
                "workflows nor their actions",
                type(tracer_provider).__name__,
            )
        self._tracer_provider = tracer_provider

        if config.logs_enabled:
            self._attach_logs(kwargs.get("logger_provider"), coordinator)

        if not self._exit_hook:
            # Registered after the providers exist, so it runs before their own exit handlers
            # and before the coordinator closes: what they still hold reaches the hub.
            atexit.register(self._flush_at_exit)
            self._exit_hook = True
        self._wrap(concurrent.futures.ProcessPoolExecutor, "submit", _process_pool_submit)
        if _auto_instrumenting:
            self._pending = True  # completed by _after_auto_instrumentation
        else:
            self._complete()
        self._entrypoints_active = True
        self._generation += 1
        entrypoints: dict[tuple[str, str], None] = {}
        for spec in config.workflow_entrypoints:
            try:
                entrypoints[parse_entrypoint(spec)] = None
            except ValueError as exc:
                _log.error("%s", exc)
        for module_name, qualname in entrypoints:  # each once, even if named twice
            self._patch_entrypoint(module_name, qualname)

    def _complete(self) -> None:
        """What waits, under ``opentelemetry-instrument``, until every instrumentor has run:
        the logging handler and the threading instrumentation, each only where missing."""
        self._pending = False
        if self._bridge_provider is not None:
            provider, self._bridge_provider = self._bridge_provider, None
            try:
                self._logging_handler = attach_logging_handler(provider)
            except Exception:
                _log.warning("when-coordinator cannot attach its logging handler", exc_info=True)
            if self._logging_handler is None:  # the one already there feeds the pipeline
                self._bridge_in_use = next(
                    (h for h in logging.getLogger().handlers if isinstance(h, BRIDGE_HANDLERS)),
                    None,
                )
        try:
            self._threading = _enable_threading()
        except Exception:
            _log.warning(
                "when-coordinator cannot switch threading instrumentation on", exc_info=True
            )
        # Over the threading instrumentation's wrapper, so that each comes off cleanly: its
        # unwrap() reads the attribute through the class, which would keep ours inside.
        self._wrap(threading.Thread, "start", _thread_start)

    def _attach_logs(self, logger_provider: Any, coordinator: Coordinator) -> None:
        """The exporter (unless the SDK configuration already has it) on the installed logger
        provider, and the logging handler later (``_complete``); or, where there is no provider
        to attach to, a ``CoordinatorLogHandler`` sending Python log records to the hub
        directly."""
        target = None
        try:
            logger_provider, target = _logger_provider(logger_provider)
            if target is not None and "when" not in _env_list("OTEL_LOGS_EXPORTER"):
                self._log_exporter, self._log_processor = _attach_log_exporter(target, coordinator)
            if target is not None:
                self._bridge_provider = logger_provider
                return
        except Exception:
            _log.debug("attaching to %r failed", logger_provider, exc_info=True)
            if self._log_exporter is not None:
                return  # the exporter is on: only the bridge handler failed
        _log.warning(
            "when-coordinator cannot attach its log exporter to the logger provider %s: "
            "Python logging records still reach the hub (through a logging handler of its "
            "own), records emitted through the OpenTelemetry logs API do not",
            type(logger_provider).__name__,
        )
        handler = CoordinatorRootHandler(coordinator)
        handler.addFilter(SkipOwnRecords())
        logging.getLogger().addHandler(handler)
        self._logging_handler = handler

    def _flush_at_exit(self) -> None:
        """Deliver what went through our own pipeline, within the coordinator's exit budget.

        Only our processor is flushed, not the providers: their ``force_flush`` waits on every
        exporter of the application and ignores its timeout, and an OTLP exporter with no
        Collector listening retries each batch for seconds. Our processor only feeds our
        exporter, which hands records to the outbox without blocking; the other exporters are
        left to the SDK's own exit handler. Exporters the SDK configuration made
        (``OTEL_LOGS_EXPORTER=when``) are bound to the coordinator, which stays open for
        their final export in that handler.
        """
        coordinator = self._coordinator
        if coordinator is None:
            return
        with coordinator.exit_wait() as budget:
            deadline = time.monotonic() + budget
            processor = self._log_processor
            if processor is not None:
                try:
                    processor.force_flush(int(budget * 1000))
                except Exception:
                    _log.debug("flushing %r at exit failed", processor, exc_info=True)
            try:
                if coordinator.config.enabled:
                    coordinator.flush(max(deadline - time.monotonic(), 0.0))
            except Exception:
                _log.debug("flushing the coordinator at exit failed", exc_info=True)

    def report_from_forked_worker(self) -> None:
        """In a process-pool worker forked from an instrumented process: report on a fresh
        connection, as another instance of the service.

        After fork the inherited coordinator stays quiet (its connection is the parent's), so a
        workflow started by carried work would never reach the hub. Work carried into a pool
        worker is workflow work: the worker gets its own coordinator, the processor and
        exporter are pointed at it, and what it holds is delivered when the worker exits
        (multiprocessing ends forked workers with ``os._exit``, which skips ``atexit``).
        """
        inherited = self._coordinator
        parent_pid, pid = self._pid, os.getpid()
        if inherited is None or parent_pid == pid or not self._entrypoints_active:
            return
        self._pid = pid
        config = inherited.config
        if config.instance_id == f"{socket.gethostname()}-{parent_pid}":  # the default one
            config = config.with_changes(instance_id=f"{socket.gethostname()}-{pid}")
        coordinator = Coordinator(config)
        coordinator.connect()
        self._coordinator = coordinator
        self._owns_coordinator = True
        set_coordinator(coordinator)
        self.use(coordinator)
        multiprocessing.util.Finalize(None, self._close_in_worker, exitpriority=100)

    def use(self, coordinator: Coordinator) -> None:
        """Send what the attached span processor and log exporters see through
        ``coordinator`` from now on (a forked worker's own connection, or a pool process's
        relay)."""
        if self._span_processor is not None:
            self._span_processor.use(coordinator)
        for exporter in (self._log_exporter, *self._bound_exporters):
            if exporter is not None:
                exporter.use(coordinator)

    def _close_in_worker(self) -> None:
        coordinator = self._coordinator
        if coordinator is None or self._pid != os.getpid():
            return
        if self._bound_exporters:
            # Forked workers end with os._exit: the SDK's exit handler, which would run the
            # final export through them, never runs. Only the provider can flush its
            # processor; it runs every exporter, so it gets a thread and a deadline.
            with coordinator.exit_wait() as budget:
                _flush_within(get_logger_provider(), budget)
        self._flush_at_exit()
        with coordinator.exit_wait() as budget:
            coordinator.close(budget)

    def _basic_config(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """Run ``logging.basicConfig`` as if our handlers were not on the root logger yet."""
        root = logging.getLogger()
        ours = [h for h in (self._logging_handler, self._last_resort) if h in root.handlers]
        for handler in ours:
            root.removeHandler(handler)
        try:
            return wrapped(*args, **kwargs)
        finally:
            for handler in ours:
                root.addHandler(handler)

    def _patch_entrypoint(self, module_name: str, qualname: str) -> None:
        generation = self._generation

        def apply(module: ModuleType) -> None:
            if not self._entrypoints_active or generation != self._generation:
                # Uninstrumented before the module was imported; if instrumented again
                # meanwhile, that run registered its own hook: wrap once, not twice.
                return
            owner: Any = module
            *path, name = qualname.split(".")
            try:
                for part in path:
                    owner = getattr(owner, part)
                getattr(owner, name)
            except AttributeError:
                _log.error("workflow entry point %s:%s not found", module_name, qualname)
                return
            self._wrap(owner, name, _entrypoint_wrapper(qualname, self._tracer_provider))

        module = sys.modules.get(module_name)
        if module is not None:
            apply(module)
        else:
            wrapt.register_post_import_hook(apply, module_name)

    def _wrap(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        held = vars(owner).get(name, _ABSENT)
        proxy = wrapt.wrap_function_wrapper(owner, name, wrapper)
        self._wrapped.append((owner, name, held, proxy))

    # ------------------------------------------------------------------ uninstrument

    def _uninstrument(self, **kwargs: Any) -> None:
        global _active  # noqa: PLW0603
        self._entrypoints_active = False
        self._pending = False
        self._bridge_provider = None
        self._bridge_in_use = None
        while self._wrapped:
            owner, name, held, proxy = self._wrapped.pop()
            if vars(owner).get(name) is not proxy:
                # Someone wrapped it again over ours: taking a layer off would remove theirs.
                _log.debug("%r.%s was wrapped again since; left as it is", owner, name)
            elif held is _ABSENT:
                delattr(owner, name)  # it was inherited: inherit it again
            else:
                # What the owner held, exactly: unwrap() would store the attribute as read
                # through the class, a staticmethod as a plain function (which would then
                # receive the instance) and a classmethod as a bound method.
                setattr(owner, name, held)
        # Switched on before our Thread.start wrapper, so switched off after it: its
        # unwrap() would otherwise keep ours inside.
        switched_on, self._threading = self._threading, None
        if switched_on is not None and switched_on.is_instrumented_by_opentelemetry:
            switched_on.uninstrument()
        if self._logging_handler is not None:
            logging.getLogger().removeHandler(self._logging_handler)
            self._logging_handler = None
        if self._last_resort is not None:
            logging.getLogger().removeHandler(self._last_resort)
            self._last_resort = None
        if self._span_processor is not None:
            self._span_processor.enabled = False
            self._span_processor = None
        if self._log_exporter is not None:
            self._log_exporter.enabled = False
            self._log_exporter = None
        self._log_processor = None
        for exporter in self._bound_exporters:
            exporter.unbind()
        self._bound_exporters = []
        self._tracer_provider = None
        if self._metrics is not None and _metrics.recorder is self._metrics:
            _metrics.disable_metrics()  # switched on here and still in use: off again
        self._metrics = None
        set_coordinator(self._previous_default)
        self._previous_default = None
        coordinator, self._coordinator = self._coordinator, None
        if coordinator is not None and self._owns_coordinator:
            coordinator.close()
        if _active is self:
            _active = None


# ---------------------------------------------------------------------- providers


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _attachable(provider: Any, method: str) -> Any:
    """``provider``, or the provider it wraps, that has ``method``; None if neither has.

    Proxies that wrap an SDK provider (logfire's keep it in ``provider``) are looked through,
    a few levels deep at most.
    """
    for _ in range(4):
        if provider is None:
            return None
        if callable(getattr(provider, method, None)):
            return provider
        provider = getattr(provider, "provider", None)
    return None


def _tracer_provider(given: Any) -> tuple[Any, Any]:
    """(the tracer provider in use, the one to add the span processor to, or None).

    The global one unless given; an SDK provider is installed only where nothing is yet (the
    API's proxy): replacing someone's provider is not allowed, and would not be ours to do.
    """
    provider = given if given is not None else trace.get_tracer_provider()
    target = _attachable(provider, "add_span_processor")
    if target is None and given is None and isinstance(provider, trace.ProxyTracerProvider):
        provider = target = TracerProvider(resource=Resource.create())
        trace.set_tracer_provider(provider)
    return provider, target


def _logger_provider(given: Any) -> tuple[Any, Any]:
    """(the logger provider in use, the one to add the log processor to, or None); as
    ``_tracer_provider``."""
    provider = given if given is not None else get_logger_provider()
    target = _attachable(provider, "add_log_record_processor")
    if target is None and given is None and isinstance(provider, ApiProxyLoggerProvider):
        provider = target = LoggerProvider(resource=Resource.create())
        set_logger_provider(provider)
    return provider, target


def _attach_span_processor(provider: Any, coordinator: Coordinator) -> CoordinationSpanProcessor:
    processor = _span_processors.get(provider)
    if processor is None:
        processor = CoordinationSpanProcessor(coordinator)
        provider.add_span_processor(processor)
        _span_processors.set(provider, processor)
    processor.use(coordinator)
    return processor


def _attach_log_exporter(provider: Any, coordinator: Coordinator) -> tuple[Any, Any]:
    """(our exporter, the batch processor that feeds it) on ``provider``."""
    attached = _log_exporters.get(provider)
    if attached is None:
        exporter = CoordinationLogExporter(coordinator)
        attached = (exporter, BatchLogRecordProcessor(exporter))
        provider.add_log_record_processor(attached[1])
        _log_exporters.set(provider, attached)
    attached[0].use(coordinator)
    return attached


def _flush_within(provider: Any, timeout: float) -> None:
    """``provider.force_flush()`` on a daemon thread, waited for ``timeout`` seconds at most:
    the SDK's flush ignores its timeout and waits on every exporter of the provider."""

    def run() -> None:
        try:
            provider.force_flush(int(timeout * 1000))
        except Exception:
            _log.debug("flushing %r failed", provider, exc_info=True)

    thread = threading.Thread(target=run, name="when-flush", daemon=True)
    thread.start()
    thread.join(timeout)


def _enable_threading() -> BaseInstrumentor | None:
    """Switch ``opentelemetry-instrumentation-threading`` on; the instrumentor when this call
    did, None when it was on already, is disabled, or is not installed."""
    disabled = _env_list(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)
    if "threading" in disabled or "*" in disabled:
        return None
    try:
        from opentelemetry.instrumentation.threading import (  # noqa: PLC0415 - optional
            ThreadingInstrumentor,
        )
    except ImportError:
        _log.debug("opentelemetry-instrumentation-threading is not installed")
        return None
    instrumentor: BaseInstrumentor = ThreadingInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        return None
    instrumentor.instrument()
    return instrumentor


# ---------------------------------------------------------------------- wrappers


def _overrides_run(cls: type[threading.Thread]) -> bool:
    """Whether ``cls`` has a ``run`` of its own, which the threading instrumentation (it wraps
    ``Thread.run`` and ``Timer.run``) never sees."""
    for klass in cls.__mro__:
        if klass is threading.Thread or klass is threading.Timer:
            return False
        if "run" in vars(klass):
            return True
    return False


def _thread_start(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """A thread whose class overrides ``run`` runs it in the context that started it."""
    if isinstance(instance, threading.Thread) and _overrides_run(type(instance)):
        context = otel_context.get_current()
        run = instance.run

        def run_in_context() -> Any:
            token = otel_context.attach(context)
            try:
                return run()
            finally:
                otel_context.detach(token)
                if vars(instance).get("run") is run_in_context:
                    del vars(instance)["run"]

        # An instance attribute: Thread's bootstrap calls self.run(), the class is untouched.
        vars(instance)["run"] = run_in_context
    return wrapped(*args, **kwargs)


class _PoolCall(CarriedCall):
    """What the process-pool patch submits: a ``CarriedCall`` that first gives a forked worker
    its own connection to the hub (``WhenInstrumentor.report_from_forked_worker``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instrumentor = active_instrumentor()
        if instrumentor is not None:
            try:
                instrumentor.report_from_forked_worker()
            except Exception:
                _log.warning("cannot report from this process-pool worker", exc_info=True)
        return super().__call__(*args, **kwargs)


def _process_pool_submit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if args:
        args = (_PoolCall(args[0], carrier()), *args[1:])
    return wrapped(*args, **kwargs)


def _entrypoint_wrapper(name: str, tracer_provider: Any) -> Callable[..., Any]:
    """Each call a workflow, traced by the provider ``instrument()`` used (or was given)."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return workflow(name, tracer_provider=tracer_provider)(wrapped)(*args, **kwargs)

    return wrapper
