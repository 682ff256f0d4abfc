"""What ``import when_coordinator`` costs a process, beside the libraries it cannot do without.

Every Celery worker, CLI call and short-lived job pays the import once. The baseline is the
least a participant needs: the OpenTelemetry SDK's tracing and websockets' asyncio client.
Each import runs in a fresh interpreter (site-packages already set up, so only the import
itself is timed), alternating ours and the baseline so that load on the machine hits both.

Both sides read compiled bytecode, as an installed package does (pip compiles it at install
time): the children write and read it under a temporary ``PYTHONPYCACHEPREFIX``, warmed by one
import of each side first. Without that, where ``PYTHONDONTWRITEBYTECODE`` is set (as on
machines that keep checkouts clean), our modules, run from the checkout, would be compiled from
source at every import while the libraries' bytecode came with their wheels; that cost is
shown as a row for information.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

from .harness import Figure

MAX_RATIO = 1.2
OURS = "when_coordinator"
BASELINE = "opentelemetry.sdk.trace, websockets.asyncio.client"
_PROGRAM = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


def import_seconds(modules: str, env: dict[str, str] | None = None) -> float:
    """Seconds to import ``modules`` in a fresh interpreter."""
    output = subprocess.run(
        [sys.executable, "-c", _PROGRAM.format(modules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    ).stdout
    return float(output)


def _alternate(rounds: int, env: dict[str, str] | None) -> tuple[float, float]:
    """Median seconds of ours and the baseline, imported in alternation."""
    ours: list[float] = []
    base: list[float] = []
    for _ in range(rounds):
        ours.append(import_seconds(OURS, env))
        base.append(import_seconds(BASELINE, env))
    return statistics.median(ours), statistics.median(base)


def run(rounds: int = 11) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as cache:
        compiled = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        compiled["PYTHONPYCACHEPREFIX"] = cache
        import_seconds(OURS, compiled)  # writes every module's bytecode under the cache
        import_seconds(BASELINE, compiled)
        ours, base = _alternate(rounds, compiled)
    source = {k: v for k, v in os.environ.items() if k != "PYTHONPYCACHEPREFIX"}
    source["PYTHONDONTWRITEBYTECODE"] = "1"
    source_ours, source_base = _alternate(max(3, rounds // 2), source)
    return [
        Figure.versus(
            "[9] import when_coordinator",
            ours * 1e3,
            base * 1e3,
            "ms",
            max_ratio=MAX_RATIO,
            what="OTel SDK + websockets",
        ),
        Figure.info(
            "    same, our modules compiled from source", source_ours * 1e3, "ms", source_base * 1e3
        ),
    ]
