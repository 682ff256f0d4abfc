"""A service that knows nothing of when-coordinator; run it under ``opentelemetry-instrument``.

    WHEN_URL=ws://127.0.0.1:8080/v1/coordination \\
    WHEN_WORKFLOW_ENTRYPOINTS=etl_jobs:nightly_etl \\
    opentelemetry-instrument python examples/zero_code/app.py

Each call of ``etl_jobs.nightly_etl`` then runs as a workflow the hub sees and can steer.
"""

from __future__ import annotations

import logging

from etl_jobs import nightly_etl


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = nightly_etl(3)
    logging.getLogger("app").info("nightly ETL loaded %d rows", rows)


if __name__ == "__main__":
    main()
