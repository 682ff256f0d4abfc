"""Shared fixtures.

OpenTelemetry layer (``otel_*``): a real reference hub on loopback, a real ``Coordinator``
connected and registered to it, and a real SDK ``TracerProvider`` exporting to memory. Tests pass
``coordinator=`` and ``tracer_provider=`` explicitly, so nothing depends on process globals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.pgserver import PostgresServer, require_postgres
from tests.support.programs import pytest_sessionfinish  # noqa: F401 - the CI rule for skips
from tests.support.redis_server import RedisServer, redis_server_binary
from when_coordinator import Config, Coordinator, PhaseManager
from when_coordinator.hub import Hub, ThreadedHub

# Its asserts (shared by the integration modules) report their values like the tests' own.
pytest.register_assert_rewrite("tests.support.integrations")

OTEL_TIMEOUT = 10.0
"""Seconds any single wait in the OpenTelemetry tests may take before it counts as a failure."""


@pytest.fixture
def otel_hub() -> Iterator[ThreadedHub]:
    """A reference hub on a free loopback port, on its own thread."""
    with ThreadedHub(Hub(port=0)) as hub:
        yield hub


@pytest.fixture
def otel_connect(otel_hub: ThreadedHub) -> Iterator[Callable[..., Coordinator]]:
    """Make coordinators connected and registered to ``otel_hub`` (keywords are ``Config``
    fields, plus ``phases``); all are closed at teardown."""
    made: list[Coordinator] = []

    def connect(*, phases: PhaseManager | None = None, **overrides: object) -> Coordinator:
        settings: dict[str, object] = {
            "when_url": otel_hub.url,
            "service_name": "otel-tests",
            "reconnect_initial_delay": 0.05,
            "reconnect_max_delay": 0.5,
            "close_timeout": 5.0,
        }
        settings.update(overrides)
        coordinator = Coordinator(Config(**settings), phases=phases)  # type: ignore[arg-type]
        made.append(coordinator)
        coordinator.connect()
        assert coordinator.wait_registered(OTEL_TIMEOUT), "the coordinator did not register"
        return coordinator

    yield connect
    for coordinator in made:
        coordinator.close(timeout=5.0)


@pytest.fixture
def otel_coordinator(otel_connect: Callable[..., Coordinator]) -> Coordinator:
    """One coordinator connected and registered to ``otel_hub``."""
    return otel_connect()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A real SDK tracer provider exporting every ended span to ``span_exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (skips without the binaries; fails under CI)."""
    server = PostgresServer(require_postgres()).start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh database on ``postgres_server``."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real ``redis-server`` on a free loopback port for the whole session (started on first
    use); skipped where it is not installed, a failure under ``CI=true``."""
    with RedisServer(redis_server_binary()) as server:
        yield server.url


@pytest.fixture(scope="module")
def hub() -> Iterator[ThreadedHub]:
    """One plain reference hub for a whole module (the end-to-end integration modules start one
    worker per module against it, the instrumentor's process tests one service name per test);
    a layer or module that needs a fresh or another kind of hub overrides ``hub``."""
    with ThreadedHub(Hub(port=0)) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP receiver on loopback (standing in for a Collector) for a whole module."""
    with OtlpReceiver() as running:
        yield running
