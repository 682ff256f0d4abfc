"""``collector-config/otel-collector.yaml``: a Collector configuration that holds together,
alone and with the ``hub-metrics.yaml`` overlay merged over it (as ``--config a --config b``
does: maps merge, lists are replaced).

The Collector refuses to start when a pipeline names a component that is not defined; it
starts, but silently does nothing with it, when a defined component is not used. Both are
checked here, along with what the topologies in ``collector-config/README.md`` rely on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "collector-config"
CONFIG_PATH = CONFIG_DIR / "otel-collector.yaml"
HUB_OVERLAY = CONFIG_DIR / "hub-metrics.yaml"
KINDS = ("receivers", "processors", "exporters")
SIGNALS = ("traces", "logs", "metrics")


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path.name} must be a YAML mapping"
    return loaded


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """The Collector's merge of several ``--config`` files: maps recursively, the rest replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module", params=["alone", "with hub-metrics.yaml"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    loaded = _load(CONFIG_PATH)
    if request.param != "alone":
        loaded = _merge(loaded, _load(HUB_OVERLAY))
    return loaded


def test_the_metrics_pipeline_takes_the_services_otlp_metrics(config: dict[str, Any]) -> None:
    metrics = config["service"]["pipelines"]["metrics"]
    assert "otlp" in metrics["receivers"]
    assert "otlp" in metrics["exporters"]


def test_the_overlay_scrapes_the_hub_with_its_token() -> None:
    merged = _merge(_load(CONFIG_PATH), _load(HUB_OVERLAY))
    assert "prometheus/hub" in merged["service"]["pipelines"]["metrics"]["receivers"]
    (job,) = merged["receivers"]["prometheus/hub"]["config"]["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert "WHEN_AUTH_TOKEN" in job["authorization"]["credentials"]
    (targets,) = job["static_configs"]
    assert targets["targets"][0].endswith(":8080}")  # the hub's default port
    # The overlay keeps the other pipelines as they are.
    base = _load(CONFIG_PATH)
    for signal in ("traces", "logs"):
        assert merged["service"]["pipelines"][signal] == base["service"]["pipelines"][signal]


def _type(component_id: str) -> str:
    """``otlp/backend`` names an ``otlp`` component: the type is before the slash."""
    return component_id.split("/", 1)[0]


def test_defines_the_components_the_topologies_need(config: dict[str, Any]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert {"memory_limiter", "batch"} <= {_type(name) for name in config["processors"]}
    assert {"debug", "otlp"} <= {_type(name) for name in config["exporters"]}
    assert config["exporters"]["otlp"]["endpoint"], "the otlp exporter needs an endpoint"


def test_every_signal_has_a_pipeline(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    for signal in SIGNALS:
        assert any(_type(name) == signal for name in pipelines), f"no {signal} pipeline"
    for name in pipelines:
        assert _type(name) in SIGNALS, f"pipeline {name!r} is not traces, logs or metrics"


def test_pipelines_name_only_defined_components(config: dict[str, Any]) -> None:
    pipelines: dict[str, dict[str, list[str]]] = config["service"]["pipelines"]
    for name, pipeline in pipelines.items():
        assert pipeline.get("receivers"), f"pipeline {name!r} has no receivers"
        assert pipeline.get("exporters"), f"pipeline {name!r} has no exporters"
        for kind in KINDS:
            listed = pipeline.get(kind) or []
            assert len(listed) == len(set(listed)), f"{name}.{kind} lists a component twice"
            for component in listed:
                assert component in (config.get(kind) or {}), (
                    f"pipeline {name!r} uses {kind[:-1]} {component!r}, which is not defined"
                )
    for extension in config["service"].get("extensions") or []:
        assert extension in (config.get("extensions") or {}), f"extension {extension!r} undefined"


def test_every_defined_component_is_used(config: dict[str, Any]) -> None:
    pipelines: dict[str, dict[str, list[str]]] = config["service"]["pipelines"]
    for kind in KINDS:
        used = {
            component for pipeline in pipelines.values() for component in pipeline.get(kind) or []
        }
        for component in config.get(kind) or {}:
            assert component in used, f"{kind[:-1]} {component!r} is defined but never used"
    enabled = set(config["service"].get("extensions") or [])
    for extension in config.get("extensions") or {}:
        assert extension in enabled, f"extension {extension!r} is defined but not enabled"


def test_memory_limiter_first_and_batch_last(config: dict[str, Any]) -> None:
    """The Collector's own guidance: refuse early under memory pressure, batch just before
    exporting."""
    for name, pipeline in config["service"]["pipelines"].items():
        processors = [_type(p) for p in pipeline.get("processors") or []]
        assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert processors[-1] == "batch", f"{name}: batch must come last"


def test_readme_gives_the_environment_of_each_topology() -> None:
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for text in (
        "Service → Collector → backends",
        "Service → hub",
        "Both at once",
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        "OTEL_TRACES_EXPORTER=otlp",
        "OTEL_LOGS_EXPORTER=otlp",
        "OTEL_TRACES_EXPORTER=none",
        "WHEN_URL=ws://hub:8080/v1/coordination",
        "WHEN_WORKFLOW_ENTRYPOINTS=",
        "opentelemetry-instrument python app.py",
        "hub-metrics.yaml",
    ):
        assert text in readme, f"collector-config/README.md does not mention {text!r}"


def test_the_directory_holds_exactly_the_files_its_readme_describes() -> None:
    """No placeholder or stray file is left, and every configuration the README tells people to
    pass to the Collector is there and is one of those checked above."""
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    present = {path.name for path in CONFIG_DIR.iterdir()}
    named = set(re.findall(r"([\w-]+\.ya?ml)\b", readme))
    assert present == {"README.md", *named}
    assert named == {CONFIG_PATH.name, HUB_OVERLAY.name}
