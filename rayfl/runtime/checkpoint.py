"""Checkpoint files: ``checkpoint.npz`` in the run folder, written atomically (write, rename).

A checkpoint is the engine's whole state at an iteration or round boundary that matches the
metrics already written, so ``rayfl run --resume`` continues bit-identically on the virtual clock.

No pickle: the state's tree is JSON (:mod:`rayfl.runtime.safestate`), stored with its numeric
arrays (the model, the held versions, array states) in one ``.npz`` read with
``allow_pickle=False``. Reading a checkpoint from a run folder or a storage bucket therefore
never runs code, and a checkpoint is not tied to the classes of the code that wrote it: the
engines give a state its classes back from their own ``init`` (``safestate.conform``).
Checkpoints of rayfl <= 0.1 (``checkpoint.pkl``) are refused with the command that converts one,
which the user runs on a file they trust.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rayfl.errors import RayflError
from rayfl.metrics import CHECKPOINT_FILE, CONFIG_FILE, atomic_write
from rayfl.runtime import safestate

LEGACY_FILE = "checkpoint.pkl"  # rayfl <= 0.1: a pickle
STATE_KEY = "__state__"  # the JSON tree, as uint8 bytes beside the arrays


def write_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Writes the engine's state to RUN_DIR/checkpoint.npz atomically (write, then rename).

    The model versions in ``state`` may be ObjectRefs (``KAsyncServer.checkpoint``): they are
    read from the object store here and written with the rest.

    Raises:
        RayflError: a part of the state cannot be stored without pickle (its path named).
    """
    versions = state.get("versions", {})
    if any(isinstance(w, ray.ObjectRef) for w in versions.values()):
        arrays = ray.get(list(versions.values()))
        state = {**state, "versions": dict(zip(versions, arrays, strict=True))}
    arrays: dict[str, np.ndarray] = {}
    try:
        tree = safestate.encode(state, arrays, "checkpoint")
    except safestate.UnsafeState as e:
        raise RayflError(str(e)) from None
    text = json.dumps({"safestate": safestate.FORMAT, "state": tree}, allow_nan=False)
    arrays[STATE_KEY] = np.frombuffer(text.encode(), dtype=np.uint8)
    atomic_write(run_dir / CHECKPOINT_FILE, lambda f: np.savez(f, **arrays))


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of a run folder, decoded with data only (NamedTuples and dataclasses as
    :class:`~rayfl.runtime.safestate.Record`); RayflError (one line) if it is not a resumable
    run."""
    path = _checkpoint_path(run_dir)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        document = json.loads(arrays.pop(STATE_KEY).tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise RayflError(
            f"--resume {run_dir}: {CHECKPOINT_FILE} is unreadable ({e.__class__.__name__}: a "
            "truncated or foreign file); start the run again"
        ) from None
    if not isinstance(document, dict) or document.get("safestate") != safestate.FORMAT:
        raise RayflError(
            f"--resume {run_dir}: {CHECKPOINT_FILE} has state format "
            f"{document.get('safestate') if isinstance(document, dict) else None!r}, this rayfl "
            f"reads {safestate.FORMAT}: resume with the rayfl that wrote it"
        )
    state = safestate.decode(document["state"], arrays)
    if not isinstance(state, dict) or "t" not in state:
        raise RayflError(f"--resume {run_dir}: {CHECKPOINT_FILE} is not a rayfl checkpoint")
    return state


def _checkpoint_path(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise RayflError(f"--resume {run_dir}: no such folder; pass a folder written by rayfl run")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RayflError(
            f"--resume {run_dir}: not a rayfl run folder (no {CONFIG_FILE}); pass a folder "
            "written by rayfl run"
        )
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file() and (run_dir / LEGACY_FILE).is_file():
        raise RayflError(
            f"--resume {run_dir}: its checkpoint is a pickle ({LEGACY_FILE}, rayfl <= 0.1), and "
            "loading a pickle can run any code, so rayfl does not: if you trust the file, run "
            f"`rayfl checkpoint convert {run_dir}` and resume"
        )
    if not path.is_file():
        raise RayflError(
            f"--resume {run_dir}: the run has no checkpoint yet (checkpoint_every iterations "
            "had not passed); start it again"
        )
    return path


def convert_legacy(run_dir: Path) -> Path:
    """Rewrites a trusted ``checkpoint.pkl`` as ``checkpoint.npz`` (``rayfl checkpoint
    convert``): the one place rayfl loads a pickle, on the user's explicit word."""
    legacy = run_dir / LEGACY_FILE
    if not legacy.is_file():
        raise RayflError(f"rayfl checkpoint convert {run_dir}: there is no {LEGACY_FILE} in it")
    try:
        state = pickle.load(io.BytesIO(legacy.read_bytes()))  # noqa: S301 - the user trusts it
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise RayflError(f"{legacy} is unreadable ({e.__class__.__name__})") from None
    write_checkpoint(run_dir, state)
    return run_dir / CHECKPOINT_FILE
