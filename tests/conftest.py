"""Shared fixtures: one real local Ray instance per test session (2 CPUs, 1 pretend GPU)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Test-only user modules (model factories given by import path) and the examples' user package
# (examples/rayfl_extras) must import in Ray's workers, which inherit this environment when the
# session's Ray starts. The multi-node test takes EXAMPLES out again: there the package must
# reach the nodes through runtime_env.
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (FIXTURES, EXAMPLES, os.environ.get("PYTHONPATH")) if p
)
sys.path.insert(0, EXAMPLES)


@pytest.fixture(scope="session")
def ray_session():
    """A real Ray cluster on this machine, started once. num_gpus=1 lets the fractional-GPU tests
    schedule actors with num_gpus=0.25 on a CPU-only machine (they fall back to CPU compute)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_session):
    """The GCS address of the session's cluster, for CLI subprocesses (--address)."""
    return ray_session.get_runtime_context().gcs_address


def run_cli(*args: str, timeout: float = 600):
    """``python -m rayfl.cli ARGS`` in a subprocess (CleanRL style); the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "rayfl.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli`, for tests that drive the real command line."""
    return run_cli
