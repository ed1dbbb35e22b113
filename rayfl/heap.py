"""Giving freed heap memory back to the operating system in long-running processes.

glibc's malloc keeps the pages of freed blocks for reuse, and a process that allocates and frees
model-sized arrays (a few MB) from several threads all run long (the server, the client workers,
the driver) ends up holding more and more of them in fragmented arenas: its memory rises for
hours although nothing leaks. ``HeapTrimmer`` calls ``malloc_trim(0)``, which returns every free
page of every arena, at most once per interval. It does nothing where libc has no
``malloc_trim`` (macOS, musl).
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable

TRIM_EVERY_S = 10.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library the process already runs on
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def trim() -> bool:
    """Returns the heap's free pages to the operating system now; False where it cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class HeapTrimmer:
    """Call it as often as convenient; it trims at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = TRIM_EVERY_S):
        self.every_s = every_s
        self._last = time.monotonic()

    def __call__(self) -> bool:
        """Trims the heap if ``every_s`` has passed since the last trim; True if it did."""
        if time.monotonic() - self._last < self.every_s:
            return False
        self._last = time.monotonic()
        return trim()
