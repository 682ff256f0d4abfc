"""The ``when-coordinator`` command: run the reference hub, watch and steer its workflows.

Only the standard library and websockets are used, and heavy modules are imported by the
subcommand that needs them, so the command starts quickly. The operator commands (workflows,
watch, show, logs, services, status, pause, resume, cancel) are in ``cli_operator``, their
tables in ``cli_views`` and the live event stream in ``cli_watch``.

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
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["HubClient", "HubClientError", "main"]

DEFAULT_HUB_URL = "http://127.0.0.1:8080"
_EPILOG = """\
environment:
  WHEN_HUB_URL      the hub for every command but `hub` and `demo`
                    (default http://127.0.0.1:8080)
  WHEN_AUTH_TOKEN   the bearer token for those commands, and the token `hub` requires
  WHEN_HUB_DB       the hub's --db (a SQLite file or a postgresql:// URL)
  WHEN_READ_TOKEN   `hub`: a token that may watch (dashboard, API) but not steer
  WHEN_TRACE_URL    `hub`: the dashboard's trace link, e.g. http://jaeger:16686/trace/{trace_id}

examples:
  when-coordinator hub                        run a hub on port 8080 (dashboard: http://127.0.0.1:8080/)
  when-coordinator workflows --active         list the workflows the hub knows
  when-coordinator watch                      follow phases and progress live (Ctrl-C stops)
  when-coordinator show wf-3f2a               a workflow's history (any unique id prefix)
  when-coordinator logs -f --level warn       follow warnings and errors
  when-coordinator pause wf-3f2a --reason "db maintenance"
  when-coordinator resume wf-3f2a
  when-coordinator status wf-3f2a             ask the workflow's service for its status
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

    def headers(self) -> dict[str, str]:
        """The HTTP headers of every request: JSON, and the credentials when there are any."""
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
            headers=self.headers(),
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


def _cmd_hub(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from .hub import Hub, HubError  # noqa: PLC0415
    from .hub.store import redact_url  # noqa: PLC0415

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
            instance_id=args.instance_id,
            lease_timeout=args.lease_timeout,
            retention=args.retention,
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
        store = f", state kept in {redact_url(args.db)}" if args.db else ""
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
    hub.add_argument(
        "--db",
        metavar="FILE|URL",
        default=os.environ.get("WHEN_HUB_DB") or None,
        help="keep services, workflows and logs in a SQLite FILE, or in PostgreSQL "
        "(postgresql://...: several hub instances may share it); default: $WHEN_HUB_DB, "
        "else memory",
    )
    hub.add_argument(
        "--instance-id",
        default=os.environ.get("WHEN_HUB_INSTANCE_ID") or None,
        help="this instance's name among those sharing a PostgreSQL --db (default: random)",
    )
    hub.add_argument(
        "--lease-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="with PostgreSQL: the services of an instance silent this long show as "
        "disconnected (default: %(default)s)",
    )
    hub.add_argument(
        "--retention",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with PostgreSQL: drop finished workflows and logs older than this "
        "(default: keep them within the count bounds only)",
    )
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

    from .cli_operator import add_commands  # noqa: PLC0415

    add_commands(commands, remote)
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
    except BrokenPipeError:
        # The reader went away (`when-coordinator workflows | head -1`): that ends the
        # command, quietly. Python would still try to flush stdout at exit and complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # Run as ``python -m``, this file is ``__main__``, and the command modules import the
    # real ``when_coordinator.cli``: use that one, so there is one ``HubClientError``.
    from when_coordinator import cli as _cli  # noqa: PLW0406

    sys.exit(_cli.main())
