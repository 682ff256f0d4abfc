"""What ``import when_coordinator`` costs a process, beside the libraries it cannot do without.

Every Celery worker, CLI call and short-lived job pays the import once. The baseline is the
least a participant needs: the OpenTelemetry SDK's tracing and websockets' asyncio client.
Each import runs in a fresh interpreter (site-packages already set up, so only the import
itself is timed), alternating ours and the baseline so that load on the machine hits both.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from .harness import Figure

MAX_RATIO = 1.2
OURS = "when_coordinator"
BASELINE = "opentelemetry.sdk.trace, websockets.asyncio.client"
_PROGRAM = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def import_seconds(modules: str) -> float:
    """Seconds to import ``modules`` in a fresh interpreter."""
    output = subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(modules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return float(output)


def run(rounds: int = 11) -> list[Figure]:
    ours: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        ours.append(import_seconds(OURS))
        base.append(import_seconds(BASELINE))
    return [
        Figure.versus(
            "[9] import when_coordinator",
            statistics.median(ours) * 1e3,
            statistics.median(base) * 1e3,
            "ms",
            max_ratio=MAX_RATIO,
            what="OTel SDK + websockets",
        )
    ]
