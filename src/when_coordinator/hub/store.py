"""Optional SQLite persistence for the reference hub (``Hub(db=path)``, ``--db FILE``).

A restarted hub keeps the services it has seen, the workflows with their phase history,
checkpoints, errors and anomalies, and the newest ``log_limit`` log entries.

Records are stored as JSON documents (the same shape the operator API serves): one row per
service, replaced when it changes; one small summary row per workflow, replaced when it
changes, with its phase history, checkpoints and errors appended as rows of their own (the
newest ``record_limit`` of each kind are kept), so a batch writes what changed, not a
workflow's whole document; logs are appended. Each
``write`` is one transaction, so a hub killed in the middle of a write leaves the database as
it was after the previous one (SQLite's journal guarantees it; WAL mode keeps readers and the
writer apart). The store is synchronous and not thread-safe: the hub drives it from a single
worker thread, so the event loop never waits on the disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .changes import Snapshot
from .model import ServiceState, WorkflowState
from .records import CheckpointRecord, ErrorRecord, PhaseChange, StoredLog

__all__ = ["KINDS", "HubStore", "Store", "StoreBatch", "StoreReadOnly", "redact_url", "summary"]

_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS services (service_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (workflow_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflow_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflow_records_by_kind ON workflow_records (workflow_id, kind, id);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL
);
"""
_SCHEMA_VERSION = "2"
"""1: one whole JSON document per workflow. 2: a summary document per workflow and its
history, checkpoints and errors as appended rows (``workflow_records``)."""

KINDS = ("history", "checkpoints", "errors")
"""The kinds of ``workflow_records`` rows, named like the workflow document's lists."""

_Record = PhaseChange | CheckpointRecord | ErrorRecord


@dataclass(slots=True)
class StoreBatch:
    """One transaction's worth of changes.

    The hub builds it on its event loop (so it reflects one consistent moment) and hands it
    to the store's thread. Documents are plain JSON-ready data; records are the hub's frozen
    records, encoded on the store's thread.
    """

    services: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Service id to its document, or None to delete it."""
    workflows: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """Workflow id to its summary document, or None to delete it (with its records)."""
    records: list[tuple[str, str, _Record]] = field(default_factory=list)
    """(workflow id, kind, record) rows to append, in order."""
    resync: dict[str, dict[str, tuple[_Record, ...]]] = field(default_factory=dict)
    """Workflows whose stored records are replaced by these (after rows were given up)."""
    logs: list[StoredLog] = field(default_factory=list)
    """Log records to append, in order (frozen: made into documents on the store's thread,
    not on the event loop, where a busy hub's batch of them held it for tens of ms)."""

    def __bool__(self) -> bool:
        return bool(self.services or self.workflows or self.records or self.resync or self.logs)


def summary(workflow: WorkflowState) -> dict[str, Any]:
    """A workflow's stored document: everything but the lists kept as rows."""
    document = workflow.as_dict(full=False)
    document["anomalies"] = list(workflow.anomalies)
    return document


class Store(Protocol):
    """What the hub needs of a store: ``HubStore`` (SQLite, the default) or
    ``pgstore.PostgresStore`` (shared by several instances). Driven from one worker thread."""

    path: str
    """Where it keeps its data, for ``/healthz`` and logs (no credentials)."""
    log_limit: int

    def load(self) -> Snapshot:
        """Everything kept (opening, creating or migrating first)."""
        ...

    def write(self, batch: StoreBatch) -> None:
        """Apply one batch in one transaction; raise (the hub keeps and retries it) if not."""
        ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """A database URL without its password, for logs and ``/healthz``."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class StoreReadOnly(RuntimeError):
    """The database file (or its directory) cannot be written."""


class HubStore:
    """The SQLite file behind a persistent hub."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        log_limit: int = 10_000,
        record_limit: int = 1_000,
        max_bytes: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        """A bound on the database file's size (SQLite's ``max_page_count``): a write past it
        fails as on a full disk, and the hub keeps the batch and retries it."""
        self.log_limit = max(0, log_limit)
        self.record_limit = max(1, record_limit)
        """Rows of each kind kept per workflow (the newest)."""
        self.skipped = 0
        """Rows that could not be read back (corrupt JSON, not an object, unknown phases);
        logged and skipped."""
        self._db: sqlite3.Connection | None = None
        self._since_prune = 0

    def open(self) -> None:
        """Open (creating or migrating if needed) the database; raises ``StoreReadOnly`` for a
        file the hub cannot write, ``RuntimeError`` for another schema."""
        if self._db is not None:
            return
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if self.max_bytes is not None:
                page = int(db.execute("PRAGMA page_size").fetchone()[0])
                db.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page)}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (_SCHEMA_VERSION,),
                )
            elif row[0] == "1":
                self._migrate_1_to_2(db)
            elif row[0] != _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: hub database schema version {row[0]} is not "
                    f"{_SCHEMA_VERSION}; use another --db file"
                )
            # Fail now, not at the first batch: a database the hub cannot write would
            # acknowledge changes it never keeps.
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (repr(time.time()),),
            )
        except sqlite3.OperationalError as exc:
            db.close()
            if "readonly" in str(exc) or "read-only" in str(exc):
                raise StoreReadOnly(
                    f"it is read-only ({exc}): the hub writes its database; make the file "
                    "and its directory writable or use another --db file"
                ) from None
            raise
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate_1_to_2(self, db: sqlite3.Connection) -> None:
        """Split every whole workflow document into a summary and appended rows (one
        transaction: a hub killed meanwhile finds version 1 again)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT workflow_id, data FROM workflows").fetchall()
            for workflow_id, data in rows:
                try:
                    document = json.loads(data)
                except ValueError:
                    continue  # skipped (and counted) at load, as before
                if not isinstance(document, dict):
                    continue
                appended = []
                for kind in KINDS:
                    items = document.pop(kind, None)
                    if isinstance(items, list):
                        appended += [
                            (workflow_id, kind, json.dumps(item))
                            for item in items
                            if isinstance(item, dict)
                        ]
                db.execute(
                    "UPDATE workflows SET data = ? WHERE workflow_id = ?",
                    (json.dumps(document), workflow_id),
                )
                db.executemany(
                    "INSERT INTO workflow_records (workflow_id, kind, data) VALUES (?, ?, ?)",
                    appended,
                )
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (_SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite ends it itself on some errors (SQLITE_FULL)
                db.execute("ROLLBACK")
            raise
        _log.info("hub store %s: migrated %d workflows to schema 2", self.path, len(rows))

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
        records: dict[str, dict[str, list[Any]]] = {}
        cursor = db.execute("SELECT workflow_id, kind, data FROM workflow_records ORDER BY id")
        for workflow_id, kind, data in cursor:
            item = self._document(data)
            if item is not None and kind in KINDS:
                records.setdefault(workflow_id, {}).setdefault(kind, []).append(item)
        limit = self.record_limit

        def workflow(document: dict[str, Any]) -> WorkflowState:
            lists = records.get(str(document.get("workflow_id", "")), {})
            for kind, items in lists.items():
                document[kind] = items[-limit:]
            return WorkflowState.from_dict(document)

        workflows = self._rows(db.execute("SELECT data FROM workflows ORDER BY rowid"), workflow)
        logs = self._rows(
            db.execute(
                "SELECT data FROM (SELECT id, data FROM logs ORDER BY id DESC LIMIT ?) ORDER BY id",
                (self.log_limit,),
            ),
            StoredLog.from_dict,
        )
        return Snapshot(services=services, workflows=workflows, logs=logs)

    def _document(self, data: str) -> dict[str, Any] | None:
        """A row's JSON object, or None (logged, counted) for anything else."""
        try:
            document = json.loads(data)
        except ValueError as exc:
            self._skip(exc)
            return None
        if not isinstance(document, dict):
            self._skip(f"a JSON {type(document).__name__} where an object belongs")
            return None
        return document

    def _skip(self, why: object) -> None:
        self.skipped += 1
        _log.warning("hub store %s: skipped an unreadable row: %s", self.path, why)

    def _rows(
        self, cursor: Iterable[tuple[str]], parse: Callable[[dict[str, Any]], Any]
    ) -> list[Any]:
        out = []
        for (data,) in cursor:
            document = self._document(data)
            if document is None:
                continue
            try:
                out.append(parse(document))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self._skip(exc)
        return out

    def write(self, batch: StoreBatch) -> None:
        """Apply one batch in one transaction (all of it or, if interrupted, none of it)."""
        if not batch:
            return
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._upsert(db, "services", "service_id", batch.services.items())
            gone = [(wf,) for wf, document in batch.workflows.items() if document is None]
            if gone:
                db.executemany("DELETE FROM workflow_records WHERE workflow_id = ?", gone)
            self._upsert(db, "workflows", "workflow_id", batch.workflows.items())
            rows = [
                (workflow_id, kind, json.dumps(record.as_dict()))
                for workflow_id, kind, record in batch.records
            ]
            for workflow_id, lists in batch.resync.items():
                db.execute("DELETE FROM workflow_records WHERE workflow_id = ?", (workflow_id,))
                rows += [
                    (workflow_id, kind, json.dumps(record.as_dict()))
                    for kind, records in lists.items()
                    for record in records
                ]
            if rows:
                db.executemany(
                    "INSERT INTO workflow_records (workflow_id, kind, data) VALUES (?, ?, ?)",
                    rows,
                )
                self._prune_records(db, {(workflow_id, kind) for workflow_id, kind, _ in rows})
            if batch.logs:
                db.executemany(
                    "INSERT INTO logs (workflow_id, data) VALUES (?, ?)",
                    [(log.workflow_id, json.dumps(log.as_dict())) for log in batch.logs],
                )
                self._since_prune += len(batch.logs)
                if self._since_prune >= max(1000, self.log_limit // 10):
                    self._prune(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite ends it itself on some errors (SQLITE_FULL)
                db.execute("ROLLBACK")
            raise

    def _prune_records(self, db: sqlite3.Connection, touched: set[tuple[str, str]]) -> None:
        """Keep the newest ``record_limit`` rows of each kind of each workflow written."""
        db.executemany(
            "DELETE FROM workflow_records WHERE workflow_id = ?1 AND kind = ?2 AND id <= "
            "(SELECT id FROM workflow_records WHERE workflow_id = ?1 AND kind = ?2 "
            "ORDER BY id DESC LIMIT 1 OFFSET ?3)",
            [(workflow_id, kind, self.record_limit) for workflow_id, kind in touched],
        )

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
        tables: Sequence[str] = ("services", "workflows", "workflow_records", "logs")
        return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
