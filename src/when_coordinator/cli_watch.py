"""``watch`` and ``logs --follow``: the operator event stream on a terminal, a pipe or as JSON.

One loop (``follow``) owns the operator WebSocket: it subscribes, sends the requests that fill
in what happened before (recent logs, anomalies), hands every event to a sink, and when the
hub goes away it says so and dials again until the hub is back (a fresh snapshot then
replaces what the sink knew). Between events it wakes the sink when the sink asks to (the
clock every second; a redraw skipped because the previous one was under 0.1 s ago), so what
is on screen is never older than the last event.

On a terminal ``watch`` redraws one frame that fits the window: the header line stays, rows
are cut rather than wrapped, active workflows come first. Elsewhere it prints one line per
event; ``--json`` prints the events themselves, one per line.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

from . import cli_views as views
from .cli_client import HubClient, HubClientError

__all__ = ["LogSink", "WatchSink", "follow"]

_REDRAW_INTERVAL = 0.1
_RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
SEED = 20
"""How many recent anomalies and log entries to show before live ones."""


class Sink(Protocol):
    def event(self, event: dict[str, Any]) -> None: ...
    def reply(self, request_id: str, result: Any) -> None: ...
    def offline(self, why: str) -> None: ...
    def online(self) -> None: ...
    def tick(self) -> None: ...
    def wake_at(self) -> float | None: ...
    @property
    def finished(self) -> bool: ...


def _refused(client: HubClient, status: int) -> HubClientError:
    if status == 401:
        return HubClientError(
            f"the hub at {client.http_base} refused the request: it needs a valid token "
            "(--token or WHEN_AUTH_TOKEN)"
        )
    return HubClientError(f"the hub at {client.http_base} answered HTTP {status}")


def follow(
    client: HubClient,
    subscribe: Mapping[str, Any],
    requests: Sequence[Mapping[str, Any]],
    sink: Sink,
    *,
    deadline: float | None = None,
    reconnect: bool = True,
) -> None:
    """Run the event stream into ``sink`` until it is finished, the deadline passes, or (with
    ``reconnect`` off) the hub goes away. A hub that cannot be reached at the start is an
    error; one that goes away later is waited for."""
    from websockets.exceptions import (  # noqa: PLC0415
        ConnectionClosed,
        InvalidHandshake,
        InvalidStatus,
    )
    from websockets.sync.client import connect  # noqa: PLC0415

    url = client.ws_base + "/v1/operator"
    headers = {k: v for k, v in client.headers().items() if k == "Authorization"}
    connected_once = False
    failures = 0

    def wait(seconds: float) -> bool:
        """Sleep (ticking the sink) for ``seconds``; False once the deadline has passed."""
        until = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if now >= until:
                return True
            wake = sink.wake_at()
            ends = min(x for x in (until, deadline, wake) if x is not None)
            time.sleep(max(0.0, ends - now))
            if wake is not None and time.monotonic() >= wake:
                sink.tick()

    while True:
        try:
            ws = connect(
                url,
                additional_headers=headers,
                open_timeout=client.timeout,
                proxy=None,
                compression=None,
            )
        except InvalidStatus as exc:
            raise _refused(client, exc.response.status_code) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:  # also not a hub (yet)
            if not connected_once:
                raise client.unreachable(exc) from None
            delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
            failures += 1
            if not wait(delay):
                return
            continue
        with ws:
            if connected_once:
                sink.online()
            connected_once, failures = True, 0
            try:
                ws.send(json.dumps({"id": "subscribe", "op": "subscribe", **subscribe}))
                for request in requests:
                    ws.send(json.dumps(request))
                while not sink.finished:
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return
                    limits = [x - now for x in (deadline, sink.wake_at()) if x is not None]
                    try:
                        raw = ws.recv(timeout=max(0.0, min(limits)) if limits else None)
                    except TimeoutError:
                        sink.tick()
                        continue
                    try:
                        message = json.loads(raw)
                    except ValueError:  # not the operator protocol: skip it
                        continue
                    if not isinstance(message, dict):
                        continue
                    if "event" in message:
                        sink.event(message)
                    elif message.get("ok") is False:
                        raise HubClientError(str(message.get("error")))
                    elif message.get("id") != "subscribe":
                        sink.reply(str(message.get("id")), message.get("result"))
                return
            except (ConnectionClosed, OSError):
                if not reconnect:
                    raise HubClientError(
                        f"the hub at {client.http_base} closed the connection"
                    ) from None
                sink.offline(f"lost the hub at {client.http_base}; reconnecting")


def seed_requests(
    scope: str, *, logs: bool, anomalies: bool, level: str = ""
) -> list[dict[str, Any]]:
    """Requests for what happened before the stream: recent anomalies and log entries (one
    request per level at or above ``level``, since the hub filters by exact level)."""
    out: list[dict[str, Any]] = []
    if anomalies:
        out.append({"id": "anomalies", "op": "anomalies"})
    if logs:
        levels = views.LEVELS[views.LEVELS.index(level) :] if level else ("",)
        for name in levels:
            request = {"id": f"logs:{name}", "op": "logs", "limit": SEED, "level": name}
            if scope:
                request["workflow_id"] = scope
            out.append(request)
    return out


def _key(kind: str, record: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        kind,
        record.get("at"),
        record.get("timestamp"),
        record.get("service_id"),
        record.get("workflow_id"),
        record.get("message"),
        record.get("text"),
    )


class _Seen:
    """Keys of the logs and anomalies already shown, so a replay after a reconnect (or one
    that both the stream and a request delivered) is shown once. Bounded."""

    def __init__(self, size: int = 5000) -> None:
        self._order: deque[tuple[Any, ...]] = deque()
        self._keys: set[tuple[Any, ...]] = set()
        self._size = size

    def add(self, key: tuple[Any, ...]) -> bool:
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._size:
            self._keys.discard(self._order.popleft())
        return True


# --------------------------------------------------------------------------- watch


class WatchSink:
    """``watch``'s view of the stream: the workflows it knows and how it shows them.

    ``mode`` is ``screen`` (redraw one frame on a terminal), ``plain`` (a line per event) or
    ``json`` (an event per line).
    """

    def __init__(
        self,
        out: TextIO,
        *,
        mode: str,
        hub: str,
        once: bool,
        logs: bool,
        anomalies: bool,
        phases: frozenset[str] | None,
        service: str,
        expected: Sequence[str],
    ) -> None:
        self.out = out
        self.mode = mode
        self.hub = hub
        self.once = once
        self.logs = logs
        self.anomalies = anomalies
        self.phases = phases
        self.service = service
        self.workflows: dict[str, dict[str, Any]] = {}
        self.names: dict[str, str] = {}
        self.printed: dict[str, tuple[Any, ...]] = {}
        self.recent: deque[str] = deque(maxlen=200)
        self.kept: dict[str, list[str]] = {"anomaly": [], "log": []}
        self._shorts: dict[str, str] | None = None
        self.seen = _Seen()
        self.expected = set(expected)
        self.pending = set(expected)
        self.snapshot = False
        self.deferred: list[tuple[str, Any]] = []
        self.offline_since: float | None = None
        self.offline_why = ""
        self.dirty = False
        self.drawn_at = 0.0
        self.ticked = 0

    # ---- what the loop asks

    @property
    def finished(self) -> bool:
        return self.once and self.snapshot and not self.pending

    def wake_at(self) -> float | None:
        if self.mode != "screen":
            return None
        now = time.monotonic()
        next_second = now + 1 - (time.time() % 1)
        if self.dirty:
            return min(next_second, self.drawn_at + _REDRAW_INTERVAL)
        return next_second

    def tick(self) -> None:
        if self.mode == "screen":
            self.draw()

    # ---- filters and labels

    def wanted(self, workflow: Mapping[str, Any] | None) -> bool:
        if workflow is None:
            return self.phases is None and not self.service
        if self.phases is not None and workflow.get("phase") not in self.phases:
            return False
        if self.service:
            service_id = str(workflow.get("service_id") or "")
            labels = {service_id, views.service_label(workflow, self.names)}
            if self.service not in labels:
                return False
        return True

    def shown(self) -> list[dict[str, Any]]:
        return [w for w in self.workflows.values() if self.wanted(w)]

    def label(self, workflow_id: str) -> str:
        workflow = self.workflows.get(workflow_id)
        if self._shorts is None:
            self._shorts = views.short_ids(self.workflows)
        short = self._shorts.get(workflow_id) or workflow_id[: views.SHORT_ID] or "-"
        name = views.workflow_name(workflow) if workflow else ""
        return f"{short} {name}" if name else short

    def progress_line(self, w: Mapping[str, Any]) -> str:
        detail = w.get("stage") or w.get("current_action") or ""
        return (
            f"{self.label(w['workflow_id'])}  {views.service_label(w, self.names)}  "
            f"{w.get('phase', '')!s:<{views.PHASE_WIDTH}}  "
            f"{views.progress_cell(w, 20)}  {detail}"
        ).rstrip()

    # ---- output

    def emit(self, event: Mapping[str, Any]) -> None:
        self.out.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.out.flush()

    def line(self, text: str, at: float | None = None, kind: str = "") -> None:
        stamped = f"{views.clock(at)} {text}"
        if kind in self.kept:
            self.kept[kind].append(stamped)
        if self.mode in ("screen", "once"):
            self.recent.append(stamped)
            self.dirty = True
        elif self.mode == "plain":
            print(stamped, file=self.out, flush=True)

    def show_workflow(self, w: Mapping[str, Any]) -> None:
        key = (w.get("phase"), w.get("progress"), w.get("stage"), w.get("current_action"))
        if self.printed.get(w["workflow_id"]) == key:
            return
        self.printed[w["workflow_id"]] = key
        if self.mode == "plain" and self.wanted(w):
            self.line(self.progress_line(w))
        self.dirty = True

    # ---- events

    def offline(self, why: str) -> None:
        self.offline_since = time.time()
        self.offline_why = why
        if self.mode == "json":
            self.emit({"event": "offline", "error": why})
        else:
            self.line(why)
            self.draw()

    def online(self) -> None:
        if self.mode == "json":
            self.emit({"event": "online"})
        else:
            self.line(f"reconnected to the hub at {self.hub}")
        self.offline_since = None
        self.pending = set(self.expected)
        self.snapshot = False
        self.draw()

    def reply(self, request_id: str, result: Any) -> None:
        if not self.snapshot:  # labels and filters need the workflows: after the snapshot
            self.deferred.append((request_id, result))
            return
        self.pending.discard(request_id)
        if request_id == "anomalies" and isinstance(result, list):
            records = [{"event": "anomaly", **a} for a in result if self._anomaly_in_scope(a)]
            self.replay(records[-SEED:])
        elif request_id.startswith("logs:") and isinstance(result, dict):
            self.replay([{"event": "log", **r} for r in result.get("logs", [])][-SEED:])
        if self.finished:
            self.draw()

    def _anomaly_in_scope(self, anomaly: Mapping[str, Any]) -> bool:
        workflow_id = anomaly.get("workflow_id") or ""
        return self.wanted(self.workflows.get(workflow_id)) if workflow_id else True

    def replay(self, records: list[dict[str, Any]]) -> None:
        fresh = [r for r in records if self.seen.add(_key(r["event"], r))]
        if self.mode in ("screen", "once"):  # older than anything live: goes above it
            live = list(self.recent)
            self.recent.clear()
            for record in fresh:
                self._describe(record)
            self.recent.extend(live)
        else:
            for record in fresh:
                self._describe(record)

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "snapshot":
            self.snapshot = True
            self.workflows = {w["workflow_id"]: dict(w) for w in event.get("workflows", [])}
            self._shorts = None
            self.names = views.service_names(event.get("services", []))
            self.printed.clear()
            if self.mode == "json":
                self.emit({**event, "workflows": self.shown()})
            elif self.mode == "plain":
                self.line(f"watching {len(self.shown())} workflow(s); Ctrl-C to stop")
                for _, w in views.sort_tree(self.shown()):
                    self.show_workflow(w)
            self.dirty = True
            deferred, self.deferred = self.deferred, []
            for request_id, result in deferred:
                self.reply(request_id, result)
        elif kind == "workflow":
            w = dict(event["workflow"])
            if w["workflow_id"] not in self.workflows:
                self._shorts = None
            self.workflows[w["workflow_id"]] = w
            if self.mode == "json":
                if self.wanted(w):
                    self.emit(event)
            else:
                self.show_workflow(w)
        elif kind == "service":
            service = event["service"]
            self.names[service["service_id"]] = service.get("service_name") or service["service_id"]
            labels = {service["service_id"], service.get("service_name")}
            if self.mode == "json" and (not self.service or self.service in labels):
                self.emit(event)
        elif kind == "removed":
            self.workflows.pop(str(event.get("workflow_id")), None)
            self._shorts = None
            self.dirty = True
            if self.mode == "json":
                self.emit(event)
        else:
            if kind == "phase_changed":  # the record that follows says so too; be early
                known = self.workflows.get(str(event.get("workflow_id")))
                if known is not None:
                    known["phase"] = event.get("to")
            if kind in ("log", "anomaly"):
                if not (self.logs if kind == "log" else self.anomalies):
                    return
                if not self.seen.add(_key(kind, event)):
                    return
            workflow_id = str(event.get("workflow_id") or "")
            if workflow_id and not self.wanted(self.workflows.get(workflow_id)):
                return
            if self.mode == "json":
                self.emit(event)
            else:
                self._describe(event)
        if self.mode == "screen" and time.monotonic() - self.drawn_at >= _REDRAW_INTERVAL:
            self.draw()

    def _describe(self, event: Mapping[str, Any]) -> None:
        """The line for an event (log and anomaly ones also for replayed records)."""
        if self.mode == "json":
            self.emit(event)
            return
        kind = event.get("event")
        wid = str(event.get("workflow_id") or "")
        who = self.label(wid) if wid else ""
        at = float(event.get("at") or 0.0) or None
        if kind == "phase_changed":
            reason = f"  ({event['reason']})" if event.get("reason") else ""
            self.line(f"{who}  {event.get('from') or '(start)'} -> {event.get('to')}{reason}", at)
        elif kind == "checkpoint":
            self.line(f"{who}  checkpoint {event.get('checkpoint_id')}", at)
        elif kind == "error":
            tag = "recoverable" if event.get("recoverable") else "not recoverable"
            self.line(f"{who}  ERROR {event.get('error')} ({tag})", at)
        elif kind == "log":
            text = " ".join(str(event.get("message", "")).split())
            self.line(f"{who or '-'}  [{event.get('level')}] {text}", at, "log")
        elif kind == "anomaly":
            source = who or self.names.get(str(event.get("service_id")), "") or "-"
            self.line(f"{source}  anomaly: {event.get('text')}", at, "anomaly")
        elif kind == "dropped":
            self.line(f"({event.get('count')} events dropped: the terminal was too slow)")

    # ---- the screen

    def frame(self, columns: int, rows: int) -> list[str]:
        """The lines of one screen: ``rows`` lines at most, each ``columns`` cells at most."""
        shown = self.shown()
        active = sum(1 for w in shown if w.get("phase") not in views.TERMINAL_PHASES)
        head = f"when-coordinator watch  {views.clock()}  {len(shown)} workflow(s), "
        head += f"{active} active  {self.hub}"
        second = ""
        if self.offline_since is not None:
            waited = views.duration(time.time() - self.offline_since)
            second = f"OFFLINE for {waited}: waiting for the hub to come back"
        top = [views.cut(head, columns), views.cut(second, columns)]
        events = list(self.recent)
        room = rows - len(top)
        event_rows = min(len(events), max(3, room // 3)) if events else 0
        table_rows = room - (event_rows + 1 if event_rows else 0)
        cells = 10 if columns < 100 else 20
        data = views.workflow_rows(
            shown, self.names, now=time.time(), bar_cells=cells, errors=False
        )
        data[0][3] = data[0][3].ljust(views.PHASE_WIDTH)
        table = views.fit_table(data, columns, shrink=(5, 1, 2), right=(4,))
        if not shown:
            table = ["no workflows yet" if not self.workflows else "no workflow matches"]
        if len(table) > table_rows:
            hidden = len(table) - (table_rows - 1)
            table = [*table[: table_rows - 1], f"… {hidden} more (finished ones last)"]
        lines = top + table[: max(0, table_rows)]
        if event_rows:
            lines += [""] + [views.cut(e, columns) for e in events[-event_rows:]]
        return lines[:rows]

    def draw(self) -> None:
        if self.mode != "screen":
            return
        size = shutil.get_terminal_size()
        lines = self.frame(size.columns, size.lines)
        # Each line is cleared before it is written: erasing after a line that fills the
        # width would erase its last cell (the cursor stays on it), so the rest of the
        # screen is cleared from the start of the next line, if there is one.
        text = "\x1b[H" + "\r\n".join("\x1b[2K" + line for line in lines)
        if len(lines) < size.lines:
            text += "\r\n\x1b[J"
        self.out.write(text)
        self.out.flush()
        self.drawn_at = time.monotonic()
        self.dirty = False

    def print_once(self, columns: int | None) -> None:
        """``--once``: the table and the recent anomalies and logs, printed once."""
        shown = self.shown()
        cells = 20 if columns is None or columns >= 100 else 10
        data = views.workflow_rows(shown, self.names, now=time.time(), bar_cells=cells)
        data[0][3] = data[0][3].ljust(views.PHASE_WIDTH)
        print(f"watching {len(shown)} workflow(s) at {self.hub}", file=self.out)
        if shown:
            table = views.fit_table(data, columns, shrink=(5, 1, 2), right=(4,))
            print("\n".join(table), file=self.out)
        for flag, kind, title in (
            (self.anomalies, "anomaly", "anomalies"),
            (self.logs, "log", "logs"),
        ):
            if flag:
                lines = [views.cut(line, columns) if columns else line for line in self.kept[kind]]
                print(f"\nrecent {title}:", file=self.out)
                print("\n".join(lines[-SEED:]) or "  none", file=self.out)
        self.out.flush()


# --------------------------------------------------------------------------- logs --follow


class LogSink:
    """``logs --follow``: the recent entries (at or above a level), then live ones."""

    def __init__(
        self, out: TextIO, *, level: str, expected: Sequence[str], as_json: bool, limit: int
    ) -> None:
        self.out = out
        self.level = level
        self.as_json = as_json
        self.limit = limit
        self.expected = set(expected)
        self.pending = set(expected)
        self.held: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self.shorts: dict[str, str] = {}
        self.seen = _Seen()
        self.finished = False
        self.snapshot = False
        self.deferred: list[tuple[str, Any]] = []

    def wake_at(self) -> float | None:
        return None

    def tick(self) -> None:
        pass

    def at_level(self, record: Mapping[str, Any]) -> bool:
        if not self.level:
            return True
        level = str(record.get("level", "")).lower()
        rank = views.LEVELS.index(level) if level in views.LEVELS else 1
        return rank >= views.LEVELS.index(self.level)

    def show(self, record: Mapping[str, Any]) -> None:
        if not self.seen.add(_key("log", record)):
            return
        if self.as_json:
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        else:
            self.out.write(views.log_line(record, self.names, self.shorts) + "\n")
        self.out.flush()

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "snapshot":
            self.names = views.service_names(event.get("services", []))
            self.shorts = views.short_ids(w["workflow_id"] for w in event.get("workflows", []))
            self.snapshot = True
            deferred, self.deferred = self.deferred, []
            for request_id, result in deferred:
                self.reply(request_id, result)
        elif kind == "service":
            service = event["service"]
            self.names[service["service_id"]] = service.get("service_name") or service["service_id"]
        elif kind == "log":
            record = {k: v for k, v in event.items() if k != "event"}
            if not self.at_level(record):
                return
            if self.pending:
                self.held.append(record)
            else:
                self.show(record)

    def reply(self, request_id: str, result: Any) -> None:
        if not self.snapshot:  # the names come with the snapshot
            self.deferred.append((request_id, result))
            return
        if request_id not in self.pending:
            return
        self.pending.discard(request_id)
        if isinstance(result, dict):
            self.held += [r for r in result.get("logs", []) if self.at_level(r)]
        if not self.pending:
            history = sorted(self.held, key=lambda r: float(r.get("at") or 0.0))
            self.held = []
            for record in history[len(history) - self.limit :] if self.limit > 0 else []:
                self.show(record)

    def offline(self, why: str) -> None:
        print(f"when-coordinator logs: {why}", file=sys.stderr, flush=True)

    def online(self) -> None:
        print("when-coordinator logs: reconnected", file=sys.stderr, flush=True)
        self.pending = set(self.expected)
        self.snapshot = False
