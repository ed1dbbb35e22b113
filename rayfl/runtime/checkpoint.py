"""Checkpoint files: ``checkpoint.pkl`` in the run folder, written atomically (write, rename).

A checkpoint is the engine's whole state at an iteration or round boundary that matches the
metrics already written, so ``rayfl run --resume`` continues bit-identically on the virtual clock.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import ray

from rayfl.errors import RayflError
from rayfl.metrics import CHECKPOINT_FILE, CONFIG_FILE, atomic_write


def write_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Writes the engine's state to RUN_DIR/checkpoint.pkl atomically (write, then rename).

    The model versions in ``state`` may be ObjectRefs (``KAsyncServer.checkpoint``): they are
    read from the object store here and streamed to the file with the rest.
    """
    versions = state.get("versions", {})
    if any(isinstance(w, ray.ObjectRef) for w in versions.values()):
        arrays = ray.get(list(versions.values()))
        state = {**state, "versions": dict(zip(versions, arrays, strict=True))}
    atomic_write(run_dir / CHECKPOINT_FILE, lambda f: pickle.dump(state, f, protocol=5))


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of a run folder; RayflError (one line) if it is not a resumable run."""
    if not run_dir.is_dir():
        raise RayflError(f"--resume {run_dir}: no such folder; pass a folder written by rayfl run")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RayflError(
            f"--resume {run_dir}: not a rayfl run folder (no {CONFIG_FILE}); pass a folder "
            "written by rayfl run"
        )
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise RayflError(
            f"--resume {run_dir}: the run has no checkpoint yet (checkpoint_every iterations "
            "had not passed); start it again"
        )
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as e:  # a truncated or foreign file: any unpickling error
        raise RayflError(
            f"--resume {run_dir}: {CHECKPOINT_FILE} is unreadable ({e.__class__.__name__}); "
            "start the run again"
        ) from None
    if not isinstance(state, dict) or "t" not in state:
        raise RayflError(f"--resume {run_dir}: {CHECKPOINT_FILE} is not a rayfl checkpoint")
    return state
