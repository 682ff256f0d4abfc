"""A real PostgreSQL server for the tests, started from Debian's binaries.

``initdb`` into a temporary directory, ``postgres`` on a free 127.0.0.1 port with its unix
socket in that directory, fsync off (a test database is thrown away). ``initdb`` refuses to
run as root, so as root the server runs as the ``postgres`` system user (``runuser``), the
directory owned by it. One server per test session; each test gets a database of its own.

Without the binaries the tests that need them skip, saying how to get them
(``make test`` installs them where it can, see ``scripts/ensure-system-deps``); under
``CI=true`` they fail instead, so a CI run never passes without them.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.faults import free_port
from tests.support.programs import missing_part

__all__ = ["PostgresServer", "find_postgres_bin", "require_postgres"]

_INSTALL_HINT = (
    "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
    "run `make test` as root or `sudo apt-get install postgresql` to run the PostgreSQL tests"
)


def find_postgres_bin() -> Path | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    """The bin directory, else skip (fail under ``CI=true``) with how to install it."""
    bindir = find_postgres_bin()
    if bindir is None:
        missing_part(_INSTALL_HINT)
    try:
        import psycopg  # noqa: F401, PLC0415
    except ImportError:
        missing_part("psycopg missing: pip install 'when-coordinator[postgres]'")
    return bindir


class PostgresServer:
    """One throwaway PostgreSQL cluster (see the module)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="when-pg-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._as_root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def start(self, timeout: float = 60.0) -> PostgresServer:
        data = self.dir / "data"
        if self._as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        log = (self.dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            self._cmd(
                str(self.bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        import psycopg  # noqa: PLC0415

        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"PostgreSQL did not start:\n{(self.dir / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg  # noqa: PLC0415

        name = f"hub_test_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.dir / "data"),
                    "-m",
                    "immediate",
                ),
                capture_output=True,
                check=False,
            )
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.dir)
