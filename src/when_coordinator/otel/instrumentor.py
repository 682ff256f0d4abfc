"""``WhenInstrumentor``: coordinate an unmodified service under ``opentelemetry-instrument``.

Registered under the ``opentelemetry_instrumentor`` entry point as ``when``, it runs after the
distro and configurator have built the SDK providers, and only adds to them:

- the ``CoordinationSpanProcessor`` on the tracer provider, and the ``CoordinationLogExporter``
  (behind a ``BatchLogRecordProcessor``) on the logger provider, unless ``OTEL_LOGS_EXPORTER``
  already names ``when``; where only the API's proxy providers exist it installs SDK ones;
- a ``logging`` handler feeding Python log records into that logs pipeline (off with
  ``WHEN_LOGS_ENABLED=false``), unless one is already there;
- the package's metrics (``otel/metrics.py``) through the meter provider: the
  ``meter_provider`` keyword, else the global one (off with ``OTEL_METRICS_EXPORTER=none``);
- workflow context carried into threads, thread pools and process pools;
- a workflow around every call of the functions named in ``WHEN_WORKFLOW_ENTRYPOINTS``
  (``module:function`` or ``module:Class.method``), also for modules imported later.

It takes neither the configurator nor the distro slot, attaches nothing twice, and
``uninstrument()`` undoes what it did. SDK span and log processors cannot be removed from a
provider, so those are switched off instead (and switched on again by a new ``instrument()``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextvars
import logging
import multiprocessing.util
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

import wrapt
from opentelemetry import _logs, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from ..client import Config, ConfigError, Coordinator
from . import metrics as _metrics
from ._sdk_logs import BatchLogRecordProcessor, LoggerProvider, LoggingHandler
from .log_exporter import CoordinationLogExporter
from .propagation import CarriedCall, carrier, run_in_copied_context
from .span_processor import CoordinationSpanProcessor
from .tracking import set_coordinator
from .workflow import workflow

__all__ = ["WhenInstrumentor", "parse_entrypoint"]

_log = logging.getLogger(__name__)

# One processor / exporter per provider, re-enabled rather than attached again.
_span_processors: weakref.WeakKeyDictionary[Any, CoordinationSpanProcessor] = (
    weakref.WeakKeyDictionary()
)
_log_exporters: weakref.WeakKeyDictionary[Any, CoordinationLogExporter] = (
    weakref.WeakKeyDictionary()
)

_ABSENT = object()

_THREAD_PATCHES = (
    (threading.Thread, "start"),
    (threading.Thread, "run"),
    (concurrent.futures.ThreadPoolExecutor, "submit"),
    (concurrent.futures.ProcessPoolExecutor, "submit"),
)


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


class _SkipOwnRecords(logging.Filter):
    """Keep the package's own records, and anything its client thread logs, out of the hub."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("when_coordinator") or record.threadName == "when-coordinator"
        )


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
        self._logging_handler: logging.Handler | None = None
        # (owner, name, what the owner itself held before, our wrapper), in wrapping order.
        self._wrapped: list[tuple[Any, str, Any, Any]] = []
        self._entrypoints_active = False
        self._generation = 0
        self._tracer_provider: Any = None
        self._pid = os.getpid()
        self._providers: list[Any] = []
        self._exit_hook = False
        self._metrics: _metrics.WorkflowMetrics | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    # ------------------------------------------------------------------ instrument

    def _instrument(self, **kwargs: Any) -> None:
        config = kwargs.get("config")
        if config is None:
            try:
                config = Config.from_env()
            except ConfigError as exc:
                _log.error("when-coordinator disabled: %s", exc)
                config = Config()
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

        tracer_provider = kwargs.get("tracer_provider") or _sdk_tracer_provider()
        self._span_processor = _attach_span_processor(tracer_provider, coordinator)
        self._tracer_provider = tracer_provider
        self._providers = [tracer_provider]

        if config.logs_enabled:
            logger_provider = kwargs.get("logger_provider") or _sdk_logger_provider()
            self._providers.append(logger_provider)
            if "when" not in _env_list("OTEL_LOGS_EXPORTER"):
                self._log_exporter = _attach_log_exporter(logger_provider, coordinator)
            self._logging_handler = _attach_logging_handler(logger_provider)
            if self._logging_handler is not None:
                # A root handler would make the application's logging.basicConfig() a no-op.
                self._wrap(logging, "basicConfig", self._basic_config)

        if not self._exit_hook:
            # Registered after the providers exist, so it runs before their own exit handlers
            # and before the coordinator closes: what they still hold reaches the hub.
            atexit.register(self._flush_at_exit)
            self._exit_hook = True
        self._patch_threads()
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

    def _flush_at_exit(self) -> None:
        coordinator = self._coordinator
        if coordinator is None:
            return
        timeout_ms = int(coordinator.config.close_timeout * 1000)
        for provider in self._providers:
            try:
                provider.force_flush(timeout_ms)
            except Exception:
                _log.debug("flushing %r at exit failed", provider, exc_info=True)

    def _report_from_forked_worker(self) -> None:
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
        if self._span_processor is not None:
            self._span_processor.use(coordinator)
        if self._log_exporter is not None:
            self._log_exporter.use(coordinator)
        multiprocessing.util.Finalize(None, self._close_in_worker, exitpriority=100)

    def _close_in_worker(self) -> None:
        coordinator = self._coordinator
        if coordinator is None or self._pid != os.getpid():
            return
        self._flush_at_exit()
        coordinator.close()

    def _basic_config(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """Run ``logging.basicConfig`` as if our handler were not on the root logger yet."""
        handler = self._logging_handler
        root = logging.getLogger()
        if handler is None or handler not in root.handlers:
            return wrapped(*args, **kwargs)
        root.removeHandler(handler)
        try:
            return wrapped(*args, **kwargs)
        finally:
            root.addHandler(handler)

    def _patch_threads(self) -> None:
        wrappers: dict[str, Callable[..., Any]] = {
            "start": _thread_start,
            "run": _thread_run,
        }
        for owner, name in _THREAD_PATCHES:
            if owner is concurrent.futures.ThreadPoolExecutor:
                wrapper = _thread_pool_submit
            elif owner is concurrent.futures.ProcessPoolExecutor:
                wrapper = _process_pool_submit
            else:
                wrapper = wrappers[name]
            self._wrap(owner, name, wrapper)

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
        self._entrypoints_active = False
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
        if self._logging_handler is not None:
            logging.getLogger().removeHandler(self._logging_handler)
            self._logging_handler = None
        if self._span_processor is not None:
            self._span_processor.enabled = False
            self._span_processor = None
        if self._log_exporter is not None:
            self._log_exporter.enabled = False
            self._log_exporter = None
        self._providers = []
        self._tracer_provider = None
        if self._metrics is not None and _metrics.recorder is self._metrics:
            _metrics.disable_metrics()  # switched on here and still in use: off again
        self._metrics = None
        set_coordinator(self._previous_default)
        self._previous_default = None
        coordinator, self._coordinator = self._coordinator, None
        if coordinator is not None and self._owns_coordinator:
            coordinator.close()


# ---------------------------------------------------------------------- providers


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _sdk_tracer_provider() -> Any:
    """The global SDK tracer provider, installing one where only the API's proxy exists."""
    provider = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        provider = TracerProvider(resource=Resource.create())
        trace.set_tracer_provider(provider)
    return provider


def _sdk_logger_provider() -> Any:
    provider = _logs.get_logger_provider()
    if not hasattr(provider, "add_log_record_processor"):
        provider = LoggerProvider(resource=Resource.create())
        _logs.set_logger_provider(provider)
    return provider


def _attach_span_processor(provider: Any, coordinator: Coordinator) -> CoordinationSpanProcessor:
    processor = _span_processors.get(provider)
    if processor is None:
        processor = CoordinationSpanProcessor(coordinator)
        provider.add_span_processor(processor)
        _span_processors[provider] = processor
    processor.use(coordinator)
    return processor


def _attach_log_exporter(provider: Any, coordinator: Coordinator) -> CoordinationLogExporter:
    exporter = _log_exporters.get(provider)
    if exporter is None:
        exporter = CoordinationLogExporter(coordinator)
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        _log_exporters[provider] = exporter
    exporter.use(coordinator)
    return exporter


def _bridge_handler_types() -> tuple[type[logging.Handler], ...]:
    """The handler classes that feed ``logging`` into an OpenTelemetry logs pipeline: the SDK's
    (deprecated since SDK 1.40) and ``opentelemetry-instrumentation-logging``'s, if installed."""
    types: list[type[logging.Handler]] = [LoggingHandler]
    try:
        from opentelemetry.instrumentation.logging.handler import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
            LoggingHandler as ContribLoggingHandler,
        )
    except ImportError:
        pass
    else:
        types.append(ContribLoggingHandler)
    return tuple(types)


class _WhenLoggingHandler(LoggingHandler):
    """The handler the instrumentor adds, which steps aside while another bridge handler
    feeding the same provider is on the root logger.

    The logging instrumentation of ``opentelemetry-instrumentation-logging`` adds its own
    handler to the root logger whenever it runs, before or after this instrumentor (the order
    of instrumentors is not defined): each record must still enter the pipeline once.
    """

    _bridges: tuple[type[logging.Handler], ...] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        bridges = _WhenLoggingHandler._bridges
        if bridges is None:
            bridges = _WhenLoggingHandler._bridges = _bridge_handler_types()
        for handler in logging.getLogger().handlers:
            if (
                handler is not self
                and isinstance(handler, bridges)
                and getattr(handler, "_logger_provider", None) is self._logger_provider
            ):
                return
        super().emit(record)


def _attach_logging_handler(provider: Any) -> logging.Handler | None:
    root = logging.getLogger()
    bridges = _bridge_handler_types()
    if any(isinstance(handler, bridges) for handler in root.handlers):
        return None  # the distro's logging integration already feeds the logs pipeline
    handler = _WhenLoggingHandler(level=logging.NOTSET, logger_provider=provider)
    handler.addFilter(_SkipOwnRecords())
    root.addHandler(handler)
    return handler


# ---------------------------------------------------------------------- wrappers


def _thread_start(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    instance._when_context = contextvars.copy_context()
    return wrapped(*args, **kwargs)


def _thread_run(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    context = getattr(instance, "_when_context", None)
    if context is None:
        return wrapped(*args, **kwargs)
    return context.run(wrapped, *args, **kwargs)


def _thread_pool_submit(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if args:
        args = (run_in_copied_context(args[0]), *args[1:])
    return wrapped(*args, **kwargs)


class _PoolCall(CarriedCall):
    """What the process-pool patch submits: a ``CarriedCall`` that first gives a forked worker
    its own connection to the hub (``WhenInstrumentor._report_from_forked_worker``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        instrumentor = WhenInstrumentor._instance
        if isinstance(instrumentor, WhenInstrumentor):
            try:
                instrumentor._report_from_forked_worker()
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
