"""The run folder: a new one (``runs/<name>-<timestamp>`` by default), a resumed one, or the
local staging folder of a storage URI; checked writable and not holding another run."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.metrics import METRICS_FILE
from rayfl.partlog import PartLog
from rayfl.storage import Mirror


def default_run_dir(cfg: ExperimentConfig, root: str | os.PathLike = "runs") -> Path:
    """``root/<name>-<timestamp>`` (with a suffix if that exists already)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def prepare_run_dir(path: Path, resuming: bool = False) -> Path:
    """Creates ``path`` and checks it is writable (and, unless resuming, holds no run)."""
    if not resuming and PartLog(path / METRICS_FILE).exists():
        raise RayflError(
            f"output folder {path} already holds a run: choose another --output or remove it"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".rayfl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RayflError(
            f"cannot write to output folder {path} ({e.strerror or e}): choose another --output"
        ) from None
    return path


def open_run_dir(
    cfg: ExperimentConfig,
    output: str | os.PathLike | None,
    mirror: Mirror | None,
    resume_dir: Path | None,
) -> Path:
    """The local folder a run writes: the resumed one, the staging folder of a storage URI, or
    ``output`` (default ``runs/<name>-<timestamp>``), checked writable and not holding a run."""
    if resume_dir is not None:
        return prepare_run_dir(resume_dir, resuming=True)
    if mirror is not None:
        mirror.check_writable()
        if mirror.exists(METRICS_FILE):
            raise RayflError(
                f"output {mirror.uri} already holds a run: choose another --output or remove it"
            )
        return mirror.local
    return prepare_run_dir(Path(output) if output is not None else default_run_dir(cfg))
