"""The instrumentor's whole path (providers, logging handler, threads, a workflow, a log record
exported to the hub) runs under ``-W error::DeprecationWarning``: the SDK's ``LoggingHandler``
(deprecated since SDK 1.40) is no longer made, ``opentelemetry-instrumentation-logging``'s is.

``instrument()`` never raises into the application, so a warning turned error would only be
logged: the script checks outcomes, and the test that nothing was logged about it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from when_coordinator.hub import ThreadedHub

SCRIPT = """
import json
import logging
import threading

from opentelemetry.instrumentation.logging.handler import LoggingHandler

from when_coordinator import current_workflow, get_coordinator, workflow
from when_coordinator.otel import WhenInstrumentor

WhenInstrumentor().instrument()
logging.getLogger().setLevel(logging.INFO)
seen = []
with workflow("no-deprecations") as run:
    logging.getLogger("app").info("logged in the workflow")
    thread = threading.Thread(target=lambda: seen.append(current_workflow() is run))
    thread.start()
    thread.join(10)
bridges = [h for h in logging.getLogger().handlers if isinstance(h, LoggingHandler)]
from opentelemetry import _logs  # noqa: E402
_logs.get_logger_provider().force_flush()
assert get_coordinator().flush(10)
print(json.dumps({"id": run.id, "seen": seen, "bridges": len(bridges)}))
"""


def test_the_instrumented_path_raises_no_deprecation_warning(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    script = tmp_path / "no_deprecations.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "WHEN_")) and k != "PYTHONPATH"
    }
    env.update({"WHEN_URL": hub.url, "WHEN_SERVICE_NAME": "no-deprecations"})
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Deprecat" not in result.stderr, result.stderr
    assert "could not" not in result.stderr, result.stderr
    assert "cannot" not in result.stderr, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["bridges"] == 1, "the instrumentor's handler is the contrib LoggingHandler"
    assert report["seen"] == [True]
    hub.wait_for(
        lambda h: any(
            r.message == "logged in the workflow" and r.workflow_id == report["id"] for r in h.logs
        ),
        timeout=15,
    )
