"""The base of ``HubState``: what it holds, what changed, and the bounds on both.

``Retention`` owns the state's collections and every bound on them (counts and estimated
bytes, see ``HubLimits``): which workflow is forgotten when there are too many, which record,
checkpoint ``state`` or log entry a byte bound pushes out, and the counters of what was
evicted. The message rules (``rules.py``) and the rest of ``HubState`` (``state.py``) build on
it; none of it does I/O.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from typing import Any, TypeVar

import msgspec

from ..protocol import Phase, ProtocolError
from .bounds import ITEM_OVERHEAD, HubLimits, cut, json_size
from .changes import Changes
from .logbuffer import LogBuffer, PackedLog
from .model import ConnectionState, ServiceState, WorkflowState
from .records import Anomaly, CheckpointRecord, PhaseChange
from .versions import HUB_PROTOCOL_VERSION, negotiate_version

__all__ = ["Retention"]

_R = TypeVar("_R")


def append_bounded(items: tuple[_R, ...], item: _R, limit: int) -> tuple[_R, ...]:
    """A new tuple with ``item`` appended, keeping the newest ``limit``."""
    if len(items) >= limit:
        return (*items[len(items) - limit + 1 :], item) if limit > 0 else ()
    return (*items, item)


RECORD_LISTS = ("history", "checkpoints", "errors")
_LISTED = ITEM_OVERHEAD + 300
"""Bytes counted per child id and per anomaly text of a workflow (anomaly texts are cut at
600 characters, most are far shorter)."""
_WORKFLOW_OVERHEAD = 1_000 + 6 * 1_024
"""Bytes counted for a workflow's record itself, its six ids counted at ``max_id``'s default."""

_Record = Any  # PhaseChange | CheckpointRecord | ErrorRecord


def _record_size(record: _Record) -> int:
    """Estimated bytes of a history, checkpoint or error record (a checkpoint's ``state``
    is counted apart, against ``HubLimits.checkpoint_state_bytes``)."""
    if isinstance(record, PhaseChange):
        text = len(record.reason) + len(record.checkpoint_id)
    elif isinstance(record, CheckpointRecord):
        text = len(record.checkpoint_id) + len(record.reason)
    else:
        text = len(record.error) + len(record.action_id)
    return 3 * ITEM_OVERHEAD + text + len(record.timestamp)


class Retention:
    """The collections of ``HubState`` and their bounds (see ``HubState`` for the arguments)."""

    def __init__(
        self,
        *,
        hub_protocol_version: str = HUB_PROTOCOL_VERSION,
        log_buffer: int = 10_000,
        workflow_log_buffer: int = 1_000,
        max_workflows: int = 10_000,
        max_history: int = 1_000,
        max_records: int = 1_000,
        max_anomalies: int = 100,
        max_closed: int = 100,
        max_services: int = 10_000,
        limits: HubLimits | None = None,
    ) -> None:
        negotiate_version(hub_protocol_version, hub_protocol_version)  # validates the format
        self.hub_protocol_version = hub_protocol_version
        self.services: dict[str, ServiceState] = {}
        self.workflows: dict[str, WorkflowState] = {}
        self.connections: dict[str, ConnectionState] = {}
        self.limits = limits if limits is not None else HubLimits()
        self.logs = LogBuffer(log_buffer, self.limits.log_buffer_bytes)
        self.workflow_logs: dict[str, LogBuffer] = {}
        self.workflow_log_bytes = 0
        """Estimated bytes of all workflow log buffers together."""
        self.workflows_bytes = 0
        """Estimated bytes of all workflows (records and text fields, checkpoint states apart)."""
        self.checkpoint_state_bytes = 0
        """Estimated bytes of all checkpoint ``state`` objects."""
        self.evicted: dict[str, int] = {
            "workflow_logs": 0,
            "workflow_records": 0,
            "checkpoint_states": 0,
            "texts_truncated": 0,
        }
        """What the byte bounds pushed out (besides ``logs.evicted`` and ``workflows_evicted``)."""
        self._log_lru: OrderedDict[str, None] = OrderedDict()
        """Workflows with logs, the one that logged least recently first."""
        self._sizes: dict[str, list[int]] = {}
        """Per workflow: bytes of history, checkpoints, errors, the rest, and the total."""
        self._state_sizes: dict[int, int] = {}
        """Bytes of each retained checkpoint ``state``, by ``id()`` of its (live) record."""
        self._stateful: OrderedDict[str, None] = OrderedDict()
        """Workflows holding checkpoint states, the longest holder first."""
        self._touched: WorkflowState | None = None
        self._progressed: set[str] = set()
        """Workflows that sent a ``progress`` (a completed one keeps what it reported)."""
        self.anomalies: deque[Anomaly] = deque(maxlen=max(1, max_anomalies) * 10)
        """The most recent anomalies of the whole hub."""
        self.anomaly_count = 0
        self.workflows_evicted = 0
        self.services_evicted = 0
        self._max_services = max(1, max_services)
        self.messages_applied: Counter[str] = Counter()
        """Messages from services applied, by type (``register`` included): for metrics."""
        self._workflow_log_buffer = workflow_log_buffer
        self._max_workflows = max(1, max_workflows)
        self._max_history = max(1, max_history)
        self._max_records = max(1, max_records)
        self._max_anomalies = max(1, max_anomalies)
        self._max_closed = max(0, max_closed)
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._finished_of: dict[str, dict[str, None]] = {}
        """``_finished`` by service id, and ``_of_service`` every workflow by service id, each in
        its order: a full hub evicts the newcomer's service's own oldest workflow first, and
        looking for it through everyone's cost each new workflow a walk of up to
        ``max_workflows`` (15x the work of a hub with room, and under a flood of new ids). An
        entry may be stale (the workflow is another service's now): checked when used."""
        self._of_service: dict[str, dict[str, None]] = {}
        self._orphans: dict[str, dict[str, None]] = {}
        """Workflows by the id of a parent the hub does not know (yet): a parent announced
        after its children links them without looking at every workflow."""
        self._closed: deque[str] = deque()
        self._next_service = itertools.count(1)
        self._changes = Changes()
        self._spare: Changes | None = None

    def take_changes(self) -> Changes:
        """Return what changed since the last call and start a new record of changes."""
        changes = self._changes
        if changes:
            spare, self._spare = self._spare, None
            self._changes = spare if spare is not None else Changes()
        return changes

    def give_back(self, changes: Changes) -> None:
        """A taken record of changes that nobody keeps (the store has merged it): emptied and
        reused by the next ``take_changes``, which a hub with a store calls after every frame."""
        changes.clear()
        self._spare = changes

    def discard_changes(self) -> None:
        """Forget what changed (when nobody watches or stores it): cheaper than taking it."""
        self._changes.clear()

    def _anomaly(
        self,
        text: str,
        now: float,
        *,
        service: ServiceState | None = None,
        workflow: WorkflowState | None = None,
        workflow_id: str = "",
    ) -> None:
        self.anomaly_count += 1
        text = cut(text, 600)
        anomaly = Anomaly(
            text,
            service.service_id if service is not None else "",
            workflow.workflow_id if workflow is not None else workflow_id,
            now,
        )
        self.anomalies.append(anomaly)
        self._changes.events.append(anomaly)
        if workflow is not None:
            workflow.anomalies = append_bounded(workflow.anomalies, text, self._max_anomalies)
            workflow.anomaly_count += 1
            self._changes.workflows.add(workflow.workflow_id)
        elif service is not None:
            service.anomalies = append_bounded(service.anomalies, text, self._max_anomalies)
            service.anomaly_count += 1
            self._changes.services.add(service.service_id)

    # ------------------------------------------------------------------ workflows

    def _link_orphans(self, parent: WorkflowState) -> None:
        waiting = self._orphans.pop(parent.workflow_id, None)
        if not waiting:
            return
        workflows = self.workflows
        children = tuple(
            child
            for child in waiting
            if (w := workflows.get(child)) is not None
            and w is not parent
            and w.parent_workflow_id == parent.workflow_id
        )
        if children:
            parent.children = tuple(dict.fromkeys((*parent.children, *children)))

    def _wait_for_parent(self, workflow: WorkflowState) -> None:
        parent_id = workflow.parent_workflow_id
        if parent_id and parent_id not in self.workflows:
            self._orphans.setdefault(parent_id, {})[workflow.workflow_id] = None

    def _forget_orphan(self, workflow: WorkflowState) -> None:
        waiting = self._orphans.get(workflow.parent_workflow_id)
        if waiting is not None:
            waiting.pop(workflow.workflow_id, None)
            if not waiting:
                del self._orphans[workflow.parent_workflow_id]

    def _evict(self, service_id: str = "", keep: str = "", own_first: bool = False) -> None:
        """Beyond ``max_workflows`` (or ``limits.workflows_bytes``), forget the oldest finished
        workflow (the newcomer's service's own first), else the oldest running one of the
        newcomer's service, and only then anyone's: a service flooding the hub with new
        workflows pushes out its own, not the running workflows of others. ``own_first`` (for
        the byte bound: one service's large records) takes all of the service's own workflows
        before anyone else's. ``keep`` (the workflow being updated) is never chosen."""
        budget = self.limits.workflows_bytes
        while len(self.workflows) > self._max_workflows or (
            self.workflows_bytes > budget and len(self.workflows) > 1
        ):
            victim = self._victim(service_id, keep, own_first)
            if victim is None:
                return
            self._forget(victim)

    def _victim(self, service_id: str, keep: str, own_first: bool) -> str | None:
        if service_id:
            own = self._oldest_own(self._finished_of, service_id, keep)
            if own is None and own_first:
                own = self._oldest_own(self._of_service, service_id, keep)
            if own is not None:
                return own
        for wf in self._finished:
            if wf != keep:
                return wf
        if service_id:
            own = self._oldest_own(self._of_service, service_id, keep)
            if own is not None:
                return own
        return next((wf for wf in self.workflows if wf != keep), None)

    def _oldest_own(
        self, index: dict[str, dict[str, None]], service_id: str, keep: str
    ) -> str | None:
        """The first workflow of ``service_id`` in ``index`` (``_finished_of``, ``_of_service``)
        other than ``keep``; stale entries met on the way are dropped."""
        ids = index.get(service_id)
        if ids is None:
            return None
        found, stale = None, []
        for wf in ids:
            workflow = self.workflows.get(wf)
            if workflow is None or workflow.service_id != service_id:
                stale.append(wf)
            elif wf != keep:
                found = wf
                break
        for wf in stale:
            del ids[wf]
        if not ids:
            del index[service_id]
        return found

    def _forget(self, victim: str) -> None:
        """Remove a workflow and everything the hub holds for it, keeping the byte totals."""
        gone = self.workflows.pop(victim, None)
        self._finished.pop(victim, None)
        if gone is not None:
            for index in (self._finished_of, self._of_service):
                self._unindex(index, gone)
            parent_id = gone.parent_workflow_id
            if parent_id:
                self._forget_orphan(gone)
                parent = self.workflows.get(parent_id)
                if parent is not None and victim in parent.children:
                    parent.children = tuple(c for c in parent.children if c != victim)
            for record in gone.checkpoints:
                self._drop_state(record)
        self._stateful.pop(victim, None)
        sizes = self._sizes.pop(victim, None)
        if sizes is not None:
            self.workflows_bytes -= sizes[4]
        buffer = self.workflow_logs.pop(victim, None)
        if buffer is not None:
            self.workflow_log_bytes -= buffer.bytes
        self._log_lru.pop(victim, None)
        self._progressed.discard(victim)
        self.workflows_evicted += 1
        self._changes.workflows.discard(victim)
        self._changes.removed_workflows.add(victim)

    # ------------------------------------------------------------------ byte bounds

    def _log_buffer(self) -> LogBuffer:
        return LogBuffer(self._workflow_log_buffer, self.limits.workflow_log_buffer_bytes)

    def _text(self, text: str) -> str:
        """A reported free-text field as kept: cut at ``limits.max_text`` (counted)."""
        if len(text) <= self.limits.max_text:
            return text
        self.evicted["texts_truncated"] += 1
        return cut(text, self.limits.max_text)

    def _check_id(self, value: str, what: str) -> None:
        if len(value) > self.limits.max_id:
            raise ProtocolError(f"{what} of {len(value)} characters (at most {self.limits.max_id})")

    def _sizes_of(self, workflow: WorkflowState) -> list[int]:
        sizes = self._sizes.get(workflow.workflow_id)
        if sizes is None:
            sizes = self._sizes[workflow.workflow_id] = [0, 0, 0, 0, 0]
        return sizes

    def _push(self, workflow: WorkflowState, index: int, item: _Record, limit: int) -> None:
        """Append to history (0), checkpoints (1) or errors (2) within ``limit`` records."""
        name = RECORD_LISTS[index]
        items: tuple[_Record, ...] = (*getattr(workflow, name), item)
        sizes = self._sizes_of(workflow)
        sizes[index] += _record_size(item)
        if len(items) > limit:
            for dropped in items[: len(items) - limit]:
                sizes[index] -= _record_size(dropped)
                self._drop_state(dropped)
            items = items[len(items) - limit :]
        setattr(workflow, name, items)
        if sizes[0] + sizes[1] + sizes[2] > self.limits.workflow_bytes:
            self._trim_records(workflow, sizes)

    def _trim_records(self, workflow: WorkflowState, sizes: list[int]) -> None:
        """Within ``limits.workflow_bytes``: the largest list loses its oldest records (each
        list keeps its newest)."""
        budget = self.limits.workflow_bytes
        while sizes[0] + sizes[1] + sizes[2] > budget:
            candidates = [i for i in range(3) if len(getattr(workflow, RECORD_LISTS[i])) > 1]
            if not candidates:
                return
            index = max(candidates, key=lambda i: sizes[i])
            items = getattr(workflow, RECORD_LISTS[index])
            setattr(workflow, RECORD_LISTS[index], items[1:])
            sizes[index] -= _record_size(items[0])
            self._drop_state(items[0])
            self.evicted["workflow_records"] += 1

    def _account(self, workflow: WorkflowState) -> None:
        """Refresh a workflow's byte estimate after a change, then hold the hub-wide bound.

        On every message: kept to a few dozen operations (ids are bounded by ``max_id``, so
        they are counted at that bound rather than measured)."""
        workflow_id = workflow.workflow_id
        sizes = self._sizes.get(workflow_id)
        if self.workflows.get(workflow_id) is not workflow:
            self._sizes.pop(workflow_id, None)  # forgotten while being updated
            return
        if sizes is None:
            sizes = self._sizes[workflow_id] = [0, 0, 0, 0, 0]
        w = workflow
        total = (
            sizes[0]
            + sizes[1]
            + sizes[2]
            + len(w.message)
            + len(w.stage)
            + len(w.current_action)
            + len(w.reason)
            + len(w.action_type)
            + len(w.action_id)
            + (len(w.children) + len(w.anomalies)) * _LISTED
            + _WORKFLOW_OVERHEAD
        )
        if total != sizes[4]:
            self.workflows_bytes += total - sizes[4]
            sizes[4] = total
            if self.workflows_bytes > self.limits.workflows_bytes:
                self._evict(workflow.service_id, keep=workflow_id, own_first=True)

    def _add_state(self, workflow: WorkflowState, record: CheckpointRecord) -> None:
        """Count a new checkpoint's ``state``; past ``limits.checkpoint_state_bytes`` drop the
        oldest states of the longest holders (the records stay, without ``state``)."""
        if (
            record.state is None
            or self.workflows.get(workflow.workflow_id) is not workflow
            or not any(r is record for r in reversed(workflow.checkpoints))
        ):
            return
        size = json_size(record.state) + ITEM_OVERHEAD
        self._state_sizes[id(record)] = size
        self.checkpoint_state_bytes += size
        self._stateful.setdefault(workflow.workflow_id, None)
        while self.checkpoint_state_bytes > self.limits.checkpoint_state_bytes and self._stateful:
            holder_id = next(iter(self._stateful))
            holder = self.workflows.get(holder_id)
            if holder is None or not self._strip_oldest_state(holder):
                del self._stateful[holder_id]

    def _strip_oldest_state(self, workflow: WorkflowState) -> bool:
        """Drop the oldest retained ``state``; False when the workflow holds none."""
        records = workflow.checkpoints
        for index, record in enumerate(records):
            if id(record) in self._state_sizes and record.state is not None:
                self._drop_state(record)
                bare = msgspec.structs.replace(record, state=None)
                workflow.checkpoints = (*records[:index], bare, *records[index + 1 :])
                self.evicted["checkpoint_states"] += 1
                self._changes.workflows.add(workflow.workflow_id)
                return True
        return False

    def _drop_state(self, record: object) -> None:
        size = self._state_sizes.pop(id(record), None)
        if size is not None:
            self.checkpoint_state_bytes -= size

    def _keep_log(self, packed: PackedLog, size: int, workflow_id: str) -> bool:
        """Add a packed record to the workflow's buffer within every log bound."""
        buffer = self.workflow_logs.get(workflow_id)
        if buffer is None:
            return False
        evicted = buffer.evicted
        self.workflow_log_bytes += size - buffer.append_packed(packed, size)
        self.evicted["workflow_logs"] += buffer.evicted - evicted
        lru = self._log_lru
        if workflow_id in lru:
            lru.move_to_end(workflow_id)
        else:
            lru[workflow_id] = None
        budget = self.limits.workflow_logs_bytes
        while self.workflow_log_bytes > budget and lru:
            oldest = next(iter(lru))
            victim = self.workflow_logs.get(oldest)
            if victim is None or not victim.entries:
                del lru[oldest]
                continue
            self.workflow_log_bytes -= victim.pop_oldest()
            self.evicted["workflow_logs"] += 1
        return True

    def record_bytes(self, record: _Record) -> int:
        """Estimated bytes of a history, checkpoint or error record, its ``state`` included."""
        return _record_size(record) + self._state_sizes.get(id(record), 0)

    def memory(self) -> dict[str, dict[str, int]]:
        """What the hub holds against each byte bound, and what the bounds pushed out."""
        limits = self.limits
        return {
            "logs": {
                "bytes": self.logs.bytes,
                "limit": limits.log_buffer_bytes,
                "count": len(self.logs),
                "evicted": self.logs.evicted,
            },
            "workflow_logs": {
                "bytes": self.workflow_log_bytes,
                "limit": limits.workflow_logs_bytes,
                "count": sum(len(b) for b in self.workflow_logs.values()),
                "evicted": self.evicted["workflow_logs"],
            },
            "workflows": {
                "bytes": self.workflows_bytes,
                "limit": limits.workflows_bytes,
                "count": len(self.workflows),
                "evicted": self.workflows_evicted,
                "records_evicted": self.evicted["workflow_records"],
                "texts_truncated": self.evicted["texts_truncated"],
            },
            "services": {
                "count": len(self.services),
                "limit": self._max_services,
                "evicted": self.services_evicted,
            },
            "checkpoint_states": {
                "bytes": self.checkpoint_state_bytes,
                "limit": limits.checkpoint_state_bytes,
                "count": len(self._state_sizes),
                "evicted": self.evicted["checkpoint_states"],
            },
        }

    def _settle(self, workflow: WorkflowState) -> None:
        if workflow.phase.is_terminal:
            self._finished[workflow.workflow_id] = None
            self._index(self._finished_of, workflow)
        elif workflow.workflow_id in self._finished:  # reopened: a new run of the id
            del self._finished[workflow.workflow_id]
            self._unindex(self._finished_of, workflow)

    def _note_service(self, workflow: WorkflowState) -> None:
        """Index ``workflow`` under its (new) service id; where it was is stale now."""
        self._index(self._of_service, workflow)
        if workflow.workflow_id in self._finished:
            self._index(self._finished_of, workflow)

    @staticmethod
    def _index(index: dict[str, dict[str, None]], workflow: WorkflowState) -> None:
        ids = index.get(workflow.service_id)
        if ids is None:
            ids = index[workflow.service_id] = {}
        ids[workflow.workflow_id] = None

    @staticmethod
    def _unindex(index: dict[str, dict[str, None]], workflow: WorkflowState) -> None:
        ids = index.get(workflow.service_id)
        if ids is not None:
            ids.pop(workflow.workflow_id, None)
            if not ids:
                del index[workflow.service_id]

    def _complete(self, workflow: WorkflowState) -> None:
        """A workflow that reaches ``completed`` without ever reporting progress has done all
        its work: 100%. One that reported progress shows what it reported."""
        if (
            workflow.phase is Phase.COMPLETED
            and workflow.progress == 0.0
            and workflow.workflow_id not in self._progressed
        ):
            workflow.progress = 100.0

    def _restore_sizes(self, workflow: WorkflowState) -> None:
        """Account a restored workflow against the byte bounds (they may be lower now)."""
        sizes = self._sizes_of(workflow)
        for index, name in enumerate(RECORD_LISTS):
            sizes[index] = sum(_record_size(r) for r in getattr(workflow, name))
        self._trim_records(workflow, sizes)
        for record in workflow.checkpoints:
            self._add_state(workflow, record)
        self._account(workflow)

    def _forget_sizes(self, workflow: WorkflowState) -> None:
        """Take a replaced workflow out of the byte totals."""
        for record in workflow.checkpoints:
            self._drop_state(record)
        self._stateful.pop(workflow.workflow_id, None)
        sizes = self._sizes.pop(workflow.workflow_id, None)
        if sizes is not None:
            self.workflows_bytes -= sizes[4]
