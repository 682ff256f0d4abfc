"""Message ids of the reference shape (PROTOCOL.md section 2)."""

from __future__ import annotations

import itertools
import os
import threading

__all__ = ["new_message_id"]

# 32 of the 36 allowed characters, so that a byte maps to one without bias (byte % 32).
_ID_TABLE = bytes((b"abcdefghijklmnopqrstuvwxyz234567"[i % 32]) for i in range(256))
_id_counter = itertools.count()

_ID_BATCH = 12 * 256
_id_lock = threading.Lock()
_id_pool = ""
_id_pos = _ID_BATCH


def _forget_id_pool() -> None:
    """A forked child must not draw the same random bytes as its parent."""
    global _id_pool, _id_pos, _id_lock  # noqa: PLW0603
    _id_lock = threading.Lock()
    _id_pool, _id_pos = "", _ID_BATCH


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id_pool)


def new_message_id() -> str:
    """A fresh id of the reference shape ``msg-<12 of [a-z0-9]>-<0..999999>``.

    Sixty bits from the operating system's strong random source make a collision within one
    process practically impossible; the counter suffix separates ids drawn in the same instant.
    The random bytes are read 256 ids at a time: one system call per message was a measurable
    share of a message's cost.
    """
    global _id_pool, _id_pos  # noqa: PLW0603 - the pool of random bytes, guarded by _id_lock
    with _id_lock:
        position = _id_pos
        if position >= _ID_BATCH:
            _id_pool = os.urandom(_ID_BATCH).translate(_ID_TABLE).decode("ascii")
            position = 0
        _id_pos = position + 12
    return f"msg-{_id_pool[position : position + 12]}-{next(_id_counter) % 1_000_000}"
