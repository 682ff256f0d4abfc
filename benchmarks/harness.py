"""Shared measuring and reporting for the benchmark modules.

A benchmark module is ``benchmarks/bench_<topic>.py`` with ``def run() -> list[Figure]``.
Each ``Figure`` compares our cost with a baseline measured in the same run on the same data,
because absolute timings mean little across machines while ratios travel well.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Figure", "Timing", "compare", "format_table", "measure"]


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
