"""Socket reads stay off ``mmap`` under glibc, in the hub and in the client.

Each case runs in a fresh interpreter: glibc's dynamic mmap threshold is process state, and
this one (pytest, many imports) has long raised it. The switch is shown to work in a bare
interpreter, where a block of asyncio's read size (256 KiB) is still mmapped: glibc's own
counter of mmapped blocks (``mallinfo2().hblks``) tells where a block came from. Whether
importing the hub or the client raises the threshold as well depends on what the imports
happen to allocate and free (the regression this guards against came from such an accident),
so for those the tests check that starting them threw the switch, and the block's origin.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from when_coordinator._compat import allocator
from when_coordinator.hub import ThreadedHub

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's dynamic mmap threshold: other allocators do not have it",
)

PROBE = """
import ctypes

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

held = []

def read_is_mmapped():
    # The block is kept: freeing an mmapped block is what raises the threshold.
    before = libc.mallinfo2().hblks
    held.append(bytearray(256 * 1024))
    return libc.mallinfo2().hblks > before
"""


def run(body: str) -> None:
    code = PROBE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_switch_moves_a_read_sized_block_from_mmap_to_the_heap() -> None:
    path = allocator.__file__
    run(
        f"""
        import importlib.util
        # The module alone: importing the package could raise the threshold by accident.
        spec = importlib.util.spec_from_file_location("allocator", {path!r})
        allocator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(allocator)
        keep_reads_off_mmap = allocator.keep_reads_off_mmap
        assert read_is_mmapped(), "a fresh interpreter should still mmap 256 KiB blocks"
        keep_reads_off_mmap()
        assert not read_is_mmapped()
        keep_reads_off_mmap()  # idempotent
        assert not read_is_mmapped()
        """
    )


def test_a_started_hub_reads_from_the_heap() -> None:
    run(
        """
        import asyncio
        from when_coordinator.hub import Hub

        from when_coordinator._compat.allocator import reads_kept_off_mmap

        async def main():
            assert not reads_kept_off_mmap()
            async with Hub(port=0):
                assert reads_kept_off_mmap(), "Hub.start() did not keep reads off mmap"
                assert not read_is_mmapped()

        asyncio.run(main())
        """
    )


def test_a_started_client_reads_from_the_heap(hub: ThreadedHub) -> None:
    run(
        f"""
        from when_coordinator import Config, Coordinator
        from when_coordinator._compat.allocator import reads_kept_off_mmap

        assert not reads_kept_off_mmap()
        with Coordinator(Config(when_url={hub.url!r}, service_name="alloc")) as coordinator:
            assert coordinator.wait_registered(10), "the client did not register"
            assert reads_kept_off_mmap(), "the client's session did not keep reads off mmap"
            assert not read_is_mmapped()
        """
    )
