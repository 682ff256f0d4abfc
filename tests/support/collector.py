"""Tests of what is freed without Python's cyclic garbage collector."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """No garbage collection meanwhile: what is freed is freed by reference counting."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # as it was: a caller that had it off keeps it off
            gc.enable()
