"""Run the benchmark modules and print one table: ``python -m benchmarks [name ...]``.

Every ``benchmarks/bench_*.py`` exposing ``run() -> list[Figure]`` is picked up, so a new
benchmark needs no registration. Names on the command line keep only the modules whose name
contains one of them (``python -m benchmarks protocol``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from .harness import Figure, format_table

BenchRun = Callable[[], list[Figure]]


def _load() -> str:
    """The 1-minute load average: other work on the machine skews latency figures."""
    return f"{os.getloadavg()[0]:.2f}"


def discover() -> list[str]:
    """The names of the benchmark modules, sorted."""
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name.startswith("bench_"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="run only modules whose name contains one")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target does not hold")
    args = parser.parse_args(argv)

    modules = discover()
    if args.names:
        modules = [m for m in modules if any(n in m for n in args.names)]
    if args.list or not modules:
        print("\n".join(modules) if modules else "no benchmark module matches", file=sys.stderr)
        return 0 if modules else 2

    figures: list[Figure] = []
    broken: list[str] = []
    began, load_before = time.perf_counter(), _load()
    for name in modules:
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            figures.extend(cast(BenchRun, module.run)())
        except Exception:  # one broken module must not hide the others' results
            traceback.print_exc()
            broken.append(name)
        print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    print(format_table(figures))
    print(
        f"\n{os.cpu_count()} CPUs; load average {load_before} before, {_load()} after; "
        f"{time.perf_counter() - began:.0f} s"
    )
    missed = [f.name for f in figures if not f.holds]
    print(
        f"{len(figures) - len(missed)} of {len(figures)} figures hold"
        + (f"; missed: {', '.join(missed)}" if missed else "")
        + (f"; broken modules: {', '.join(broken)}" if broken else "")
    )
    if broken:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
