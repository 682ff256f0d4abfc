"""Shared measuring and reporting for the benchmark modules.

A benchmark module is ``benchmarks/bench_<topic>.py`` with ``def run() -> list[Figure]``.
Each ``Figure`` compares our cost with a baseline measured in the same run on the same data,
because absolute timings mean little across machines while ratios travel well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Child",
    "Figure",
    "Timing",
    "compare",
    "format_table",
    "measure",
    "percentile",
    "say",
    "serve_commands",
]


@dataclass(frozen=True)
class Figure:
    """One row of the report: our cost beside the baseline's, and whether the target holds.

    ``ratio`` is ours / baseline (lower is better) when there is a baseline. ``target`` says in
    words what must hold (e.g. ``<= 1.5x json.dumps``); informational rows have ``target`` "-"
    and always hold.
    """

    name: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float | None
    target: str
    holds: bool

    @classmethod
    def versus(
        cls, name: str, ours: float, baseline: float, unit: str, *, max_ratio: float, what: str
    ) -> Figure:
        """A figure whose target is ``ours <= max_ratio * baseline``; ``what`` names the
        baseline in the target text."""
        ratio = ours / baseline if baseline > 0 else float("inf")
        return cls(
            name, ours, baseline, unit, ratio, f"<= {max_ratio:g}x {what}", ratio <= max_ratio
        )

    @classmethod
    def info(cls, name: str, ours: float, unit: str, baseline: float | None = None) -> Figure:
        """A figure reported for insight only, with no target to meet."""
        ratio = ours / baseline if baseline else None
        return cls(name, ours, baseline, unit, ratio, "-", True)


@dataclass(frozen=True)
class Timing:
    """Seconds per operation of each repetition; the median is what gets reported."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def _loops(timer: timeit.Timer, min_time: float) -> int:
    """Calls per repetition so that one repetition lasts at least ``min_time`` seconds."""
    number = 1
    while True:
        if timer.timeit(number) >= min_time:
            return number
        number *= 2


def measure(
    func: Callable[[], object], *, ops: int = 1, repeat: int = 7, min_time: float = 0.05
) -> Timing:
    """Time ``func`` (which performs ``ops`` operations per call) in ``repeat`` repetitions.

    ``timeit`` switches the garbage collector off while timing, as it does for both sides of
    every comparison here.
    """
    timer = timeit.Timer(func)
    number = _loops(timer, min_time)
    return Timing(tuple(t / (number * ops) for t in timer.repeat(repeat, number)))


def compare(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    *,
    ops: int = 1,
    repeat: int = 7,
    min_time: float = 0.05,
) -> tuple[Timing, Timing]:
    """Time two callables in alternating repetitions, so that drift (CPU frequency, other
    load) hits both alike; returns (ours, baseline)."""
    timers = timeit.Timer(ours), timeit.Timer(baseline)
    numbers = [_loops(t, min_time) for t in timers]
    runs: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for timer, number, out in zip(timers, numbers, runs, strict=True):
            out.append(timer.timeit(number) / (number * ops))
    return Timing(tuple(runs[0])), Timing(tuple(runs[1]))


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".rstrip()


def format_table(figures: Sequence[Figure]) -> str:
    """One plain-text table: figure, ours, baseline, ratio, target, holds."""
    header = ("figure", "ours", "baseline", "ratio", "target", "holds")
    rows = [
        (
            f.name,
            _number(f.ours, f.unit),
            _number(f.baseline, f.unit),
            "-" if f.ratio is None else f"{f.ratio:.2f}x",
            f.target,
            "-" if f.target == "-" else ("yes" if f.holds else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3}  # numbers align right

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


# --------------------------------------------------------------------------- helper processes

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: helper processes run ``python -m benchmarks.<module>`` from here."""


class Child:
    """A helper process, ``python -m benchmarks.<module> <args>``, spoken to in JSON lines.

    Servers under test and load generators run in their own processes, so that they do not
    share a GIL with what is measured. The child prints a greeting (one JSON object) when it is
    ready; ``ask`` writes one JSON object to its stdin and returns the one it prints back;
    closing its stdin (``close``) tells it to exit. Every wait is bounded by ``timeout``.
    """

    def __init__(self, module: str, *args: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{module}", *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, name=f"{module}-out", daemon=True)
        self._reader.start()
        try:
            self.hello = self.read()
        except BaseException:
            self.close()
            raise

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def read(self, timeout: float | None = None) -> dict[str, Any]:
        """The next JSON object the child prints (RuntimeError if it exits or times out)."""
        try:
            line = self._lines.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.process.args!r}: no answer in time") from None
        if not line:
            raise RuntimeError(f"{self.process.args!r} exited ({self.process.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, **command: Any) -> None:
        """Write one command without waiting for its answer (``read`` it later)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def ask(self, timeout: float | None = None, **command: Any) -> dict[str, Any]:
        """Send one command and return the child's answer."""
        self.send(**command)
        return self.read(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Close its stdin and wait for it to exit (killing it after ``timeout``)."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self._reader.join(timeout)


def say(**message: Any) -> None:
    """In a child: print one JSON object for the parent (the greeting or an answer)."""
    print(json.dumps(message), flush=True)


async def serve_commands(
    handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], *, deadline: float = 900.0
) -> None:
    """In a child: answer each JSON command line on stdin with ``handle``'s result, until
    stdin closes or ``deadline`` seconds have passed (so an orphan never runs forever)."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + deadline
    while (left := end - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), left)
        except asyncio.TimeoutError:
            return
        if not line.strip():
            return  # the parent closed our stdin
        say(**await handle(json.loads(line)))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
