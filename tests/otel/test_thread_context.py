"""The workflow is in the OpenTelemetry Context, so under ``opentelemetry-instrument`` whatever
carries that context into threads carries ``current_workflow()`` too.

Each case runs the real ``opentelemetry-instrument`` in a subprocess, reporting to a real hub:
with every instrumentation, then with the threading instrumentation disabled (what it carries
is lost: ``Timer``, plain ``Thread``, thread pools), then with ours disabled (what only ours
carries is lost: a ``Thread`` subclass that overrides ``run``, which the threading
instrumentation never wraps). Process pools are carried by ours alone
(``tests/test_instrumentor_process.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.otel.conftest import INSTRUMENT
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

TIMEOUT = 15.0

APP = """
import concurrent.futures
import json
import threading

from when_coordinator import current_workflow, workflow

seen = {}


def look(kind):
    run = current_workflow()
    seen[kind] = run.id if run is not None else None


class Worker(threading.Thread):
    def run(self):
        look("thread subclass overriding run")


with workflow("threads") as parent:
    timer = threading.Timer(0, look, args=("timer",))
    timer.start()
    timer.join(10)
    worker = Worker()
    worker.start()
    worker.join(10)
    plain = threading.Thread(target=look, args=("thread",))
    plain.start()
    plain.join(10)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(look, "thread pool").result(10)
    look("the workflow itself")

look("after the workflow")
print(json.dumps({"workflow": parent.id, "seen": seen}))
"""

CARRIED_BY_THREADING = ("timer", "thread", "thread pool")
CARRIED_BY_OURS = ("thread subclass overriding run",)


def run_app(hub: ThreadedHub, tmp_path: Path, service: str, disabled: str) -> dict[str, object]:
    assert INSTRUMENT.exists(), f"{INSTRUMENT} missing: install the dev extras"
    script = tmp_path / "threads_app.py"
    script.write_text(textwrap.dedent(APP), encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "WHEN_")) and k != "PYTHONPATH"
    }
    env.update(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "WHEN_URL": hub.url,
            "WHEN_RECONNECT_INITIAL_DELAY": "0.05",
        }
    )
    if disabled:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = disabled
    result = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # Switched on once, whichever instrumentor ran first.
    assert "already instrumented" not in result.stderr, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    ("disabled", "carried"),
    [
        ("", CARRIED_BY_THREADING + CARRIED_BY_OURS),
        ("threading", CARRIED_BY_OURS),
        ("when", CARRIED_BY_THREADING),
    ],
    ids=["all", "threading-off", "when-off"],
)
def test_timer_and_thread_subclass_callbacks_see_the_workflow(
    hub: ThreadedHub, tmp_path: Path, disabled: str, carried: tuple[str, ...]
) -> None:
    service = f"threads-{disabled or 'all'}"
    report = run_app(hub, tmp_path, service, disabled)
    workflow_id = report["workflow"]
    seen = report["seen"]
    assert isinstance(workflow_id, str)
    assert isinstance(seen, dict)
    expected: dict[str, str | None] = dict.fromkeys(CARRIED_BY_THREADING + CARRIED_BY_OURS)
    expected.update(dict.fromkeys(carried, workflow_id))
    expected["the workflow itself"] = workflow_id
    expected["after the workflow"] = None
    assert seen == expected
    # The workflow reached the hub and completed: the context carried is a live workflow's.
    hub.wait_for(
        lambda h: workflow_id in h.workflows and h.workflows[workflow_id].phase is Phase.COMPLETED,
        timeout=TIMEOUT,
    )
