"""The hub's PostgreSQL store (``--db postgresql://...``): what ``HubStore`` keeps in SQLite,
shared by several hub instances, plus what they need to act as one (``PostgresBus``).

Imported only for a ``postgresql://`` URL, so the embedded default needs no driver. Like
``HubStore`` it is synchronous and driven from the hub's store thread (psycopg 3).

Every row a hub writes takes its ``seq`` from one sequence, and writers take one advisory
lock per transaction, so ``seq`` order is commit order: another instance that has read up to
``seq`` N misses nothing by reading ``seq > N`` next (``changes_since``). Each write notifies
``when_hub_changes`` in its transaction (delivered at commit). Commands to a service held by
another instance are rows of ``when_commands`` notified by id (``when_hub_commands``).

The bus's own statements (leases, commands, answers, phase notes) are the ``*_SQL`` constants
below: the bus runs them on a connection (and thread) of its own, each one statement in its own
transaction, so a command never queues behind a batch or a mirror read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads

from .changes import Snapshot
from .errors import first_line
from .model import ServiceState, WorkflowState
from .records import StoredLog
from .store import KINDS, StoreBatch, redact_url

__all__ = ["SCHEMA_VERSION", "Mirror", "PostgresStore", "StoreUnavailable", "redact_url"]

_log = logging.getLogger(__name__)

CHANGES = "when_hub_changes"
COMMANDS = "when_hub_commands"
ANSWERS = "when_hub_answers"
PHASES = "when_hub_phases"
NOTIFY_LIMIT = 7900
"""Bytes of a NOTIFY payload at most (PostgreSQL refuses 8000 and more)."""
_LOCK = 0x5748454E  # "WHEN": the advisory lock that orders writers (and migrations)
_MIN_SERVER = 120000

_MIGRATIONS: tuple[str, ...] = (
    # 1: the first shared schema.
    """
    CREATE SEQUENCE when_change_seq;
    CREATE TABLE when_instances (
        instance_id TEXT PRIMARY KEY,
        url TEXT NOT NULL DEFAULT '',
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE when_services (
        service_id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        data JSONB NOT NULL
    );
    CREATE INDEX when_services_seq ON when_services (seq);
    CREATE TABLE when_workflows (
        workflow_id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        finished_at TIMESTAMPTZ,
        data JSONB NOT NULL
    );
    CREATE INDEX when_workflows_seq ON when_workflows (seq);
    CREATE INDEX when_workflows_finished ON when_workflows (finished_at);
    CREATE TABLE when_workflow_records (
        seq BIGINT PRIMARY KEY DEFAULT nextval('when_change_seq'),
        workflow_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        data JSONB NOT NULL
    );
    CREATE INDEX when_workflow_records_by_kind ON when_workflow_records (workflow_id, kind, seq);
    CREATE TABLE when_logs (
        seq BIGINT PRIMARY KEY DEFAULT nextval('when_change_seq'),
        workflow_id TEXT NOT NULL DEFAULT '',
        instance_id TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        data JSONB NOT NULL
    );
    CREATE INDEX when_logs_created ON when_logs (created_at);
    CREATE TABLE when_commands (
        id BIGSERIAL PRIMARY KEY,
        service_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        delivered_by TEXT,
        delivered_at TIMESTAMPTZ,
        answer TEXT
    );
    CREATE INDEX when_commands_undelivered ON when_commands (service_id, id)
        WHERE delivered_at IS NULL;
    """,
    # 2: a batch written by one statement (PostgresStore.write).
    f"""
    CREATE FUNCTION when_write_batch(
        me TEXT, service_ids TEXT[], service_docs TEXT[], gone TEXT[],
        workflow_ids TEXT[], finished BOOLEAN[], workflow_docs TEXT[], resync TEXT[],
        record_workflows TEXT[], record_kinds TEXT[], record_docs TEXT[],
        log_workflows TEXT[], log_docs TEXT[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock({_LOCK});
        DELETE FROM when_services s USING unnest(service_ids, service_docs) AS u(i, d)
            WHERE u.d IS NULL AND s.service_id = u.i AND s.instance_id = me;
        -- A connection closing here must not mark disconnected a service that has
        -- meanwhile connected to another instance.
        INSERT INTO when_services (service_id, instance_id, seq, data)
            SELECT i, me, nextval('when_change_seq'), d::jsonb
            FROM unnest(service_ids, service_docs) AS u(i, d) WHERE d IS NOT NULL
            ON CONFLICT (service_id) DO UPDATE SET instance_id = excluded.instance_id,
                seq = excluded.seq, data = excluded.data
            WHERE when_services.instance_id = excluded.instance_id
                OR (excluded.data->>'connected')::boolean
                OR NOT (when_services.data->>'connected')::boolean;
        DELETE FROM when_workflows WHERE workflow_id = ANY(gone);
        DELETE FROM when_workflow_records WHERE workflow_id = ANY(gone);
        INSERT INTO when_workflows (workflow_id, instance_id, seq, finished_at, data)
            SELECT w, me, nextval('when_change_seq'), CASE WHEN t THEN now() END, d::jsonb
            FROM unnest(workflow_ids, finished, workflow_docs) AS u(w, t, d)
            ON CONFLICT (workflow_id) DO UPDATE SET instance_id = excluded.instance_id,
                seq = excluded.seq, data = excluded.data,
                finished_at = COALESCE(when_workflows.finished_at, excluded.finished_at);
        DELETE FROM when_workflow_records WHERE workflow_id = ANY(resync);
        -- Records and logs take their seq from the column default, in the batch's order.
        INSERT INTO when_workflow_records (workflow_id, kind, instance_id, data)
            SELECT w, k, me, d::jsonb FROM unnest(record_workflows, record_kinds, record_docs)
            WITH ORDINALITY AS u(w, k, d, n) ORDER BY n;
        INSERT INTO when_logs (workflow_id, instance_id, data)
            SELECT w, me, d::jsonb FROM unnest(log_workflows, log_docs)
            WITH ORDINALITY AS u(w, d, n) ORDER BY n;
        PERFORM pg_notify('{CHANGES}', me);
    END
    $$;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
"""The schema this hub writes; older databases are migrated at start, newer ones refused."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def dumps(document: Any) -> str:
    """A document as JSON text for a ``jsonb`` column: msgspec, several times cheaper than
    ``json.dumps`` on the store's thread, whose GIL time the hub's event loop waits out."""
    return _encode(document).decode()


def loads(data: str | bytes) -> Any:
    """A ``jsonb`` value read back (psycopg's JSON loader, on every connection of the
    store): msgspec, with ``json.loads`` for what only it reads (a number beyond a float)."""
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


class StoreUnavailable(RuntimeError):
    """The database is unreachable, not one the hub can use, or too old (one clear line)."""


@dataclass(slots=True)
class Mirror:
    """What other instances wrote since a ``seq``: applied to this instance's view."""

    services: list[tuple[str, bool, dict[str, Any]]] = field(default_factory=list)
    """(owner instance, lease alive, document)."""
    workflows: list[dict[str, Any]] = field(default_factory=list)
    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    owners: dict[str, str] = field(default_factory=dict)
    """Workflow id to the instance that wrote the document read (for ``workflows``)."""


# The bus's statements (see the module). Each is one statement, so in autocommit it is one
# transaction and one round trip: a row is committed before its notification goes out.

HEARTBEAT_SQL = (
    "INSERT INTO when_instances (instance_id, url) VALUES (%s, %s) "
    "ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now(), url = excluded.url"
)
LEASES_SQL = (
    "SELECT instance_id, heartbeat_at > now() - make_interval(secs => %s) FROM when_instances"
)
LEAVE_SQL = "DELETE FROM when_instances WHERE instance_id = %s"
PUT_COMMAND_SQL = (
    "WITH c AS (INSERT INTO when_commands (service_id, origin, message) "
    "VALUES (%(service)s, %(origin)s, %(message)s) RETURNING id, service_id) "
    f"SELECT id, pg_notify('{COMMANDS}', id || ' ' || left(service_id, 1000)) FROM c"
)
"""Write a command for a service held elsewhere and notify its id and service (the holder
claims it by id; a service id cut at 1,000 characters makes the holder scan instead)."""
CLAIM_COMMAND_SQL = (
    "UPDATE when_commands SET delivered_by = %(me)s, delivered_at = now() "
    "WHERE id = %(id)s AND delivered_at IS NULL AND service_id = %(service)s "
    "AND created_at > now() - make_interval(secs => %(ttl)s) RETURNING id, service_id, message"
)
"""Claim one notified command, if still undelivered and for the service its notification
named (held here): only one instance's claim succeeds, so it is delivered once. One service,
not the list of those held here: psycopg dumps a list in Python (a claim with 100 services
cost 250-340 us of client CPU, with one 110-130 us)."""
TAKE_COMMANDS_SQL = (
    "UPDATE when_commands SET delivered_by = %(me)s, delivered_at = now() WHERE id IN ("
    "SELECT id FROM when_commands WHERE delivered_at IS NULL AND service_id = ANY(%(services)s) "
    "AND created_at > now() - make_interval(secs => %(ttl)s) "
    "ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id, service_id, message"
)
"""Claim every undelivered, unexpired command for the services held here (the re-scan)."""
RELEASE_COMMAND_SQL = (
    "WITH r AS (UPDATE when_commands SET delivered_by = NULL, delivered_at = NULL "
    "WHERE id = %s RETURNING id, service_id) "
    f"SELECT pg_notify('{COMMANDS}', id || ' ' || left(service_id, 1000)) FROM r"
)
"""Give back a command that could not be sent (its service left this instance), notified
again: the instance its service reconnected to claims it."""
ANSWER_SQL = (
    "WITH a AS (UPDATE when_commands SET answer = %(answer)s::text WHERE id = %(id)s "
    f"RETURNING id, answer) SELECT pg_notify('{ANSWERS}', CASE WHEN octet_length(answer) < "
    f"{NOTIFY_LIMIT - 40} THEN id || ' ' || answer ELSE id::text END) FROM a"
)
"""Write a ``status`` answer and notify it: with the answer when it fits, else by id."""
GET_ANSWER_SQL = "SELECT answer FROM when_commands WHERE id = %s"
PHASE_NOTES_SQL = (
    f"SELECT pg_notify('{PHASES}', note) FROM json_array_elements_text(%s::json) AS note"
)
"""Phase changes of this instance's services, sent at once (they are written with the next
batch as well: a lost note only delays them). The notes travel as one JSON array, a single
text to dump (as a ``text[]`` psycopg dumped each in Python: 180-390 us of client CPU for one
to three notes, 100-140 us as JSON)."""


WRITE_BATCH_SQL = (
    "SELECT when_write_batch(%s, %b::text[], %b::text[], %b::text[], %b::text[], %b::bool[], "
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[])"
)
CHANGES_SQL = (
    "SELECT 0, s.seq, s.instance_id, "
    "(i.heartbeat_at > now() - make_interval(secs => %(lease)s))::text, s.data "
    "FROM when_services s LEFT JOIN when_instances i USING (instance_id) "
    "WHERE s.seq > %(seq)s AND s.instance_id <> %(me)s "
    "UNION ALL SELECT 1, seq, instance_id, NULL, data FROM when_workflows "
    "WHERE seq > %(seq)s AND instance_id <> %(me)s "
    "UNION ALL SELECT 2, seq, workflow_id, kind, data FROM when_workflow_records "
    "WHERE seq > %(seq)s AND instance_id <> %(me)s "
    "UNION ALL (SELECT 3, seq, NULL, NULL, data FROM when_logs "
    "WHERE seq > %(seq)s AND instance_id <> %(me)s ORDER BY seq LIMIT 100000) "
    "ORDER BY 1, 2"
)
"""Other instances' rows after a ``seq``, in one statement: one snapshot, as the four
``SELECT``s of a repeatable-read transaction gave, in one round trip instead of seven (a
round trip costs 60-90 us of the reader's CPU here). Rows are (part, seq, owner or workflow,
lease alive or kind, document): services, workflows, records, logs, each in ``seq`` order."""


class PostgresStore:
    """The tables behind one or several hub instances (see the module)."""

    def __init__(
        self,
        url: str,
        instance_id: str,
        *,
        log_limit: int = 10_000,
        record_limit: int = 1_000,
        retention: float | None = None,
        lease_timeout: float = 15.0,
        command_ttl: float = 300.0,
    ) -> None:
        self.url = url
        self.path = redact_url(url)
        self.instance_id = instance_id
        self.log_limit = max(0, log_limit)
        self.record_limit = max(1, record_limit)
        self.retention = retention
        """Seconds a finished workflow and a log record are kept (None: bounded by count only)."""
        self.lease_timeout = lease_timeout
        self.command_ttl = command_ttl
        self.skipped = 0
        self.loaded_seq = 0
        self.loaded_owners: dict[str, tuple[str, bool]] = {}
        """Service id to (owner instance, lease alive), as of ``load``."""
        self._db: psycopg.Connection[TupleRow] | None = None
        self._writes = 0
        self._touched: set[tuple[str, str]] = set()
        """(workflow, kind) written since the last prune (``record_limit`` is held there:
        a workflow may hold up to 50 batches' worth more between prunes)."""

    # ------------------------------------------------------------------ connection

    def open(self) -> None:
        """Connect and bring the schema up to date; ``StoreUnavailable`` in one line if not."""
        if self._db is not None:
            return
        try:
            db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"PostgreSQL at {self.path} is unreachable: {first_line(exc)}"
            ) from None
        set_json_loads(loads, db)
        try:
            if db.info.server_version < _MIN_SERVER:
                raise StoreUnavailable(
                    f"PostgreSQL at {self.path} is version {db.info.server_version // 10000}; "
                    f"the hub needs {_MIN_SERVER // 10000} or newer"
                )
            self._migrate(db)
        except psycopg.Error as exc:
            db.close()
            raise StoreUnavailable(
                f"cannot use PostgreSQL at {self.path}: {first_line(exc)}"
            ) from None
        except BaseException:
            db.close()
            raise
        self._db = db

    def _migrate(self, db: psycopg.Connection[TupleRow]) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS when_meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM when_meta WHERE key = 'schema_version'").fetchone()
            version = 0
            if row is not None:
                if not str(row[0]).isdigit():
                    raise StoreUnavailable(
                        f"PostgreSQL at {self.path}: when_meta.schema_version is {row[0]!r}, "
                        "not a when-coordinator hub schema; use another database"
                    )
                version = int(row[0])
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"PostgreSQL at {self.path} has hub schema {version}, newer than this "
                    f"hub's {SCHEMA_VERSION}: upgrade when-coordinator on this instance"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                db.execute(_MIGRATIONS[number - 1].encode())
                _log.info("hub store %s: migrated to schema %d", self.path, number)
            db.execute(
                "INSERT INTO when_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def _conn(self) -> psycopg.Connection[TupleRow]:
        if self._db is None or self._db.closed:
            self._db = None
            self.open()
        assert self._db is not None
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------ the HubStore part

    def load(self) -> Snapshot:
        """Everything kept; services come back disconnected (``loaded_owners`` says which
        are held by a live instance)."""
        db = self._conn()
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.loaded_seq = int(
                db.execute(
                    "SELECT GREATEST((SELECT MAX(seq) FROM when_services), "
                    "(SELECT MAX(seq) FROM when_workflows), "
                    "(SELECT MAX(seq) FROM when_workflow_records), "
                    "(SELECT MAX(seq) FROM when_logs), 0)"
                ).fetchone()[0]  # type: ignore[index]
            )
            services: list[ServiceState] = []
            self.loaded_owners = {}
            for owner, alive, data in db.execute(self._services_sql(""), (self.lease_timeout,)):
                service = self._parse(ServiceState.from_dict, data)
                if service is not None:
                    services.append(service)
                    self.loaded_owners[service.service_id] = (owner, bool(alive))
            records: dict[str, dict[str, list[Any]]] = {}
            for workflow_id, kind, data in db.execute(
                "SELECT workflow_id, kind, data FROM when_workflow_records ORDER BY seq"
            ):
                records.setdefault(workflow_id, {}).setdefault(kind, []).append(data)
            workflows: list[WorkflowState] = []
            for (data,) in db.execute("SELECT data FROM when_workflows ORDER BY seq"):
                if isinstance(data, dict):
                    for kind, items in records.get(str(data.get("workflow_id", "")), {}).items():
                        data[kind] = items[-self.record_limit :]
                workflow = self._parse(WorkflowState.from_dict, data)
                if workflow is not None:
                    workflows.append(workflow)
            logs = [
                log
                for (data,) in db.execute(
                    "SELECT data FROM (SELECT seq, data FROM when_logs ORDER BY seq DESC "
                    "LIMIT %s) AS newest ORDER BY seq",
                    (self.log_limit,),
                )
                if (log := self._parse(StoredLog.from_dict, data)) is not None
            ]
        return Snapshot(services=services, workflows=workflows, logs=logs)

    def _services_sql(self, where: str) -> str:
        return (
            "SELECT s.instance_id, i.heartbeat_at > now() - make_interval(secs => %s), s.data "
            "FROM when_services s LEFT JOIN when_instances i USING (instance_id) "
            f"{where} ORDER BY s.seq"
        )

    def _parse(self, parse: Any, data: Any) -> Any:
        try:
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__} where an object belongs")
            return parse(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.skipped += 1
            _log.warning("hub store %s: skipped an unreadable row: %s", self.path, exc)
            return None

    def write(self, batch: StoreBatch) -> None:
        """Apply one batch in one transaction, in ``seq`` order, and notify the others.

        One statement (``when_write_batch``, schema 2), so one round trip: as statements of
        a transaction (seven or more), each cost 60-90 us of this thread's CPU and a wake-up
        of the server's, and psycopg's pipeline mode saved the waits but not the CPU."""
        if not batch:
            return
        rows = [(wf, kind, record.as_dict()) for wf, kind, record in batch.records]
        for workflow_id, lists in batch.resync.items():
            rows += [
                (workflow_id, kind, record.as_dict())
                for kind, records in lists.items()
                for record in records
            ]
        services = batch.services
        workflows = batch.workflows
        kept = [(wf, doc) for wf, doc in workflows.items() if doc is not None]
        logs = batch.logs
        params = (
            self.instance_id,
            list(services),
            [None if doc is None else dumps(doc) for doc in services.values()],
            [wf for wf, doc in workflows.items() if doc is None],
            [wf for wf, _ in kept],
            [doc.get("phase") in _TERMINAL for _, doc in kept],
            [dumps(doc) for _, doc in kept],
            list(batch.resync),
            [wf for wf, _, _ in rows],
            [kind for _, kind, _ in rows],
            [dumps(data) for _, _, data in rows],
            [log.workflow_id for log in logs],
            [dumps(log.as_dict()) for log in logs],
        )
        db = self._conn()
        db.execute(WRITE_BATCH_SQL, params)
        self._touched.update((wf, kind) for wf, kind, _ in rows)
        self._writes += 1
        if self._writes % 50 == 1:
            with db.transaction(), db.cursor() as cur:
                self._prune(cur)

    def _prune(self, cur: psycopg.Cursor[TupleRow]) -> None:
        """Retention: records beyond ``record_limit`` per workflow and kind (of those written
        since the last prune), logs beyond ``log_limit``; with ``retention``, logs and
        finished workflows older than it; delivered or expired commands."""
        if self._touched:
            cur.executemany(
                "DELETE FROM when_workflow_records WHERE workflow_id = %(wf)s AND "
                "kind = %(kind)s AND seq <= (SELECT seq FROM when_workflow_records WHERE "
                "workflow_id = %(wf)s AND kind = %(kind)s ORDER BY seq DESC LIMIT 1 "
                "OFFSET %(limit)s)",
                [
                    {"wf": wf, "kind": kind, "limit": self.record_limit}
                    for wf, kind in self._touched
                ],
            )
            self._touched = set()
        cur.execute(
            "DELETE FROM when_logs WHERE seq <= (SELECT seq FROM when_logs ORDER BY seq DESC "
            "LIMIT 1 OFFSET %s)",
            (self.log_limit,),
        )
        if self.retention is not None:
            cur.execute(
                "DELETE FROM when_logs WHERE created_at < now() - make_interval(secs => %s)",
                (self.retention,),
            )
            cur.execute(
                "WITH old AS (DELETE FROM when_workflows WHERE finished_at < now() - "
                "make_interval(secs => %s) RETURNING workflow_id) "
                "DELETE FROM when_workflow_records WHERE workflow_id IN (SELECT * FROM old)",
                (self.retention,),
            )
        cur.execute(
            "DELETE FROM when_commands WHERE created_at < now() - make_interval(secs => %s)",
            (max(self.command_ttl * 2, 60.0),),
        )

    def prune(self) -> None:
        """Apply retention now (the hub does it every 50 writes)."""
        db = self._conn()
        with db.transaction(), db.cursor() as cur:
            self._prune(cur)

    def counts(self) -> dict[str, int]:
        db = self._conn()
        tables: Sequence[str] = ("services", "workflows", "workflow_records", "logs", "commands")
        return {
            t: int(db.execute(f"SELECT COUNT(*) FROM when_{t}").fetchone()[0])  # type: ignore[index]
            for t in tables
        }

    # ------------------------------------------------------------------ the bus part

    def changes_since(self, seq: int) -> Mirror:
        """What other instances wrote after ``seq`` (``seq`` order is commit order). This
        instance's own rows are left in the database: half the rows or more, whose JSON the
        reader would otherwise parse only to drop."""
        mirror = Mirror(seq=seq)
        params = {"seq": seq, "me": self.instance_id, "lease": self.lease_timeout}
        top = seq
        rows = self._conn().execute(CHANGES_SQL, params).fetchall()
        for part, row_seq, key, extra, data in rows:
            top = max(top, row_seq)
            if not isinstance(data, dict):
                continue
            if part == 0:
                mirror.services.append((key, extra == "true", data))
            elif part == 1:
                mirror.workflows.append(data)
                mirror.owners[str(data.get("workflow_id", ""))] = key
            elif part == 2:
                if extra in KINDS:
                    mirror.records.append((key, extra, data))
            else:
                mirror.logs.append(data)
        mirror.seq = top
        return mirror


_TERMINAL = ("completed", "failed", "cancelled")
