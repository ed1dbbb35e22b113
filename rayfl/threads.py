"""A process's compute threads: torch's intra-op pool and the BLAS / OpenMP pools of numpy.

How many threads a float kernel splits its sums over changes its result in the last bits, so a
worker's and the server's numbers must not depend on how their process was started. Ray sets
``OMP_NUM_THREADS`` to an actor's CPUs only when the actor starts; a worker process that
imported numpy before (a Ray started with ``preload_python_modules`` or a
``worker_process_setup_hook``) keeps the BLAS threads it took then: measured, two OpenBLAS
threads per worker changed the default preset's golden weights. :func:`limit` sets every pool in
the process, whatever was imported when.
"""

from __future__ import annotations

import math

import torch
from threadpoolctl import threadpool_limits


def count(num_cpus: float) -> int:
    """Threads for a process given ``num_cpus`` CPUs: Ray's rule (the floor, at least 1)."""
    return max(1, math.floor(num_cpus))


def limit(num_cpus: float) -> int:
    """Every compute thread pool of this process to :func:`count` threads; the count.

    The limits stay for the life of the process (threadpoolctl restores them only on exit from
    a ``with`` block, which this is not).
    """
    threads = count(num_cpus)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # OpenBLAS / MKL / OpenMP loaded so far
    return threads
