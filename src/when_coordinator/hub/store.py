"""Optional SQLite persistence for the reference hub (``Hub(db=path)``, ``--db FILE``).

A restarted hub keeps the services it has seen, the workflows with their phase history,
checkpoints, errors and anomalies, and the newest ``log_limit`` log entries.

Records are stored as JSON documents (the same shape the operator API serves), one row per
service and per workflow, replaced whole when they change; logs are appended. Each
``write`` is one transaction, so a hub killed in the middle of a write leaves the database as
it was after the previous one (SQLite's journal guarantees it; WAL mode keeps readers and the
writer apart). The store is synchronous and not thread-safe: the hub drives it from a single
worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .state import LogRecord, ServiceState, Snapshot, WorkflowState

__all__ = ["HubStore", "StoreBatch"]

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (service_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (workflow_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL
);
"""
_SCHEMA_VERSION = "1"


@dataclass(slots=True)
class StoreBatch:
    """One transaction's worth of changes, made of plain JSON-ready data.

    The hub builds it on its event loop (so it reflects one consistent moment) and hands it
    to the store's thread; nothing in it is shared with the live state.
    """

    services: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Service id to its document, or None to delete it."""
    workflows: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Workflow id to its document, or None to delete it."""
    logs: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.services or self.workflows or self.logs)


class HubStore:
    """The SQLite file behind a persistent hub."""

    def __init__(self, path: str | os.PathLike[str], *, log_limit: int = 10_000) -> None:
        self.path = os.fspath(path)
        self.log_limit = max(0, log_limit)
        self.skipped = 0
        """Rows that could not be read back (corrupt JSON, unknown phases); logged and skipped."""
        self._db: sqlite3.Connection | None = None
        self._since_prune = 0

    def open(self) -> None:
        """Open (creating if needed) the database and its tables."""
        if self._db is not None:
            return
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (_SCHEMA_VERSION,),
                )
            elif row[0] != _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: hub database schema version {row[0]} is not "
                    f"{_SCHEMA_VERSION}; use another --db file"
                )
        except BaseException:
            db.close()
            raise
        self._db = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def load(self) -> Snapshot:
        """Read everything back; rows that cannot be parsed are skipped and counted."""
        db = self._conn()
        services = self._rows(
            db.execute("SELECT data FROM services ORDER BY rowid"), ServiceState.from_dict
        )
        workflows = self._rows(
            db.execute("SELECT data FROM workflows ORDER BY rowid"), WorkflowState.from_dict
        )
        logs = self._rows(
            db.execute(
                "SELECT data FROM (SELECT id, data FROM logs ORDER BY id DESC LIMIT ?) ORDER BY id",
                (self.log_limit,),
            ),
            LogRecord.from_dict,
        )
        return Snapshot(services=services, workflows=workflows, logs=logs)

    def _rows(self, cursor: Iterable[tuple[str]], parse: Any) -> list[Any]:
        out = []
        for (data,) in cursor:
            try:
                out.append(parse(json.loads(data)))
            except (ValueError, KeyError, TypeError) as exc:
                self.skipped += 1
                _log.warning("hub store %s: skipped an unreadable row: %s", self.path, exc)
        return out

    def write(self, batch: StoreBatch) -> None:
        """Apply one batch in one transaction (all of it or, if interrupted, none of it)."""
        if not batch:
            return
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._upsert(db, "services", "service_id", batch.services.items())
            self._upsert(db, "workflows", "workflow_id", batch.workflows.items())
            if batch.logs:
                db.executemany(
                    "INSERT INTO logs (workflow_id, data) VALUES (?, ?)",
                    [(log.get("workflow_id", ""), json.dumps(log)) for log in batch.logs],
                )
                self._since_prune += len(batch.logs)
                if self._since_prune >= max(1000, self.log_limit // 10):
                    self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _upsert(
        db: sqlite3.Connection,
        table: str,
        key: str,
        items: Iterable[tuple[str, dict[str, Any] | None]],
    ) -> None:
        deletes: list[tuple[str]] = []
        upserts: list[tuple[str, str]] = []
        for ident, document in items:
            if document is None:
                deletes.append((ident,))
            else:
                upserts.append((ident, json.dumps(document)))
        if deletes:
            db.executemany(f"DELETE FROM {table} WHERE {key} = ?", deletes)
        if upserts:
            db.executemany(
                f"INSERT INTO {table} ({key}, data) VALUES (?, ?) "
                f"ON CONFLICT({key}) DO UPDATE SET data = excluded.data",
                upserts,
            )

    def _prune(self, db: sqlite3.Connection) -> None:
        """Keep the newest ``log_limit`` log rows."""
        self._since_prune = 0
        db.execute("DELETE FROM logs WHERE id <= (SELECT MAX(id) FROM logs) - ?", (self.log_limit,))

    def counts(self) -> dict[str, int]:
        """Rows per table, for diagnostics and tests."""
        db = self._conn()
        tables: Sequence[str] = ("services", "workflows", "logs")
        return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
