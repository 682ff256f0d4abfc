"""The service's jobs: plain functions, traced with the OpenTelemetry API only."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace

log = logging.getLogger("etl")
tracer = trace.get_tracer("etl_jobs")


def load_batch(number: int) -> int:
    with tracer.start_as_current_span(f"load-batch-{number}"):
        log.info("loaded batch %d", number)
        return 100


def nightly_etl(batches: int) -> int:
    """Extract, then load batches on a thread pool; logs and spans stay in the workflow."""
    log.info("nightly ETL started", extra={"batches": batches})
    with tracer.start_as_current_span("extract"):
        log.info("extracted %d batches", batches)
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = sum(pool.map(load_batch, range(batches)))
    log.info("nightly ETL done", extra={"rows": rows})
    return rows
