"""``rayfl.run``: one experiment from a config (or a run folder to resume) to its run folder.

It resolves the config, loads and partitions the data (bad data fails before any folder or Ray
exists), picks the engine (``mode: async`` -> K-async, ``mode: sync`` -> synchronous rounds) and
hands both to the run driver (:mod:`rayfl.runtime.driver`). It starts Ray only if none is running
(so it works inside a Ray Tune trial or a Ray job) and never shuts down a Ray it did not start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# torch loads here, before the driver starts or joins Ray: loaded after ray.init in a `ray job
# submit` entrypoint, libtorch_cpu failed ("Intel oneMKL FATAL ERROR: Cannot load
# libtorch_cpu.so"); rayfl <= this release always loaded it first.
import torch  # noqa: F401

from rayfl.config import ExperimentConfig, load_config
from rayfl.errors import RayflError
from rayfl.metrics import CONFIG_FILE
from rayfl.runtime.checkpoint import read_checkpoint
from rayfl.runtime.data import DatasetRefs, run_data
from rayfl.runtime.driver import RunDriver, RunOptions, RunResult
from rayfl.storage import Mirror, is_uri

__all__ = ["RunResult", "run"]


def run(
    config: ExperimentConfig | str | os.PathLike | Mapping[str, Any] = "akafl-rj",
    *,
    overrides: Sequence[str] = (),
    output: str | os.PathLike | None = None,
    address: str | None = None,
    progress: bool | None = None,
    dataset: DatasetRefs | None = None,
    callback: Callable[[list[dict[str, Any]]], Any] | None = None,
    resume: str | os.PathLike | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> RunResult:
    """Runs one experiment and writes its run folder.

    Args:
        config: an ``ExperimentConfig``, a preset name, a YAML path or a mapping. Ignored with
            ``resume`` (the run folder's config.yaml is used, with ``overrides`` on top).
        overrides: ``key.path=value`` strings applied on top (as ``--set``).
        output: the run folder, or a storage URI (``s3://...``, ``gs://...``, ``file://...``)
            that every node can reach; default ``runs/<name>-<timestamp>``.
        address: a Ray cluster to connect to if Ray is not running yet (as ``ray.init``).
            With neither, the call starts a local Ray and stops it at the end (~2-3 s on 2
            cores); for several runs in one process call ``ray.init()`` once first, and each
            run joins it (docs/benchmarks.md, "A short experiment end to end").
        progress: show a progress bar; default when stderr is a terminal.
        dataset: the data set already in the object store (``share_dataset``); it must be the
            config's data set. Used by Ray Tune so that trials share one copy.
        callback: called with each chunk of metric rows as they arrive (e.g. ``tune.report``);
            if it returns True the run stops early and cleanly (status "stopped").
        resume: a run folder (or storage URI) with a checkpoint: continue that run where its
            last checkpoint left off (virtual clock: the final weights equal an uninterrupted
            run's).
        on_checkpoint: called with the run folder after each checkpoint is written.
        runtime_env: Ray's runtime environment for the run's job when this call starts or
            connects to Ray, e.g. ``{"py_modules": ["my_pkg"]}`` to ship a user package with
            its rules, selectors or tasks to every node (docs/extending.md).

    Returns:
        A ``RunResult`` with the run folder, summary and final weights.

    Example:
        >>> result = rayfl.run("akafl-rj", overrides=["iterations=100"])  # doctest: +SKIP
        >>> result.final_accuracy  # doctest: +SKIP
    """
    mirror: Mirror | None = None
    if resume is not None and is_uri(resume):
        mirror = Mirror(str(resume))
        resume = mirror.pull()
    elif is_uri(output):
        mirror = Mirror(str(output))
    resume_dir = Path(resume) if resume is not None else None
    cfg, restore = _resolve(config, overrides, resume_dir)
    ds, part = run_data(cfg, dataset)  # bad data fails here, before any folder or Ray exists
    engine = _engine(cfg, part.sizes())
    opts = RunOptions(
        output, address, progress, dataset, callback, on_checkpoint, mirror, resume_dir, runtime_env
    )
    return RunDriver(cfg, engine, opts).run(ds, part, restore)


def _resolve(
    config: Any, overrides: Sequence[str], resume_dir: Path | None
) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """The run's config and, when resuming, the checkpoint's state (checked against it)."""
    if resume_dir is None:
        if isinstance(config, ExperimentConfig) and not overrides:
            return config, None
        return load_config(config, overrides), None
    restore = read_checkpoint(resume_dir)
    cfg = load_config(str(resume_dir / CONFIG_FILE), overrides)
    if restore["t"] >= cfg.iterations:
        raise RayflError(
            f"{resume_dir} already ran {restore['t']} of {cfg.iterations} iterations: "
            "raise iterations with --set iterations=N to go on"
        )
    mode = restore.get("mode", "async")
    if cfg.mode == "sync" and mode != "sync":
        raise RayflError(f"--resume {resume_dir}: the checkpoint is not a mode: sync run's")
    if cfg.mode != "sync" and mode != "async":
        raise RayflError(f"--resume {resume_dir}: the checkpoint is a mode: sync run's, not async")
    return cfg, restore


def _engine(cfg: ExperimentConfig, sizes: Any) -> Any:
    """The engine of ``cfg.mode`` (imported here: each pulls in only its own modules)."""
    if cfg.mode == "sync":  # synchronous rounds with client selection
        from rayfl.rounds.engine import RoundsEngine

        return RoundsEngine(cfg, sizes)
    from rayfl.server.engine import KAsyncEngine

    return KAsyncEngine(cfg)
