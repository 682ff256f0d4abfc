"""A real Redis server for the task-queue integration tests: Debian's ``redis-server`` on a
free loopback port, in a temporary directory, without persistence.

``make test`` installs it where it can (``scripts/ensure-system-deps``). Where it is missing
the tests that need it are skipped, except under ``CI=true``, where that fails the run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

from tests.support.faults import free_port
from tests.support.programs import missing_part

INSTALL_HINT = "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"


def redis_server_binary() -> str:
    """The ``redis-server`` path; skips the test where it is missing, fails it under CI."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path is None:
        missing_part(INSTALL_HINT)
    return path


class RedisServer:
    """``with RedisServer() as redis: redis.url``; the server and its directory go at exit."""

    def __init__(self, binary: str, *, start_timeout: float = 10.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="when-redis-")
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    self._dir.name,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                    "--daemonize",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self._stop()
        raise RuntimeError(f"{self.binary} did not start on a free loopback port")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)  # polling a server that is starting: there is no event to wait on
        return False

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


__all__ = ["INSTALL_HINT", "RedisServer", "redis_server_binary"]
