"""The ``celery`` command with cProfile on: ``bench_celery`` runs its workers through this when
``WHEN_BENCH_PROFILE`` names a directory (``python <this file> -A tasks worker ...`` under
``opentelemetry-instrument``).

The main thread of the worker's main process and of each pool process is profiled, and so is
every thread started after this module runs (the relay's, a pool process's client thread);
threads started earlier, in ``opentelemetry-instrument``'s start-up (the main process's own
client thread), are not. Each process writes ``<dir>/<role>-<pid>-<thread>.prof`` as it shuts
down: pool processes at ``worker_process_shutdown``, the main one at ``worker_shutdown``. Read
them with ``python -m pstats``.
"""

from __future__ import annotations

import cProfile
import os
import threading
from typing import Any

from celery import signals
from celery.__main__ import main

OUT = os.environ["WHEN_BENCH_PROFILE"]
_profiles: list[tuple[int, str, cProfile.Profile]] = []
"""(pid, thread name, profile): a pool process inherits its parent's list."""
_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile()
    _profiles.append((os.getpid(), self.name, profile))
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()


def _start(**kwargs: Any) -> None:
    profile = cProfile.Profile()
    _profiles.append((os.getpid(), "main", profile))
    profile.enable()


def _dump(role: str) -> None:
    pid = os.getpid()
    for owner, name, profile in list(_profiles):
        if owner == pid:
            profile.dump_stats(f"{OUT}/{role}-{pid}-{name}.prof")


threading.Thread.run = _profiled_run  # type: ignore[method-assign]
signals.worker_init.connect(_start, weak=False)
signals.worker_process_init.connect(_start, weak=False)
signals.worker_shutdown.connect(lambda **kwargs: _dump("main"), weak=False)
signals.worker_process_shutdown.connect(lambda **kwargs: _dump("pool"), weak=False)

if __name__ == "__main__":
    main()
