"""rayfl.threads: a process's compute threads, whatever it imported before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# numpy (OpenBLAS) and torch are imported with 2 threads asked for, as in a worker process that
# imported them before Ray set OMP_NUM_THREADS for its actor; then the limit every rayfl actor
# sets for 1 CPU.
_LIMITED = textwrap.dedent(
    """
    import numpy, torch
    from threadpoolctl import threadpool_info
    from rayfl import threads

    print("BEFORE", max(p["num_threads"] for p in threadpool_info()), torch.get_num_threads())
    print("COUNT", threads.limit(1.5))
    print("AFTER", sorted({p["num_threads"] for p in threadpool_info()}), torch.get_num_threads())
    """
)


def test_limit_sets_every_pool_a_process_already_has():
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", MKL_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BEFORE 2 2" in proc.stdout, proc.stdout  # the test can fail: there were 2
    assert "COUNT 1" in proc.stdout  # Ray's rule: the floor of the CPUs, at least 1
    assert "AFTER [1] 1" in proc.stdout, proc.stdout


def test_count_follows_rays_rule():
    from rayfl import threads

    assert [threads.count(c) for c in (0, 0.25, 1, 1.9, 2, 8)] == [1, 1, 1, 1, 2, 8]
