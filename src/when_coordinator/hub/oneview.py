"""What makes several hub instances one view: each reads what the others persisted, and
hears their services' phase changes at once.

- ``_changes_loop``: when notified (``when_hub_changes``), and after every (re)LISTEN, an
  instance reads the other instances' changes since the last read (``PostgresStore
  .changes_since``) on a thread of its own and applies them on its loop;
- phase notes: the phase changes of an instance's own services are notified at once
  (``when_hub_phases``, the workflow's document with them), besides being written with the
  next batch, so the service's answer to a command reaches the instance that sent it without
  waiting for a batch or a read. A note applied ahead of its batch is remembered
  (``_early``), so that an older document read meanwhile does not undo it.

A mixin of ``bus.PostgresBus``, which holds the attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import first_line
from .store import summary

if TYPE_CHECKING:
    from .changes import PhaseEvent
    from .model import WorkflowState
    from .pglanes import Control, Lane
    from .pgstore import Mirror, PostgresStore
    from .records import StoredLog
    from .view import BusHost

__all__ = ["OneView"]

_log = logging.getLogger("when_coordinator.hub")


class OneView:
    """See the module docstring."""

    if TYPE_CHECKING:
        _hub: BusHost
        _store: PostgresStore
        _control: Control
        _reader: Lane
        _seq: int
        _owners: dict[str, str]
        _alive: set[str]
        _want_changes: asyncio.Event
        _outgoing: deque[dict[str, Any]]
        _draining: bool
        _early: dict[str, tuple[str, float]]
        mirrored: int
        notes_sent: int
        last_error: str

        def _post(self, callback: Callable[..., object], *args: Any) -> None: ...

    async def _changes_loop(self) -> None:
        while True:
            await self._want_changes.wait()
            self._want_changes.clear()
            try:
                mirror, logs = await self._reader.run(functools.partial(_read, seq=self._seq))
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                _log.warning("hub bus: reading other instances' changes failed: %s", exc)
                await asyncio.sleep(1.0)
                self._want_changes.set()
                continue
            self._seq = mirror.seq
            self._hub._apply_remote(functools.partial(self._apply, mirror, logs))

    def _apply(self, mirror: Mirror, logs: list[StoredLog]) -> None:
        state, local = self._hub.state, self._hub._local_services()
        for owner, alive, document in mirror.services:
            service_id = str(document.get("service_id", ""))
            if service_id in local:
                continue  # this instance holds it now: its own view is the truth
            self._owners[service_id] = owner
            if alive:  # read with the row: fresher than the last lease round
                self._alive.add(owner)
            connected = bool(document.get("connected")) and alive
            with contextlib.suppress(ValueError, KeyError, TypeError):
                state.mirror_service(document, connected)
        records: dict[str, list[tuple[str, Any]]] = {}
        for workflow_id, kind, data in mirror.records:
            records.setdefault(workflow_id, []).append((kind, data))
        for read in mirror.workflows:
            document, workflow_id = read, str(read.get("workflow_id", ""))
            if str(read.get("service_id", "")) in local:
                continue
            rows: Sequence[tuple[str, Any]] = records.get(workflow_id, ())
            early = self._early.get(workflow_id)
            current = state.workflows.get(workflow_id)
            if early is not None and current is not None:
                # A phase note got here first: what it brought is not applied twice, and a
                # document written before it does not undo it.
                rows = _unseen(current, rows)
                stale = mirror.owners.get(workflow_id) == early[0] and _updated(document) < early[1]
                if stale:
                    if not rows:
                        continue
                    document = summary(current)
                else:
                    del self._early[workflow_id]
            with contextlib.suppress(ValueError, KeyError, TypeError):
                state.mirror_workflow(document, rows)
                self.mirrored += 1
        if logs:
            state.mirror_logs(logs)

    # ------------------------------------------------------------------ phase notes

    def _phase_changed(self, event: PhaseEvent) -> None:
        """One of this instance's services changed a workflow's phase: tell the others now,
        the workflow's document with the change (sent even when no other instance is known
        alive: one may have started since the last lease round). The loop only takes the
        document (fresh dicts and lists); the bus's thread encodes and sends it."""
        workflow = self._hub.state.workflows.get(event.workflow_id)
        if workflow is None or len(self._outgoing) >= _MAX_NOTES:
            return  # the batch carries it
        self._outgoing.append(
            {
                "instance": self._store.instance_id,
                "workflow": summary(workflow),
                "changes": [event.change.as_dict()],
            }
        )
        if not self._draining:
            self._draining = True
            try:
                self._control.submit_call(self._send_notes)
            except RuntimeError:  # closing
                self._draining = False

    def _send_notes(self) -> None:
        """On the bus's thread: send what waits, in one statement. No turn of the event loop
        between two sends (under load a turn took tens of ms, and the notes that came during
        a send waited for it); what came meanwhile goes in a call queued behind the other
        statements waiting for this thread (commands, answers, leases)."""
        from .pgstore import NOTIFY_LIMIT, PHASE_NOTES_SQL  # noqa: PLC0415

        outgoing = self._outgoing
        payloads = []
        while outgoing:
            text = json.dumps(outgoing.popleft())
            if len(text.encode()) <= NOTIFY_LIMIT:  # else the batch carries it
                payloads.append(text)
        if payloads:
            try:
                self._control.execute(PHASE_NOTES_SQL, (json.dumps(payloads),))
                self.notes_sent += len(payloads)
            except Exception as exc:  # the batch carries them
                self.last_error = first_line(exc)
        self._draining = False
        if outgoing and not self._draining:  # else the loop's next note starts a send
            self._draining = True
            try:
                self._control.submit_call(self._send_notes)
            except RuntimeError:  # closing
                self._draining = False

    def _on_phase_note(self, payload: str) -> None:
        """In the listener's thread: read there, applied on the loop."""
        try:
            note = json.loads(payload)
            owner, document = str(note["instance"]), dict(note["workflow"])
            changes = [dict(c) for c in note["changes"]]
        except (ValueError, KeyError, TypeError):
            return
        if owner == self._store.instance_id:
            return
        apply = functools.partial(self._apply_note, owner, document, changes)
        self._post(self._hub._apply_remote, apply)

    def _apply_note(
        self, owner: str, document: dict[str, Any], changes: list[dict[str, Any]]
    ) -> None:
        workflow_id = str(document.get("workflow_id", ""))
        current = self._hub.state.workflows.get(workflow_id)
        if current is None or str(document.get("service_id", "")) in self._hub._local_services():
            return  # unknown here yet (the batch brings it whole), or held here now
        updated = _updated(document)
        if current.updated_at > updated:
            return  # a document written after the note was read first: it holds all this
        rows = _unseen(current, [("history", change) for change in changes])
        if current.updated_at == updated and not rows:
            return  # the same moment's document (changes of one frame come in two notes)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self._hub.state.mirror_workflow(document, rows)
            if len(self._early) >= _MAX_NOTES:
                self._early.pop(next(iter(self._early)))
            self._early[workflow_id] = (owner, updated)


_MAX_NOTES = 10_000
"""Workflows with phase notes waiting to be sent, or applied ahead of their batch, at most."""


def _read(store: PostgresStore, seq: int) -> tuple[Mirror, list[StoredLog]]:
    """Other instances' changes since ``seq``, their logs parsed here, on the reader's
    thread: parsed on the event loop, a busy instance's logs held it for tens of ms at a
    time (p99 65 ms in bench_hub_postgres), and every command in flight waited; a thread
    gives the loop the GIL back every switch interval."""
    from .records import StoredLog  # noqa: PLC0415

    mirror = store.changes_since(seq)
    logs = []
    for data in mirror.logs:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            logs.append(StoredLog.from_dict(data))
    return mirror, logs


def _updated(document: Mapping[str, Any]) -> float:
    try:
        return float(document.get("updated_at", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _unseen(workflow: WorkflowState, rows: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """``rows`` but the phase changes the workflow's recent history already holds (a note
    and the batch that writes the same change, in either order)."""
    recent = [change.as_dict() for change in workflow.history[-_RECENT:]]
    return [row for row in rows if row[0] != "history" or row[1] not in recent]


_RECENT = 32
"""Phase changes compared against (a note holds at most those since the last batch)."""
