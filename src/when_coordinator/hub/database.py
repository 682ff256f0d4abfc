"""Which store a hub's ``db`` argument means: a SQLite file, or a PostgreSQL URL."""

from __future__ import annotations

import os

from .errors import HubError
from .store import HubStore, Store

__all__ = ["is_postgres", "make_store"]


def is_postgres(db: object) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def make_store(
    db: str | os.PathLike[str],
    *,
    instance_id: str | None,
    log_limit: int,
    max_bytes: int | None,
    retention: float | None,
    lease_timeout: float,
) -> tuple[Store, str | None]:
    """The store for ``db``, and the instance id it runs under (PostgreSQL only: the given
    one, else a random ``hub-<pid>-<hex>``)."""
    if not is_postgres(db):
        return HubStore(db, log_limit=log_limit, max_bytes=max_bytes), instance_id
    try:
        from .pgstore import PostgresStore  # noqa: PLC0415 - psycopg only for PostgreSQL
    except ImportError as exc:
        raise HubError(
            f"--db {db!s:.40}... needs the PostgreSQL driver: pip install "
            f"'when-coordinator[postgres]' ({exc})"
        ) from None
    instance = instance_id or f"hub-{os.getpid()}-{os.urandom(3).hex()}"
    store = PostgresStore(
        str(db), instance, log_limit=log_limit, retention=retention, lease_timeout=lease_timeout
    )
    return store, instance
