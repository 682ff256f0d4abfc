"""A small OTLP/HTTP receiver for tests: what an OpenTelemetry Collector would receive.

``OtlpReceiver`` listens on ``127.0.0.1`` (a free port) on a thread, accepts ``POST /v1/traces``,
``/v1/logs`` and ``/v1/metrics`` with protobuf bodies (plain or ``Content-Encoding: gzip``),
decodes them with the ``opentelemetry-proto`` messages and answers 200 with the empty response
message, as a Collector does. Tests point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at ``url`` and read
back ``spans``, ``log_records`` and ``metrics``; ``wait_for`` blocks until a predicate over the
receiver holds.

Bodies that do not decode are answered 400 and kept in ``errors``, so a test sees them.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = [
    "OtlpReceiver",
    "ReceivedLog",
    "ReceivedMetric",
    "ReceivedRequest",
    "ReceivedSpan",
    "attributes",
]

_T = TypeVar("_T")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(items: Iterator[KeyValue] | Any) -> dict[str, Any]:
    """OTLP ``KeyValue`` list to a plain dict."""
    return {item.key: _value(item.value) for item in items}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as received, with its resource and scope."""

    span: Span
    resource: Mapping[str, Any]
    scope: str

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_span_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


@dataclass(frozen=True)
class ReceivedLog:
    """One log record as received, with its resource and scope."""

    record: LogRecord
    resource: Mapping[str, Any]
    scope: str

    @property
    def trace_id(self) -> str:
        return self.record.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.record.span_id.hex()

    @property
    def body(self) -> Any:
        return _value(self.record.body)

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.record.attributes)


@dataclass(frozen=True)
class ReceivedMetric:
    """One metric of one export, with its resource and scope."""

    metric: Metric
    resource: Mapping[str, Any]
    scope: str

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def unit(self) -> str:
        return self.metric.unit

    @property
    def kind(self) -> str:
        """``sum``, ``gauge``, ``histogram``...: the data the metric carries."""
        return self.metric.WhichOneof("data") or ""

    @property
    def points(self) -> list[Any]:
        data = getattr(self.metric, self.kind, None)
        return list(data.data_points) if data is not None else []


@dataclass(frozen=True)
class ReceivedRequest:
    """One export request: its path, ``Content-Encoding``, ``Content-Type``, and the
    ``service.name`` of each resource in it."""

    path: str
    encoding: str
    content_type: str
    services: frozenset[str] = frozenset()


_RESPONSES: dict[str, bytes] = {
    "/v1/traces": ExportTraceServiceResponse().SerializeToString(),
    "/v1/logs": ExportLogsServiceResponse().SerializeToString(),
    "/v1/metrics": ExportMetricsServiceResponse().SerializeToString(),
}


class OtlpReceiver:
    """OTLP/HTTP with protobuf bodies on ``127.0.0.1:<free port>``; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._logs: list[ReceivedLog] = []
        self._metrics: list[ReceivedMetric] = []
        self._requests: list[ReceivedRequest] = []
        self._errors: list[str] = []
        self._metric_requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self._read_body()
                status, reply = receiver._handle(
                    self.path.split("?", 1)[0],
                    self.headers.get("Content-Encoding", ""),
                    self.headers.get("Content-Type", ""),
                    body,
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads what was received, not an access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ reads

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    @property
    def log_records(self) -> list[ReceivedLog]:
        with self._lock:
            return list(self._logs)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        with self._lock:
            return list(self._metrics)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    @property
    def metric_requests(self) -> int:
        with self._lock:
            return self._metric_requests

    def clear(self) -> None:
        """Forget everything received so far (a module-scoped receiver, reused per test)."""
        with self._lock:
            self._spans.clear()
            self._logs.clear()
            self._metrics.clear()
            self._requests.clear()
            self._errors.clear()
            self._metric_requests = 0

    def wait_for(self, predicate: Callable[[OtlpReceiver], _T], timeout: float = 10.0) -> _T:
        """Block until ``predicate(self)`` is truthy, re-checked after every request.

        Raises ``TimeoutError`` naming what was received meanwhile.
        """
        with self._lock:
            result = self._lock.wait_for(lambda: predicate(self), timeout)
        if not result:
            raise TimeoutError(
                f"OTLP receiver: condition not met within {timeout:g} s "
                f"({len(self.spans)} spans, {len(self.log_records)} log records, "
                f"errors: {self.errors})"
            )
        return result

    # ------------------------------------------------------------------ decoding

    def _handle(
        self, path: str, encoding: str, content_type: str, body: bytes
    ) -> tuple[int, bytes]:
        reply = _RESPONSES.get(path)
        if reply is None:
            self._error(f"unexpected path {path!r}")
            return 404, b""
        try:
            if encoding.lower() == "gzip":
                body = gzip.decompress(body)
            elif encoding.lower() == "deflate":
                body = zlib.decompress(body)
            elif encoding:
                raise ValueError(f"unsupported Content-Encoding {encoding!r}")
            if "protobuf" not in content_type:
                raise ValueError(f"unsupported Content-Type {content_type!r}")
            spans, logs, services = self._decode(path, body)
        except (DecodeError, OSError, ValueError, zlib.error) as exc:
            self._error(f"{path}: {type(exc).__name__}: {exc}")
            return 400, b""
        with self._lock:
            self._requests.append(ReceivedRequest(path, encoding, content_type, services))
            self._spans.extend(spans)
            self._logs.extend(logs)
            if path == "/v1/metrics":
                self._metric_requests += 1
                self._metrics.extend(_metrics_of(body))
            self._lock.notify_all()
        return 200, reply

    @staticmethod
    def _decode(
        path: str, body: bytes
    ) -> tuple[list[ReceivedSpan], list[ReceivedLog], frozenset[str]]:
        spans: list[ReceivedSpan] = []
        logs: list[ReceivedLog] = []
        resources: list[Mapping[str, Any]] = []
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest()
            traces.ParseFromString(body)
            for resource_spans in traces.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                resources.append(resource)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(ReceivedSpan(span, resource, scope_spans.scope.name))
        elif path == "/v1/logs":
            request = ExportLogsServiceRequest()
            request.ParseFromString(body)
            for resource_logs in request.resource_logs:
                resource = attributes(resource_logs.resource.attributes)
                resources.append(resource)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        logs.append(ReceivedLog(record, resource, scope_logs.scope.name))
        else:
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            resources.extend(attributes(m.resource.attributes) for m in metrics.resource_metrics)
        services = frozenset(str(r.get("service.name", "")) for r in resources)
        return spans, logs, services

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)
            self._lock.notify_all()


def _metrics_of(body: bytes) -> list[ReceivedMetric]:
    """The metrics of an export request that ``_decode`` already accepted."""
    request = ExportMetricsServiceRequest()
    request.ParseFromString(body)
    return [
        ReceivedMetric(metric, attributes(resource_metrics.resource.attributes), scope.scope.name)
        for resource_metrics in request.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    ]
