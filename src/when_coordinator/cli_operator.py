"""The operator commands of ``when-coordinator``: list, show, follow and steer workflows.

They talk to a hub's operator API (``cli.HubClient``). A workflow id argument may be any unique
prefix of the id: the hub resolves it, so an ambiguous one is refused with the candidates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from . import cli_views as views
from .cli_client import HubClient, HubClientError

__all__ = ["add_commands"]


def _client(args: argparse.Namespace) -> HubClient:
    return HubClient(args.hub, args.token, timeout=args.http_timeout)


def _columns() -> int | None:
    """The terminal's width when output goes to one; a pipe or file gets whole lines."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _phases(args: argparse.Namespace) -> frozenset[str] | None:
    try:
        phases = views.phases_filter(args.phase or "")
    except ValueError as exc:
        raise HubClientError(str(exc)) from None
    if args.active:
        active = views.phases_filter("active")
        phases = active if phases is None else phases & (active or frozenset())
    return phases


def _services(client: HubClient) -> list[dict[str, Any]]:
    return list(client.request("GET", "/v1/services")["services"])


def _service_ids(services: Sequence[Mapping[str, Any]], wanted: str) -> set[str]:
    """The ids of the services ``wanted`` names (a registered name or an id)."""
    ids = {
        str(s["service_id"])
        for s in services
        if wanted in (s.get("service_id"), s.get("service_name"))
    }
    if not ids:
        known = sorted({str(s.get("service_name") or s["service_id"]) for s in services})
        raise HubClientError(
            f"no service {wanted!r} at this hub (known: {', '.join(known) or 'none'})"
        )
    return ids


# --------------------------------------------------------------------------- workflows


def _cmd_workflows(args: argparse.Namespace) -> int:
    client = _client(args)
    phases = _phases(args)
    params = {"phase": next(iter(phases))} if phases is not None and len(phases) == 1 else {}
    services = _services(client)
    ids = _service_ids(services, args.service) if args.service else None
    if ids is not None and len(ids) == 1:
        params["service_id"] = next(iter(ids))
    workflows = list(client.request("GET", "/v1/workflows", params)["workflows"])
    workflows = [
        w
        for w in workflows
        if (phases is None or w.get("phase") in phases)
        and (ids is None or w.get("service_id") in ids)
    ]
    if args.json:
        _json(workflows)
    elif not workflows:
        filtered = " matching the filters" if phases is not None or ids is not None else ""
        print(f"no workflows{filtered}: the hub at {client.http_base} has not heard of any yet")
    else:
        names = views.service_names(services)
        print("\n".join(views.workflow_table(workflows, names, total=_columns())))
    return 0


# --------------------------------------------------------------------------- show


def _rows(title: str, rows: list[list[str]], columns: int | None) -> list[str]:
    if len(rows) == 1:
        return ["", f"{title}: none"]
    return ["", f"{title}:", *("  " + line for line in views.fit_table(rows, columns))]


def _cmd_show(args: argparse.Namespace) -> int:
    client = _client(args)
    quoted = urllib.parse.quote(args.workflow_id, safe="")
    detail = dict(client.request("GET", f"/v1/workflows/{quoted}", {"logs": str(args.logs)}))
    workflow_id = str(detail["workflow_id"])
    root = str(detail.get("root_workflow_id") or workflow_id)
    family = client.request("GET", "/v1/workflows", {"root": root})["workflows"]
    members = {w["workflow_id"]: w for w in family}
    if args.json:
        _json(detail)
        return 0
    now = time.time()
    columns = _columns()
    names = views.service_names(_services(client))
    progress = views.display_progress(detail)
    created = float(detail.get("created_at") or 0.0)
    updated = float(detail.get("updated_at") or 0.0)
    finished = detail.get("phase") in views.TERMINAL_PHASES
    fields = [
        ["workflow", workflow_id],
        ["name", views.workflow_name(detail) or "-"],
        ["service", f"{views.service_label(detail, names)} ({detail.get('service_id') or '-'})"],
        ["phase", str(detail.get("phase", ""))],
        ["progress", f"{views.bar(progress)} {views.percent(progress)}"],
    ]
    for key, label in (
        ("stage", "stage"),
        ("current_action", "action"),
        ("message", "message"),
        ("parent_workflow_id", "parent"),
        ("root_workflow_id", "root"),
    ):
        if detail.get(key) and not (key == "root_workflow_id" and detail[key] == workflow_id):
            fields.append([label, str(detail[key])])
    if created:
        fields.append(["started", f"{views.clock(created)} ({views.ago(created, now)})"])
        took = (updated if finished else now) - created
        fields.append(["took" if finished else "running", views.duration(took)])
    lines = views.fit_table(fields, columns)

    history = [["TIME", "FROM", "TO", "REASON", "CHECKPOINT"]]
    for change in detail.get("history", []):
        history.append(
            [
                views.clock(float(change.get("at") or 0.0)),
                change.get("from") or "(start)",
                str(change.get("to", "")),
                str(change.get("reason") or "-"),
                str(change.get("checkpoint_id") or "-"),
            ]
        )
    lines += _rows("history", history, columns)
    checkpoints = [["TIME", "CHECKPOINT", "REASON"]]
    for record in detail.get("checkpoints", []):
        at = views.clock(float(record.get("at") or 0.0))
        checkpoints.append([at, str(record["checkpoint_id"]), str(record.get("reason") or "-")])
    lines += _rows("checkpoints", checkpoints, columns)
    errors = [["TIME", "ERROR", "RECOVERABLE", "ACTION"]]
    for record in detail.get("errors", []):
        errors.append(
            [
                views.clock(float(record.get("at") or 0.0)),
                str(record.get("error", "")),
                "yes" if record.get("recoverable") else "no",
                str(record.get("action_id") or "-"),
            ]
        )
    lines += _rows("errors", errors, columns)

    descendants = _descendants(workflow_id, members)
    if descendants:
        rows = views.workflow_rows(descendants, names, now=now)
        table = views.fit_table(rows, None if columns is None else columns - 2, right=(4,))
        lines += ["", "children:", *("  " + line for line in table)]
    else:
        lines += ["", "children: none"]
    logs = detail.get("logs", [])
    shorts = views.short_ids([workflow_id, *members])
    lines += ["", f"logs (last {len(logs)}):" if logs else "logs: none"]
    lines += ["  " + views.log_line(r, names, shorts) for r in logs]
    if detail.get("anomalies"):
        lines += ["", "anomalies:", *("  " + str(a) for a in detail["anomalies"])]
    print("\n".join(views.cut(line, columns) if columns else line for line in lines))
    return 0


def _descendants(workflow_id: str, members: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """The workflows below ``workflow_id`` (same root), for the children tree."""
    below: list[Any] = []
    frontier = [workflow_id]
    seen = {workflow_id}
    while frontier:
        parent = frontier.pop()
        for w in members.values():
            if w.get("parent_workflow_id") == parent and w["workflow_id"] not in seen:
                seen.add(w["workflow_id"])
                below.append({**w, "parent_workflow_id": "" if parent == workflow_id else parent})
                frontier.append(w["workflow_id"])
    return below


# --------------------------------------------------------------------------- services


def _cmd_services(args: argparse.Namespace) -> int:
    client = _client(args)
    services = _services(client)
    if args.json:
        _json(services)
        return 0
    if not services:
        print(f"no services: none has connected to the hub at {client.http_base} yet")
        return 0
    workflows = client.request("GET", "/v1/workflows")["workflows"]
    active: dict[str, int] = {}
    total: dict[str, int] = {}
    for w in workflows:
        service_id = str(w.get("service_id") or "")
        total[service_id] = total.get(service_id, 0) + 1
        if w.get("phase") not in views.TERMINAL_PHASES:
            active[service_id] = active.get(service_id, 0) + 1
    now = time.time()
    rows = [["NAME", "ID", "INSTANCE", "VERSION", "STATUS", "RTT", "WORKFLOWS", "SEEN"]]
    for s in sorted(services, key=lambda s: (not s.get("connected"), s.get("service_name") or "")):
        service_id = str(s["service_id"])
        rtt = s.get("rtt")
        rows.append(
            [
                str(s.get("service_name") or "-"),
                service_id,
                str(s.get("instance_id") or "-"),
                str(s.get("version") or "-"),
                str(s.get("health") or ("connected" if s.get("connected") else "disconnected")),
                f"{rtt * 1000:.0f}ms" if isinstance(rtt, (int, float)) else "-",
                f"{active.get(service_id, 0)} active, {total.get(service_id, 0)} in all",
                views.ago(float(s.get("last_seen") or 0.0), now),
            ]
        )
    print("\n".join(views.fit_table(rows, _columns(), shrink=(2, 3, 0))))
    return 0


# --------------------------------------------------------------------------- logs


def _cmd_logs(args: argparse.Namespace) -> int:
    from .cli_watch import LogSink, follow, seed_requests  # noqa: PLC0415

    client = _client(args)
    scope = args.workflow or ""
    if args.follow:
        requests = seed_requests(scope, logs=True, anomalies=False, level=args.level or "")
        for request in requests:
            request["limit"] = args.limit
        sink = LogSink(
            sys.stdout,
            level=args.level or "",
            expected=[str(r["id"]) for r in requests],
            as_json=args.json,
            limit=args.limit,
        )
        follow(client, {"logs": True, "workflow_id": scope}, requests, sink)
        return 0
    levels = views.LEVELS[views.LEVELS.index(args.level) :] if args.level else ("",)
    records: list[dict[str, Any]] = []
    for level in levels:
        params = {"limit": str(args.limit), "level": level, "workflow_id": scope}
        answer = client.request("GET", "/v1/logs", {k: v for k, v in params.items() if v})
        records += answer["logs"]
    records.sort(key=lambda r: float(r.get("at") or 0.0))
    records = records[-args.limit :] if args.limit else []
    if args.json:
        for record in records:
            print(json.dumps(record, separators=(",", ":")))
        return 0
    if not records:
        print("no log entries" + (" at or above that level" if args.level else ""))
        return 0
    names = views.service_names(_services(client))
    shorts = views.short_ids(w["workflow_id"] for w in client.workflows())
    columns = _columns()
    for record in records:
        line = views.log_line(record, names, shorts)
        print(views.cut(line, columns) if columns else line)
    return 0


# --------------------------------------------------------------------------- watch


def _cmd_watch(args: argparse.Namespace) -> int:
    from .cli_watch import WatchSink, follow, seed_requests  # noqa: PLC0415

    client = _client(args)
    phases = _phases(args)
    if args.json:
        mode = "json"
    elif args.once:
        mode = "once"
    elif sys.stdout.isatty() and not args.plain:
        mode = "screen"
    else:
        mode = "plain"
    scope = args.workflow or ""
    requests = seed_requests(scope, logs=args.logs, anomalies=args.anomalies)
    sink = WatchSink(
        sys.stdout,
        mode=mode,
        hub=client.http_base,
        once=args.once,
        logs=args.logs,
        anomalies=args.anomalies,
        phases=phases,
        service=args.service or "",
        expected=[str(r["id"]) for r in requests],
    )
    deadline = time.monotonic() + args.timeout if args.timeout else None
    subscribe = {"logs": args.logs, "workflow_id": scope}
    if mode == "screen":
        sys.stdout.write("\x1b[?25l\x1b[?7l\x1b[H\x1b[2J")  # no cursor, no wrapping, clear
    try:
        follow(client, subscribe, requests, sink, deadline=deadline, reconnect=not args.once)
    finally:
        if mode == "screen":
            sink.draw()
            sys.stdout.write("\x1b[?7h\x1b[?25h\r\n")
            sys.stdout.flush()
    if mode == "once":
        sink.print_once(_columns())
    return 0


# --------------------------------------------------------------------------- steering


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    client.timeout = max(client.timeout, args.timeout + 2)
    answer = client.command("status", args.workflow_id, timeout=f"{args.timeout:g}")
    if args.json:
        _json(answer)
        return 0
    progress = float(answer.get("progress", 0))
    rows = [
        ["workflow", str(answer.get("workflow_id", args.workflow_id))],
        ["phase", str(answer.get("phase", ""))],
        ["progress", f"{views.bar(progress)} {views.percent(progress)}"],
    ]
    if answer.get("current_action"):
        rows.append(["action", str(answer["current_action"])])
    if answer.get("message"):
        rows.append(["message", str(answer["message"])])
    print("\n".join(views.fit_table(rows)))
    return 0


def _cmd_control(args: argparse.Namespace) -> int:
    client = _client(args)
    name: str = args.command
    params: dict[str, str] = {}
    if name in ("pause", "cancel") and args.reason:
        params["reason"] = args.reason
    if name == "resume" and args.from_checkpoint:
        params["from_checkpoint"] = args.from_checkpoint
    if name == "cancel" and args.force:
        params["force"] = "true"
    result = client.command(name, args.workflow_id, **params)
    service_id = str(result.get("service_id") or "")
    try:
        service_name = views.service_names(_services(client)).get(service_id, service_id)
    except HubClientError:  # the command went out; the name is a nicety
        service_name = service_id
    who = f"{service_name} ({service_id})" if service_name != service_id else service_id or "?"
    print(
        f"{name} sent to service {who} for workflow "
        f"{result.get('workflow_id') or args.workflow_id} (message {result.get('sent')}); the "
        "service reports the outcome as phase changes (see `when-coordinator watch`)"
    )
    return 0


# --------------------------------------------------------------------------- parser


_ID_HELP = "the workflow's id, or any unique prefix of it"


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--phase",
        metavar="PHASE[,PHASE]",
        help="only workflows in these phases (also 'active' or 'terminal')",
    )
    parser.add_argument("--service", metavar="NAME", help="only this service's (name or id)")
    parser.add_argument("--active", action="store_true", help="only unfinished workflows")


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    remote: argparse.ArgumentParser,
) -> None:
    """The operator subcommands, each taking the ``remote`` options (--hub, --token)."""
    workflows = commands.add_parser(
        "workflows",
        parents=[remote],
        help="list the workflows a hub knows, as a tree",
        description="List the workflows a hub knows as a tree: active ones first, newest "
        "first. Ids are shortened; any unique prefix works wherever an id is asked for.",
    )
    _filters(workflows)
    workflows.add_argument("--json", action="store_true", help="print the raw JSON")
    workflows.set_defaults(func=_cmd_workflows)

    watch = commands.add_parser(
        "watch",
        parents=[remote],
        help="follow phases, progress and errors live (Ctrl-C stops)",
        description="Follow phases, progress and errors live. On a terminal one screen is "
        "redrawn (active workflows first, cut to fit); otherwise one line is printed per "
        "event. When the hub goes away, watch waits for it to come back.",
    )
    watch.add_argument("--workflow", metavar="ID", help="only this workflow and its children")
    _filters(watch)
    watch.add_argument("--logs", action="store_true", help="show log entries too")
    watch.add_argument("--anomalies", action="store_true", help="show protocol anomalies too")
    watch.add_argument(
        "--once",
        action="store_true",
        help="print the current state (and recent logs, anomalies if asked) and exit",
    )
    watch.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this long (exit status 0)"
    )
    watch.add_argument("--plain", action="store_true", help="one line per event, no redrawing")
    watch.add_argument("--json", action="store_true", help="the events as JSON, one per line")
    watch.set_defaults(func=_cmd_watch)

    show = commands.add_parser(
        "show",
        parents=[remote],
        help="a workflow's history, checkpoints, errors, children and logs",
    )
    show.add_argument("workflow_id", metavar="WORKFLOW_ID", help=_ID_HELP)
    show.add_argument(
        "--logs", type=int, default=10, metavar="N", help="this many recent log entries (10)"
    )
    show.add_argument("--json", action="store_true", help="print the raw JSON")
    show.set_defaults(func=_cmd_show)

    logs = commands.add_parser(
        "logs", parents=[remote], help="the log entries the hub holds (--follow for live ones)"
    )
    logs.add_argument("--workflow", metavar="ID", help="only this workflow's (a prefix works)")
    logs.add_argument("--level", choices=views.LEVELS, help="only entries at this level or above")
    logs.add_argument(
        "--limit", type=int, default=100, metavar="N", help="the last N entries (100)"
    )
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    logs.add_argument("--json", action="store_true", help="one JSON entry per line")
    logs.set_defaults(func=_cmd_logs)

    services = commands.add_parser(
        "services", parents=[remote], help="the services the hub knows, and their health"
    )
    services.add_argument("--json", action="store_true", help="print the raw JSON")
    services.set_defaults(func=_cmd_services)

    status = commands.add_parser(
        "status", parents=[remote], help="ask a workflow's service for its live status"
    )
    status.add_argument("workflow_id", metavar="WORKFLOW_ID", help=_ID_HELP)
    status.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="wait this long for the service (at most 9; default %(default)s)",
    )
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.set_defaults(func=_cmd_status)

    for name, text in (
        ("pause", "ask a workflow to pause at its next safe point"),
        ("resume", "ask a paused workflow to resume"),
        ("cancel", "ask a workflow to cancel"),
    ):
        command = commands.add_parser(name, parents=[remote], help=text, description=text + ".")
        command.add_argument("workflow_id", metavar="WORKFLOW_ID", help=_ID_HELP)
        if name in ("pause", "cancel"):
            command.add_argument("--reason", default="", help="recorded with the phase change")
        if name == "resume":
            command.add_argument("--from-checkpoint", default="", metavar="CHECKPOINT_ID")
        if name == "cancel":
            command.add_argument("--force", action="store_true", help="ask for a forced cancel")
        command.set_defaults(func=_cmd_control)
