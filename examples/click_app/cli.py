"""A click tool whose command runs become workflows, with no when-coordinator code at all.

Opt in with ``WHEN_CLICK_COMMANDS=1`` and run it as usual::

    when-coordinator hub &
    WHEN_URL=ws://127.0.0.1:8080/v1/coordination WHEN_CLICK_COMMANDS=1 \\
        opentelemetry-instrument python cli.py sync --items 3

``cli.py sync`` and ``cli.py fail`` are workflows named after their command paths; ``cli.py
serve`` stands for a server command and is left out with ``WHEN_TASKS_EXCLUDE='* serve'``.
"""

from __future__ import annotations

import logging

import click

log = logging.getLogger("cli")


@click.group()
def cli() -> None:
    """An example tool."""
    logging.basicConfig(level=logging.INFO)


@cli.command()
@click.option("--items", default=3, help="How many items to sync.")
def sync(items: int) -> None:
    """Sync some items."""
    for item in range(items):
        log.warning("synced item %s", item)


@cli.command()
@click.argument("reason")
def fail(reason: str) -> None:
    """Fail with REASON."""
    raise ValueError(reason)


@cli.command()
def serve() -> None:
    """Stands for a long-running server command."""
    log.warning("serving")


if __name__ == "__main__":
    cli()
