"""The ``when-coordinator`` command: run the reference hub, watch and steer its workflows.

Only the standard library and websockets are used, and heavy modules are imported by the
subcommand that needs them, so the command starts quickly.

The ``demo`` subcommand runs ``when_coordinator.demo.main(argv) -> int`` when that module
exists (it owns its arguments: everything after ``demo`` is passed through); until then a
small built-in walk through a workflow's phase messages stands in.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

__all__ = ["HubClient", "HubClientError", "main"]

DEFAULT_HUB_URL = "http://127.0.0.1:8080"
_EPILOG = """\
environment:
  WHEN_HUB_URL      the hub for workflows/watch/status/pause/resume/cancel
                    (default http://127.0.0.1:8080)
  WHEN_AUTH_TOKEN   the bearer token for those commands, and the token `hub` requires
  WHEN_READ_TOKEN   `hub`: a token that may watch (dashboard, API) but not steer
  WHEN_TRACE_URL    `hub`: the dashboard's trace link, e.g. http://jaeger:16686/trace/{trace_id}

examples:
  when-coordinator hub                        run a hub on port 8080 (dashboard: http://127.0.0.1:8080/)
  when-coordinator workflows                  list the workflows the hub knows
  when-coordinator watch                      follow phases and progress live (Ctrl-C stops)
  when-coordinator pause wf-1 --reason "db maintenance"
  when-coordinator resume wf-1
  when-coordinator status wf-1                ask the workflow's service for its status
"""


# --------------------------------------------------------------------------- hub client


class HubClientError(Exception):
    """A request to the hub failed; the message is what the user sees after ``error:``."""


def _without_userinfo(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL in it removed (for messages)."""
    return re.sub(r"(//|^)[^/@\s]*@", r"\1", text)


def _base_urls(hub: str) -> tuple[str, str, str | None]:
    """``--hub`` (http, https, ws, wss or host:port) to the HTTP and WebSocket bases, and
    the HTTP Basic credentials of a ``user:password@`` in it.

    The bases never carry the credentials: every message shows them, and none may show a
    password.
    """
    text = hub.strip()
    if "://" not in text:
        text = "http://" + text
    shown = _without_userinfo(hub.strip())
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise HubClientError(f"--hub {shown!r} is not a hub URL (like {DEFAULT_HUB_URL})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not host:
        raise HubClientError(f"--hub {shown!r} is not a hub URL (like {DEFAULT_HUB_URL})")
    secure = scheme in ("https", "wss")
    http = f"{'https' if secure else 'http'}://{host}"
    ws = f"{'wss' if secure else 'ws'}://{host}"
    basic = None
    if "@" in parts.netloc:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return http, ws, basic


class HubClient:
    """The operator API seen from the command line (HTTP for requests, WebSocket to watch)."""

    def __init__(self, hub: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.http_base, self.ws_base, self._basic = _base_urls(hub)
        self.hub = self.http_base
        self.token = token or None
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "when-coordinator-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self._basic:  # for a proxy in front of the hub that asks for a password
            headers["Authorization"] = f"Basic {self._basic}"
        return headers

    def request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        """One JSON request; raises ``HubClientError`` with a one-line explanation."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            self.http_base + path + query,
            data=b"" if method == "POST" else None,
            headers=self._headers(),
            method=method,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except TimeoutError:
            raise HubClientError(
                f"the hub at {self.http_base} did not answer within {self.timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise HubClientError(f"bad answer from the hub at {self.http_base}: {exc}") from None

    def _unreachable(self, reason: object) -> HubClientError:
        if isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        elif isinstance(reason, TimeoutError):
            why = "timed out"
        else:
            why = str(reason)
        return HubClientError(
            f"cannot reach the hub at {self.http_base} ({why}); is `when-coordinator hub` "
            "running? Set --hub or WHEN_HUB_URL"
        )

    def _http_error(self, exc: urllib.error.HTTPError) -> HubClientError:
        if exc.code == 401:
            return HubClientError(
                f"the hub at {self.http_base} refused the request: it needs a valid token "
                "(--token or WHEN_AUTH_TOKEN)"
            )
        try:
            body = json.loads(exc.read().decode("utf-8"))
            message = str(body.get("error")) if isinstance(body, dict) else ""
        except (OSError, ValueError):
            message = ""
        return HubClientError(message or f"the hub answered HTTP {exc.code} {exc.reason}")

    def workflows(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/workflows")["workflows"])

    def command(self, name: str, workflow_id: str, **params: str) -> dict[str, Any]:
        path = f"/v1/workflows/{urllib.parse.quote(workflow_id, safe='')}/{name}"
        return dict(self.request("POST", path, {k: v for k, v in params.items() if v}))


# --------------------------------------------------------------------------- rendering


def _bar(percent: float, width: int = 20) -> str:
    filled = round(max(0.0, min(100.0, percent)) / 100 * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _percent(value: float) -> str:
    return f"{value:.0f}%" if float(value).is_integer() else f"{value:.1f}%"


def _ago(epoch: float, now: float) -> str:
    if not epoch:
        return "-"
    seconds = max(0, int(now - epoch))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86400:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _tree(workflows: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """Workflows in tree order (roots first, children under their parent) with depths."""
    by_id = {w["workflow_id"]: w for w in workflows}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots = []
    for workflow in workflows:
        parent = workflow.get("parent_workflow_id") or ""
        if parent and parent in by_id and parent != workflow["workflow_id"]:
            children.setdefault(parent, []).append(workflow)
        else:
            roots.append(workflow)
    out: list[tuple[int, Mapping[str, Any]]] = []
    seen: set[str] = set()

    def visit(workflow: Mapping[str, Any], depth: int) -> None:
        if workflow["workflow_id"] in seen:
            return
        seen.add(workflow["workflow_id"])
        out.append((depth, workflow))
        for child in children.get(workflow["workflow_id"], ()):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    for workflow in workflows:  # cycles: show them flat rather than lose them
        visit(workflow, 0)
    return out


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def workflow_table(workflows: Sequence[Mapping[str, Any]], now: float | None = None) -> list[str]:
    """The lines of the ``workflows`` table."""
    now = time.time() if now is None else now
    rows = [["WORKFLOW", "SERVICE", "PHASE", "PROGRESS", "STAGE", "ERRORS", "UPDATED"]]
    for depth, w in _tree(workflows):
        name = ("  " * (depth - 1) + "└ " if depth else "") + str(w["workflow_id"])
        rows.append(
            [
                name,
                str(w.get("service_id") or "-"),
                str(w.get("phase", "")),
                _percent(float(w.get("progress", 0.0))),
                str(w.get("stage") or w.get("current_action") or "-"),
                str(w.get("error_count", 0) or "-"),
                _ago(float(w.get("updated_at", 0.0)), now),
            ]
        )
    return _table(rows)


def _clock(epoch: float | None = None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


class _Watcher:
    """Turns the operator event stream into terminal output.

    On a terminal the screen is redrawn (a table with progress bars and recent events, at
    most ten times a second); otherwise, or with ``--plain``, one line per event.
    """

    def __init__(self, out: TextIO, *, redraw: bool, anomalies: bool) -> None:
        self.out = out
        self.redraw = redraw
        self.anomalies = anomalies
        self.workflows: dict[str, dict[str, Any]] = {}
        self.printed: dict[str, tuple[Any, ...]] = {}
        self.recent: list[str] = []
        self.drawn_at = 0.0

    def line(self, text: str) -> None:
        if self.redraw:
            self.recent = [*self.recent[-7:], text]
        else:
            print(text, file=self.out, flush=True)

    def progress_line(self, w: Mapping[str, Any]) -> str:
        detail = w.get("stage") or w.get("current_action") or ""
        return (
            f"{w['workflow_id']}  {w.get('phase', '')}  {_bar(float(w.get('progress', 0)))} "
            f"{_percent(float(w.get('progress', 0)))}  {detail}".rstrip()
        )

    def show_workflow(self, w: dict[str, Any]) -> None:
        self.workflows[w["workflow_id"]] = w
        key = (w.get("phase"), w.get("progress"), w.get("stage"), w.get("current_action"))
        if self.printed.get(w["workflow_id"]) != key:
            self.printed[w["workflow_id"]] = key
            if not self.redraw:
                self.line(f"{_clock()} {self.progress_line(w)}")

    def handle(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        wid = event.get("workflow_id", "")
        if kind == "snapshot":
            workflows = list(event.get("workflows", []))
            self.line(f"{_clock()} watching {len(workflows)} workflow(s); Ctrl-C to stop")
            for _, w in _tree(workflows):
                self.show_workflow(dict(w))
        elif kind == "workflow":
            self.show_workflow(dict(event["workflow"]))
        elif kind == "phase_changed":
            reason = f"  ({event['reason']})" if event.get("reason") else ""
            source = event.get("from") or "(start)"
            self.line(f"{_clock()} {wid}  {source} -> {event.get('to')}{reason}")
        elif kind == "checkpoint":
            self.line(f"{_clock()} {wid}  checkpoint {event.get('checkpoint_id')}")
        elif kind == "error":
            tag = "recoverable" if event.get("recoverable") else "not recoverable"
            self.line(f"{_clock()} {wid}  ERROR {event.get('error')} ({tag})")
        elif kind == "log":
            self.line(f"{_clock()} {wid or '-'}  [{event.get('level')}] {event.get('message')}")
        elif kind == "anomaly" and self.anomalies:
            self.line(f"{_clock()} {wid or event.get('service_id', '')}  anomaly: {event['text']}")
        elif kind == "removed":
            self.workflows.pop(str(wid), None)
        elif kind == "dropped":
            self.line(f"{_clock()} ({event.get('count')} events dropped: terminal too slow)")
        if self.redraw and time.monotonic() - self.drawn_at >= 0.1:
            self.draw()

    def draw(self) -> None:
        if not self.redraw:
            return
        self.drawn_at = time.monotonic()
        lines = [f"when-coordinator watch  {_clock()}  (Ctrl-C to stop)", ""]
        for depth, w in _tree(list(self.workflows.values())):
            lines.append("  " * depth + self.progress_line(w))
        if not self.workflows:
            lines.append("no workflows yet")
        lines += ["", *self.recent]
        self.out.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()


# --------------------------------------------------------------------------- commands


def _client(args: argparse.Namespace) -> HubClient:
    return HubClient(args.hub, args.token, timeout=args.http_timeout)


def _cmd_workflows(args: argparse.Namespace) -> int:
    client = _client(args)
    workflows = client.workflows()
    if args.json:
        print(json.dumps(workflows, indent=2))
    elif not workflows:
        print(f"no workflows: the hub at {client.http_base} has not heard of any yet")
    else:
        print("\n".join(workflow_table(workflows)))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    client.timeout = max(client.timeout, args.timeout + 2)
    answer = client.command("status", args.workflow_id, timeout=f"{args.timeout:g}")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    progress = float(answer.get("progress", 0))
    rows = [
        ["workflow", str(answer.get("workflow_id", args.workflow_id))],
        ["phase", str(answer.get("phase", ""))],
        ["progress", f"{_bar(progress)} {_percent(progress)}"],
    ]
    if answer.get("current_action"):
        rows.append(["action", str(answer["current_action"])])
    if answer.get("message"):
        rows.append(["message", str(answer["message"])])
    print("\n".join(_table(rows)))
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
    print(
        f"{name} sent to service {result.get('service_id') or '?'} for workflow "
        f"{args.workflow_id} (message {result.get('sent')}); the service reports the outcome "
        "as phase changes (see `when-coordinator watch`)"
    )
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: PLC0415
    from websockets.sync.client import connect  # noqa: PLC0415

    client = _client(args)
    url = client.ws_base + "/v1/operator"
    headers = {k: v for k, v in client._headers().items() if k == "Authorization"}
    redraw = sys.stdout.isatty() and not args.plain and not args.once
    watcher = _Watcher(sys.stdout, redraw=redraw, anomalies=args.anomalies)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        with connect(
            url,
            additional_headers=headers,
            open_timeout=client.timeout,
            proxy=None,
            compression=None,
        ) as ws:
            subscribe = {"id": 1, "op": "subscribe", "logs": args.logs}
            if args.workflow:
                subscribe["workflow_id"] = args.workflow
            ws.send(json.dumps(subscribe))
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = json.loads(ws.recv(timeout=remaining))
                except TimeoutError:
                    break
                if event.get("ok") is False:
                    raise HubClientError(str(event.get("error")))
                if "event" not in event:
                    continue
                watcher.handle(event)
                if args.once and event["event"] == "snapshot":
                    break
            watcher.draw()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise HubClientError(
                f"the hub at {client.http_base} refused the request: it needs a valid token "
                "(--token or WHEN_AUTH_TOKEN)"
            ) from None
        raise HubClientError(f"the hub at {client.http_base} answered HTTP {status}") from None
    except ConnectionClosed:
        raise HubClientError(f"the hub at {client.http_base} closed the connection") from None
    except (OSError, TimeoutError) as exc:
        raise client._unreachable(exc) from None
    return 0


def _cmd_hub(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from .hub import Hub, HubError  # noqa: PLC0415

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "debug":  # one line per HTTP request is noise at info level
        logging.getLogger("when_coordinator.hub.websockets").setLevel(logging.WARNING)
    if args.token is not None and not args.token.strip():
        raise HubClientError(
            "the token is empty (--token '' or WHEN_AUTH_TOKEN=''), which would leave the hub "
            "open: give a token, or unset WHEN_AUTH_TOKEN and leave out --token to run "
            "without one"
        )
    if args.read_token is not None and not args.read_token.strip():
        raise HubClientError(
            "the read-only token is empty (--read-token '' or WHEN_READ_TOKEN=''), which would "
            "let anyone watch: give a token, or unset WHEN_READ_TOKEN and leave out --read-token"
        )
    try:
        hub = Hub(
            args.host,
            args.port,
            token=args.token,
            read_token=args.read_token,
            trace_url=args.trace_url,
            db=args.db,
            ping_interval=args.ping_interval,
            send_buffer_bytes=args.send_buffer_bytes,
            send_buffer_timeout=args.send_buffer_timeout,
            metrics_public=args.metrics_public,
        )
    except ValueError as exc:
        raise HubClientError(str(exc)) from None
    if not args.token and not _is_loopback(args.host):
        print(
            f"when-coordinator hub: warning: listening on {args.host or 'all interfaces'} "
            f"without a token: anyone who can reach port {args.port} can read and steer every "
            "workflow; set --token or WHEN_AUTH_TOKEN",
            file=sys.stderr,
            flush=True,
        )

    async def serve() -> int:
        try:
            await hub.start()
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise HubClientError(f"cannot listen on {args.host}:{args.port}: {why}") from None
        except HubError as exc:
            raise HubClientError(str(exc)) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
                loop.add_signal_handler(signum, stop.set)
        auth = "token required" if args.token else "no authentication"
        if args.read_token:
            auth += ", read-only token accepted"
        store = f", state kept in {args.db}" if args.db else ""
        for line in listening_lines(args.host, hub.port, f"{auth}{store}"):
            print(line, flush=True)
        try:
            await stop.wait()
        finally:
            await hub.close()
        print("hub stopped", flush=True)
        return 0

    try:
        return asyncio.run(serve())
    except KeyboardInterrupt:
        return 0


_WILDCARDS = ("", "0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (unresolvable: no)."""
    if host in _WILDCARDS:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def dial_host(host: str) -> str:
    """A host that clients can dial for a hub bound to ``host``.

    A wildcard (``0.0.0.0``, ``::``) is no address to dial: it means every interface, so
    the address other machines reach is this machine's outward one (found by routing a UDP
    socket, which sends nothing), else its host name.
    """
    if host not in _WILDCARDS:
        return f"[{host}]" if ":" in host and not host.startswith("[") else host
    family, probe_to = (
        (socket.AF_INET6, "2001:db8::1") if host == "::" else (socket.AF_INET, "192.0.2.1")
    )
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((probe_to, 9))  # documentation-only prefixes: nothing is sent
            address = str(probe.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback:
            return f"[{address}]" if ":" in address else address
    except OSError:
        pass
    return socket.gethostname()


def listening_lines(host: str, port: int, detail: str) -> list[str]:
    """What ``when-coordinator hub`` prints once it listens: a URL that works for clients."""
    address = dial_host(host)
    lines = [f"when-coordinator hub listening on ws://{address}:{port}/v1/coordination"]
    if host in _WILDCARDS:
        loopback = "[::1]" if host == "::" else "127.0.0.1"
        lines.append(
            f"  on all interfaces (from this machine also ws://{loopback}:{port}/v1/coordination)"
        )
    lines.append(f"  operator API http://{address}:{port} ({detail}); Ctrl-C stops")
    lines.append(f"  dashboard    http://{address}:{port}/")
    return lines


def _demo_stub() -> int:
    """Walk one workflow through its phases and print the message each transition sends."""
    from .phase_manager import PhaseManager, PhaseState  # noqa: PLC0415
    from .protocol import Message, PhaseChangedPayload, encode  # noqa: PLC0415

    phases = PhaseManager()

    def show(state: PhaseState) -> None:
        payload = PhaseChangedPayload(
            workflow_id=state.workflow_id,
            from_phase=state.previous_phase,
            to_phase=state.phase,
            checkpoint_id=state.checkpoint_id,
            reason=state.reason,
        )
        print(encode(Message.create(payload)))

    phases.on_phase_changed(show)
    phases.register_workflow("wf-demo")
    for phase in ("pre-flight", "planning", "execution"):
        phases.transition_to("wf-demo", phase, "demo")
    phases.pause("wf-demo", "operator pause")
    phases.complete_pause("wf-demo", "cp-1")
    phases.resume("wf-demo", "cp-1")
    phases.complete_resume("wf-demo")
    phases.complete("wf-demo")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module("when_coordinator.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "when_coordinator.demo":
            raise
        return _demo_stub()
    demo_main: Callable[[Sequence[str]], int] = module.main
    return int(demo_main(list(args.demo_args)))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="when-coordinator",
        description=(
            "Run the reference when-v3 coordination hub, and watch and steer the workflows "
            "of the services connected to it."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--hub",
        default=os.environ.get("WHEN_HUB_URL") or DEFAULT_HUB_URL,
        metavar="URL",
        help=f"the hub to talk to (default: $WHEN_HUB_URL, else {DEFAULT_HUB_URL})",
    )
    remote.add_argument(
        "--token",
        default=os.environ.get("WHEN_AUTH_TOKEN"),
        help="bearer token, if the hub requires one (default: $WHEN_AUTH_TOKEN)",
    )
    remote.add_argument(
        "--http-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up on an unresponsive hub after this long (default: %(default)s)",
    )

    hub = commands.add_parser(
        "hub",
        help="run the reference hub (until Ctrl-C or SIGTERM)",
        description="Run the reference hub. Services connect to ws://HOST:PORT/v1/coordination; "
        "the other commands talk to http://HOST:PORT.",
    )
    hub.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    hub.add_argument(
        "--port", type=int, default=8080, help="port, 0 for any free one (%(default)s)"
    )
    hub.add_argument(
        "--token",
        default=os.environ.get("WHEN_AUTH_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' from every client (default: $WHEN_AUTH_TOKEN)",
    )
    hub.add_argument(
        "--read-token",
        default=os.environ.get("WHEN_READ_TOKEN"),
        help="a second token that may watch but not steer: dashboard, API and operator "
        "WebSocket (default: $WHEN_READ_TOKEN; needs --token)",
    )
    hub.add_argument(
        "--trace-url",
        default=os.environ.get("WHEN_TRACE_URL", ""),
        metavar="TEMPLATE",
        help="link the dashboard shows for a workflow's trace, {trace_id} replaced, e.g. "
        "http://localhost:16686/trace/{trace_id} (default: $WHEN_TRACE_URL)",
    )
    hub.add_argument("--db", metavar="FILE", help="keep services, workflows and logs in SQLite")
    hub.add_argument(
        "--metrics-public",
        action="store_true",
        help="serve GET /metrics (Prometheus text) without the token",
    )
    hub.add_argument(
        "--ping-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between pings to each service (default: %(default)s)",
    )
    hub.add_argument(
        "--send-buffer-bytes",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="a connection whose unsent bytes stay above this (default: %(default)s) ...",
    )
    hub.add_argument(
        "--send-buffer-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="... for this long has stopped reading and is closed (default: %(default)s)",
    )
    hub.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="hub log verbosity on stderr (default: %(default)s)",
    )
    hub.set_defaults(func=_cmd_hub)

    demo = commands.add_parser(
        "demo", help="see the whole loop in one command", add_help=False, prefix_chars="\0"
    )
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=_cmd_demo)

    workflows = commands.add_parser(
        "workflows", parents=[remote], help="list the workflows a hub knows, as a tree"
    )
    workflows.add_argument("--json", action="store_true", help="print the raw JSON")
    workflows.set_defaults(func=_cmd_workflows)

    watch = commands.add_parser(
        "watch",
        parents=[remote],
        help="follow phases, progress and errors live (Ctrl-C stops)",
        description="Follow phases, progress and errors live. On a terminal the screen is "
        "redrawn; otherwise one line is printed per event.",
    )
    watch.add_argument("--workflow", metavar="ID", help="only this workflow and its children")
    watch.add_argument("--logs", action="store_true", help="show log entries too")
    watch.add_argument("--anomalies", action="store_true", help="show protocol anomalies too")
    watch.add_argument("--once", action="store_true", help="print the current state and exit")
    watch.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this long (exit status 0)"
    )
    watch.add_argument("--plain", action="store_true", help="one line per event, no redrawing")
    watch.set_defaults(func=_cmd_watch)

    status = commands.add_parser(
        "status", parents=[remote], help="ask a workflow's service for its live status"
    )
    status.add_argument("workflow_id", metavar="WORKFLOW_ID")
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
        command.add_argument("workflow_id", metavar="WORKFLOW_ID")
        if name in ("pause", "cancel"):
            command.add_argument("--reason", default="", help="recorded with the phase change")
        if name == "resume":
            command.add_argument("--from-checkpoint", default="", metavar="CHECKPOINT_ID")
        if name == "cancel":
            command.add_argument("--force", action="store_true", help="ask for a forced cancel")
        command.set_defaults(func=_cmd_control)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except HubClientError as exc:
        print(f"when-coordinator {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
