"""rayfl.heap: glibc's freed pages go back to the OS, at most once per interval."""

import sys

import numpy as np
import psutil
import pytest

from rayfl import heap

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")


@linux
def test_trim_returns_freed_heap_pages():
    # Many blocks below glibc's mmap threshold, every other one kept: the freed half stays in
    # the heap (fragmented, so free() cannot shrink it) until malloc_trim gives it back.
    blocks = [np.ones(16_000, dtype=np.uint8) for _ in range(20_000)]  # ~320 MB
    keep = blocks[::2]
    del blocks
    before = psutil.Process().memory_info().rss
    assert heap.trim()
    after = psutil.Process().memory_info().rss
    assert before - after > 50e6, (before, after)
    del keep


def test_trimmer_waits_its_interval():
    trimmer = heap.HeapTrimmer(every_s=3600)
    assert trimmer() is False  # the interval starts when the trimmer is made
    now = heap.HeapTrimmer(every_s=0)
    assert now() is heap.trim()  # trims whenever called (False only without malloc_trim)
