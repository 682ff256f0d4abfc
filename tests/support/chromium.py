"""The headless Chromium the browser tests and the dashboard benchmark drive (Debian's
``chromium``; ``WHEN_CHROMIUM`` names another), with the flags both launch it with."""

from __future__ import annotations

import os
import shutil

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]

CHROMIUM = os.environ.get("WHEN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
