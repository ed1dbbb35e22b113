"""Are this machine's CPUs as many cores' worth as they say? Two single-thread CPU-bound
processes at once against one alone (a pure-Python loop, and memory-bound numpy row norms over a
(10, 582026) float32 block, the paper CNN's K = 10 stack). About 1.0x means two real cores;
about 2x, one core's worth shared (hyperthreads, a busy host). Read the other benchmarks'
parallel numbers with it.

    python benchmarks/cores.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def python_loop(n: int = 30_000_000) -> float:
    t = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - t


def numpy_row_norms(repeats: int = 200) -> float:
    import numpy as np

    block = np.random.default_rng(0).standard_normal((10, 582026), dtype=np.float32)
    t = time.perf_counter()
    for _ in range(repeats):
        np.einsum("ij,ij->i", block, block)
    return time.perf_counter() - t


def main() -> None:
    for name, work in (("python loop", python_loop), ("numpy row norms, 23 MB", numpy_row_norms)):
        alone = min(work() for _ in range(2))
        with mp.Pool(2) as pool:
            both = pool.starmap(work, [()] * 2)
        print(
            f"{name}: alone {alone:.2f} s, two at once {both[0]:.2f} / {both[1]:.2f} s "
            f"-> {max(both) / alone:.2f}x"
        )


if __name__ == "__main__":
    main()
