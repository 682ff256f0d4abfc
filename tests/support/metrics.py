"""The hub's ``/metrics`` as a scraper sees it (the hub's tests and the dashboard's Hub view)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from when_coordinator.hub import ThreadedHub

TIMEOUT = 10.0


def scrape(hub: ThreadedHub, token: str | None) -> tuple[str, str]:
    """(content type, body) of ``GET /metrics``, with ``token`` as the bearer when given."""
    request = urllib.request.Request(f"{hub.http_url}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return response.headers["Content-Type"], response.read().decode()


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name and sorted labels, as prometheus_client parses them."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found
