"""The run driver: one loop, the same for every engine.

It opens the run folder, writes config.yaml, starts Ray if none runs, starts the engine, and then
for each :class:`~rayfl.runtime.engine.Chunk` appends the rows to the Parquet files, updates the
progress bar, calls the user's callback, and writes the checkpoints the engine hands over. At the
end, on Ctrl-C or SIGTERM (``rayfl.interrupts``), and on failure it leaves a readable folder:
the metrics so far, a checkpoint that matches them where one can be had, and summary.json with
the status (finished, stopped, interrupted, failed) and the resume command.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from rayfl import __version__
from rayfl.config import ExperimentConfig, dump_config
from rayfl.environment import fingerprint
from rayfl.errors import RayflError
from rayfl.metrics import (
    CONFIG_FILE,
    MODEL_FILE,
    RunLog,
    atomic_write_bytes,
    read_metrics,
    summarize,
    write_summary,
)
from rayfl.runtime.checkpoint import write_checkpoint
from rayfl.runtime.data import DatasetRefs, put_run_data
from rayfl.runtime.engine import Chunk, Engine
from rayfl.runtime.folder import open_run_dir
from rayfl.runtime.session import ensure_ray, shutdown_ray
from rayfl.storage import Mirror
from rayfl.tracking import open_tracking


@dataclasses.dataclass
class RunResult:
    """What ``rayfl.run`` returns."""

    run_dir: Path
    config: ExperimentConfig
    summary: dict[str, Any]
    weights: np.ndarray  # (P,) float32, the final global model

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")

    @property
    def metrics(self) -> pa.Table:
        """Per-iteration metrics (read from the run folder's metrics.parquet)."""
        return read_metrics(self.run_dir)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run (``rayfl.run``'s keyword arguments, resolved)."""

    output: str | os.PathLike | None = None
    address: str | None = None
    progress: bool | None = None
    dataset: DatasetRefs | None = None
    callback: Callable[[list[dict[str, Any]]], Any] | None = None
    on_checkpoint: Callable[[Path], None] | None = None
    mirror: Mirror | None = None
    resume_dir: Path | None = None
    runtime_env: dict[str, Any] | None = None


class RunDriver:
    """Drives one engine through one run; see the module docstring."""

    def __init__(self, cfg: ExperimentConfig, engine: Engine, opts: RunOptions):
        self.cfg, self.engine, self.opts = cfg, engine, opts
        self.run_dir = open_run_dir(cfg, opts.output, opts.mirror, opts.resume_dir)
        self.where = opts.mirror.uri if opts.mirror is not None else str(self.run_dir)
        atomic_write_bytes(self.run_dir / CONFIG_FILE, dump_config(cfg).encode())
        self.log = RunLog(self.run_dir)
        self.tracking = open_tracking(cfg.tracking, self.run_dir, cfg.name, cfg.to_dict())
        self.records = engine.records(self.run_dir)
        self.checkpointed = opts.resume_dir is not None
        self.status = "running"

    def run(self, ds: Any, part: Any, restore: dict[str, Any] | None) -> RunResult:
        """The whole run; the folder is readable whatever happens (see the module docstring)."""
        t0 = time.perf_counter()
        started_ray = ensure_ray(self.opts.address, self.opts.runtime_env)
        if restore is not None:
            self.log.load(before_iteration=restore["t"])
            if self.records is not None:
                self.records.load(before_round=restore["t"])
        bar = _progress(self.cfg, self.engine.unit, self.opts.progress, restore)
        try:
            self.engine.prestart()  # their processes start while the data go in
            data = put_run_data(ds, part, self.opts.dataset, self.cfg.data.normalize)
            del ds, part  # the object store holds the arrays now
            self.engine.start(data, restore)
            del restore  # the engine holds it now
            stopped = self._loop(bar)
            if self.cfg.checkpoint_every:  # a finished run can be extended (--resume, more T)
                self._checkpoint(self.engine.checkpoint())
            self.engine.finish(self.run_dir / MODEL_FILE)
            self.status = "stopped" if stopped else "finished"
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (rayfl.interrupts)
            self.status = "interrupted"
            self._checkpoint_on_interrupt()
            raise
        except RayflError:
            self.status = "failed"
            raise
        # OwnerDiedError: the server died while the driver read the versions of a checkpoint.
        except (ray.exceptions.RayActorError, ray.exceptions.OwnerDiedError) as e:
            self.status = "failed"
            hint = f"; resume with: rayfl run --resume {self.where}" if self.checkpointed else ""
            raise RayflError(
                f"{self.engine.actor} died ({e.__class__.__name__}); "
                f"results so far are in {self.where}{hint}"
            ) from None
        finally:
            bar.close()
            summary = self._finish(time.perf_counter() - t0)
            self.engine.close()
            if started_ray:
                shutdown_ray()
        return RunResult(self.run_dir, self.cfg, summary, self.engine.weights)

    def _loop(self, bar: Any) -> bool:
        """Logs every chunk the engine hands over; True if the callback stopped the run."""
        stopped = False
        for chunk in self.engine.chunks():
            self._log(chunk)
            if chunk.checkpoint is not None:
                self._checkpoint(chunk.checkpoint)
            if not chunk.metrics:
                continue
            if self.opts.callback is not None and self.opts.callback(chunk.metrics) is True:
                if not stopped:
                    self.engine.stop()  # the callback asked to end early: drain what is in flight
                stopped = True
            bar.update(len(chunk.metrics))
            if self.log.last is not None:
                bar.set_postfix(
                    self.engine.postfix(self.log.last, self.log.last_eval()), refresh=False
                )
            if self._flush(force=False) and self.opts.mirror is not None:
                self.opts.mirror.push(force=False)
        return stopped

    def _log(self, chunk: Chunk) -> None:
        if chunk.metrics and chunk.metrics[0]["iteration"] != self.log.iterations_done:
            # Never seen: a chunk lost in flight would leave a hole in the metrics.
            raise RuntimeError(
                f"rows of iteration {chunk.metrics[0]['iteration']} arrived after "
                f"{self.log.iterations_done} iterations: this is a bug, please report it"
            )
        self.log.extend(chunk.metrics, chunk.updates)
        self.tracking.log(chunk.metrics)
        if self.records is not None:
            self.records.extend(chunk.records)

    def _flush(self, force: bool = True) -> bool:
        if not self.log.flush(force=force):
            return False
        if self.records is not None:
            self.records.flush()
        return True

    def _checkpoint(self, state: dict[str, Any]) -> None:
        """Writes ``state``: metrics first, so a checkpoint never runs ahead of them."""
        self._flush()
        write_checkpoint(self.run_dir, state)
        self.checkpointed = True
        if self.opts.mirror is not None:
            self.opts.mirror.push()
        if self.opts.on_checkpoint is not None:
            self.opts.on_checkpoint(self.run_dir)

    def _checkpoint_on_interrupt(self) -> None:
        """A checkpoint that matches the rows logged, if the engine can give one; a second
        interrupt meanwhile gives up quietly (the last periodic checkpoint stays)."""
        if not self.cfg.checkpoint_every:
            return
        try:
            state = self.engine.interrupted(self._log)
            # A state ahead of the rows logged means a chunk was lost: keep the last checkpoint.
            if state is not None and state["t"] <= self.log.iterations_done:
                self.log.trim(state["t"])
                if self.records is not None:
                    self.records.trim(state["t"])
                self._checkpoint(state)
        except (KeyboardInterrupt, Exception):
            pass

    def _finish(self, wall_s: float) -> dict[str, Any]:
        """Flushes the files, folds their parts into one file each, writes summary.json;
        returns the summary."""
        self._flush()
        self.log.compact()
        if self.records is not None:
            self.records.compact()
        engine = self.engine.summary(finished=self.status in ("finished", "stopped"))
        environment = fingerprint()  # what the floats depend on (rayfl.environment)
        workers = engine.pop("worker_environments", None)
        if workers:
            environment["workers"] = workers  # the client workers' own, grouped
        summary = {
            "name": self.cfg.name,
            "status": self.status,
            "rayfl_version": __version__,
            "seed": self.cfg.seed,
            **summarize(self.log.rows()),
            "driver_wall_s": wall_s,
            **engine,
            "environment": environment,
        }
        if self.status not in ("finished", "stopped") and self.checkpointed:
            summary["resume"] = f"rayfl run --resume {self.where}"
        if self.opts.mirror is not None:
            summary["storage"] = self.opts.mirror.uri
        write_summary(self.run_dir, summary)
        files = (MODEL_FILE, CONFIG_FILE, "summary.json", "metrics.parquet")
        self.tracking.artifacts(self.run_dir / f for f in files)
        self.tracking.finish(self.status)
        if self.opts.mirror is not None:
            self.opts.mirror.push()
        return summary


def _progress(
    cfg: ExperimentConfig, unit: str, enabled: bool | None, restore: dict[str, Any] | None
) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        total=cfg.iterations,
        initial=0 if restore is None else restore["t"],
        desc=cfg.name,
        unit=unit,
        dynamic_ncols=True,
        disable=not enabled,
        leave=True,
    )
