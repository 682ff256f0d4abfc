"""docs/telemetry.md lists every name the package emits, and nothing else: checked both ways
against the constants in ``otel/attributes.py`` and ``hub/metrics.FAMILIES``, and each metric's
kind and unit against the instruments the code really makes (read with the SDK)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Metric, Sum

from when_coordinator import Config, Coordinator
from when_coordinator.hub.metrics import FAMILIES
from when_coordinator.otel import attributes as attr
from when_coordinator.otel import metrics as when_metrics
from when_coordinator.phase_manager import PhaseState
from when_coordinator.protocol import Phase

PAGE = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"
HUB_SECTION = "## The hub's `/metrics`"
ROW = re.compile(r"^\| `([^`]+)` \|(.*)$")


def rows(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            yield match.group(1), [cell.strip() for cell in match.group(2).split("|")]


def sections() -> tuple[str, str]:
    text = PAGE.read_text(encoding="utf-8")
    otel, hub = text.split(HUB_SECTION)
    return otel, hub


def names_in_code() -> set[str]:
    return {getattr(attr, name) for name in attr.__all__}


def test_every_name_in_the_code_is_documented_and_nothing_else() -> None:
    documented = {name for name, _ in rows(sections()[0])}
    assert names_in_code() - documented == set(), "emitted but not in docs/telemetry.md"
    assert documented - names_in_code() == set(), "documented but not in otel/attributes.py"


def test_every_hub_family_is_documented_and_nothing_else() -> None:
    documented = {name: cells[0] for name, cells in rows(sections()[1])}
    exposed = {
        (f"{name}_total" if kind == "counter" else name): kind
        for name, (kind, _) in FAMILIES.items()
    }
    assert documented == exposed


@pytest.fixture
def collected() -> Iterator[dict[str, Metric]]:
    """Every instrument of the package, with one measurement each, read by the SDK."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    coordinator = Coordinator(Config(service_name="docs"))  # no hub: it never connects
    try:
        assert when_metrics.enable_metrics(provider)
        when_metrics.observe(coordinator)
        recorder = when_metrics.recorder
        assert recorder is not None
        recorder.transition(
            PhaseState("wf-docs", Phase.FAILED, Phase.EXECUTION, started_at=1.0, updated_at=2.0),
            "docs",
            "ValueError",
        )
        recorder.connected(coordinator)
        recorder.disconnected(coordinator)
        recorder.pong(coordinator, 0.001)
        data = reader.get_metrics_data()
        assert data is not None
        yield {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
    finally:
        when_metrics._reset()
        coordinator.close()
        provider.shutdown()


def _kind(metric: Metric) -> str:
    data = metric.data
    if isinstance(data, Histogram):
        return "histogram"
    assert isinstance(data, Sum), f"{metric.name}: unexpected {type(data).__name__}"
    return "counter" if data.is_monotonic else "up-down counter"


def test_metric_kinds_and_units_match_the_instruments(collected: dict[str, Metric]) -> None:
    metrics = {name for name in names_in_code() if name in collected}
    metric_constants = {getattr(attr, n) for n in attr.__all__ if n.startswith("METRIC_")}
    assert metrics == metric_constants, "every instrument measured once"
    for name, cells in rows(sections()[0]):
        if name not in metric_constants:
            continue
        kind, unit = cells[0], cells[1].strip("`")
        assert (kind, unit) == (_kind(collected[name]), collected[name].unit), name


def test_the_page_is_in_the_site_navigation() -> None:
    nav = (PAGE.parents[1] / "mkdocs.yml").read_text(encoding="utf-8")
    assert "telemetry.md" in nav
