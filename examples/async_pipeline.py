"""Async workflows: a pipeline that loads several sources in parallel, each a child workflow.

    python examples/async_pipeline.py

starts a hub of its own inside this process; set ``WHEN_URL`` to report to another hub.

``@workflow`` on a coroutine makes every call a workflow run. Called inside the pipeline's
``async with workflow(...)``, each run takes the pipeline as its parent and root, also when
the calls run concurrently under ``asyncio.gather``: the hub shows one tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from when_coordinator import AsyncWorkflow, Config, Coordinator, set_coordinator, workflow
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.otel import current_workflow

SOURCES = {"orders": 5, "customers": 3, "invoices": 4}
"""Source name -> batches to load."""


@workflow("load-source")
async def load_source(name: str, batches: int) -> int:
    """Load one source batch by batch; a child workflow of whoever calls it."""
    wf = current_workflow()
    assert isinstance(wf, AsyncWorkflow)
    print(f"  {name:<9} started   {wf.id} (parent {wf.parent_id})")
    for batch in range(1, batches + 1):
        await asyncio.sleep(0.02)  # the I/O would be here
        await wf.safe_point()  # a pause from the hub would wait here, without blocking the loop
        wf.progress(100 * batch / batches, stage=name, current_item=batch, total_items=batches)
    print(f"  {name:<9} finished  {batches} batches")
    return batches * 1_000


async def pipeline() -> str:
    async with workflow("nightly-pipeline") as wf:
        print(f"pipeline {wf.id} loads {len(SOURCES)} sources in parallel")
        wf.progress(0, "load")
        rows = await asyncio.gather(*(load_source(n, b) for n, b in SOURCES.items()))
        wf.checkpoint("loaded", f"{sum(rows)} rows from {len(rows)} sources")
        wf.progress(100, "merge", f"{sum(rows)} rows")
        print(f"pipeline merged {sum(rows)} rows")
    return wf.id


def hub_view(when_url: str, path: str) -> dict[str, Any]:
    """GET from the hub's operator API, on the same port as the coordination URL."""
    parts = urlsplit(when_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    with urllib.request.urlopen(f"{scheme}://{parts.netloc}{path}", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data


def print_tree(when_url: str, root_id: str, timeout: float = 5.0) -> None:
    """The hub's view of the tree, once it has seen every workflow in it end."""
    deadline = time.monotonic() + timeout
    while True:
        tree = hub_view(when_url, f"/v1/workflows?root={root_id}")["workflows"]
        ended = all(w["phase"] in ("completed", "failed", "cancelled") for w in tree)
        if (ended and len(tree) == len(SOURCES) + 1) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    print("the hub's tree:")
    for w in sorted(tree, key=lambda w: (w["parent_workflow_id"] != "", w["stage"])):
        indent = "    " if w["parent_workflow_id"] else "  "
        label = w["action_type"] + (f" ({w['stage']})" if w["parent_workflow_id"] else "")
        print(f"{indent}{label:<26} {w['phase']:<10} {w['progress']:5.1f}%")


def main() -> int:
    with contextlib.ExitStack() as stack:
        when_url = os.environ.get("WHEN_URL", "")
        if not when_url:
            hub = stack.enter_context(ThreadedHub(Hub(port=0)))
            when_url = hub.url
            print(f"started an embedded hub at {when_url}")

        coordinator = Coordinator(Config.from_env(when_url=when_url, service_name="pipeline"))
        coordinator.connect()
        stack.callback(coordinator.close)
        if not coordinator.wait_registered(5):
            print(f"could not register with the hub at {when_url}", file=sys.stderr)
            return 1
        set_coordinator(coordinator)
        tracer_provider = TracerProvider()
        trace.set_tracer_provider(tracer_provider)
        stack.callback(tracer_provider.shutdown)

        root_id = asyncio.run(pipeline())
        coordinator.flush(5)
        print_tree(when_url, root_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
