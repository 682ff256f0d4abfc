"""The hub's ``GET /metrics``: Prometheus text that ``prometheus_client``'s own parser reads,
with the figures of a real run (a service, workflows, commands, a SQLite store), behind the
operator token unless ``metrics_public`` (``--metrics-public``) is given."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from tests.support.metrics import families, scrape
from when_coordinator import Config, Coordinator, workflow
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.hub.metrics import FAMILIES

TOKEN = "metrics-secret"
TIMEOUT = 10.0


def fetch_json(hub: ThreadedHub, path: str) -> Any:
    request = urllib.request.Request(f"{hub.http_url}{path}")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read())


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[ThreadedHub]:
    with ThreadedHub(Hub(port=0, token=TOKEN, db=tmp_path / "hub.db")) as running:
        yield running


@pytest.fixture
def coordinator(hub: ThreadedHub) -> Iterator[Coordinator]:
    client = Coordinator(Config(when_url=hub.url, service_name="metered", auth_token=TOKEN))
    client.connect()
    assert client.wait_registered(TIMEOUT)
    yield client
    client.close()


def test_metrics_are_prometheus_text_with_the_hub_figures(
    hub: ThreadedHub, coordinator: Coordinator
) -> None:
    provider = TracerProvider()
    with workflow("done", coordinator=coordinator, tracer_provider=provider):
        pass
    with workflow("running", coordinator=coordinator, tracer_provider=provider) as running:
        hub.wait_for(
            lambda h: (
                h.workflows.get(running.id) is not None
                and h.workflows[running.id].phase.value == "execution"
            ),
            TIMEOUT,
        )
        answer = hub.status(running.id)
        assert answer.phase.value == "execution"
        hub.pause(running.id, "metrics")
        hub.wait_for(lambda h: h.workflows[running.id].phase.value == "pausing", TIMEOUT)
        hub.flush()
        content_type, text = scrape(hub, TOKEN)
        shown = fetch_json(hub, "/v1/metrics")
    provider.shutdown()

    assert content_type.startswith("text/plain; version=0.0.4")
    samples = families(text)
    assert samples["when_hub_services"][(("state", "connected"),)] == 1
    workflows = samples["when_hub_workflows"]
    assert workflows[(("phase", "completed"),)] == 1
    assert workflows[(("phase", "pausing"),)] == 1
    assert workflows[(("phase", "failed"),)] == 0
    applied = samples["when_hub_messages_applied_total"]
    assert applied[(("type", "register"),)] == 1
    assert applied[(("type", "workflow_created"),)] == 2
    assert applied[(("type", "phase_changed"),)] >= 5 + 3 + 1
    assert samples["when_hub_anomalies_total"][()] == 0
    assert set(samples["when_hub_evictions_total"]) == {
        (("kind", kind),) for kind in ("workflow", "log", "workflow_log")
    }
    assert samples["when_hub_store_lag_seconds"][()] == 0  # flushed just before
    assert samples["when_hub_store_errors_total"][()] == 0
    counts = samples["when_hub_command_duration_seconds_count"]
    assert counts[(("command", "status"), ("outcome", "ok"))] == 1
    assert counts[(("command", "pause"), ("outcome", "ok"))] == 1
    buckets = samples["when_hub_command_duration_seconds_bucket"]
    assert buckets[(("command", "status"), ("le", "+Inf"), ("outcome", "ok"))] == 1
    parsed = {family.name for family in text_string_to_metric_families(text)}
    assert parsed == {name.removesuffix("_total") for name in FAMILIES}

    # The operator API's JSON view (what the dashboard reads) holds the same figures.
    assert shown["services"] == {"connected": 1, "disconnected": 0}
    for phase, count in shown["workflows"].items():
        assert workflows[(("phase", phase),)] == count
    for kind, count in shown["messages_applied"].items():
        assert applied[(("type", kind),)] == count
    assert shown["store"]["errors"] == 0
    assert 0 <= shown["store"]["lag_seconds"] < TIMEOUT
    status = shown["commands"]["status"]["ok"]
    assert status["count"] == 1
    assert 0 < status["p50_seconds"] <= status["p99_seconds"]


def test_metrics_need_the_token(hub: ThreadedHub) -> None:
    for token in (None, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(hub, token)
        assert refused.value.code == 401
        refused.value.close()
    assert scrape(hub, TOKEN)[1].startswith("# HELP")


def test_metrics_public_serves_without_the_token() -> None:
    with ThreadedHub(Hub(port=0, token=TOKEN, metrics_public=True)) as hub:
        _, text = scrape(hub, None)
        samples = families(text)
        assert samples["when_hub_services"][(("state", "connected"),)] == 0
        assert "when_hub_store_lag_seconds" not in samples  # no store, no store figures
        with pytest.raises(urllib.error.HTTPError) as refused:  # the rest stays protected
            urllib.request.urlopen(f"{hub.http_url}/v1/workflows", timeout=TIMEOUT)
        assert refused.value.code == 401
        refused.value.close()


def test_only_get_is_allowed(hub: ThreadedHub) -> None:
    request = urllib.request.Request(f"{hub.http_url}/metrics", method="POST", data=b"")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=TIMEOUT)
    assert refused.value.code == 405
    refused.value.close()


def test_the_command_line_flag(tmp_path: Any) -> None:
    command = [sys.executable, "-m", "when_coordinator.cli"]
    process = subprocess.Popen(
        [*command, "hub", "--port", "0", "--token", TOKEN, "--metrics-public"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert found is not None, line
        url = f"http://127.0.0.1:{found.group(1)}/metrics"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
