"""``run_rounds``: a synchronous run (``mode: sync``) from config to run folder.

Called by :func:`rayfl.run` for ``mode: sync``. Same run folder as the K-async engine
(config.yaml, metrics.parquet with ``eval/accuracy``, updates.parquet, model.pt, summary.json, so
``rayfl plot`` works), plus ``rounds.parquet``: one row per round with the selection, the bids,
caps, payments, bargaining steps, leftover and carried budget, utilities, social welfare, Nash
product and accuracy (columns: :data:`rayfl.rounds.loop.ROUND_COLUMNS`).

The server side runs in this process (the driver); the clients train on the worker pool
(``make_pool``: one worker per ``client.num_cpus``, or ``client.num_workers``). Sync runs write no
checkpoint (``checkpoint_every`` is ignored): a 60-round run takes minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from rayfl import __version__
from rayfl.clients.worker import make_pool
from rayfl.config import ExperimentConfig, dump_config
from rayfl.errors import RayflError
from rayfl.metrics import (
    CONFIG_FILE,
    MODEL_FILE,
    RunLog,
    atomic_write_bytes,
    summarize,
    write_summary,
    write_table,
)
from rayfl.rounds.loop import ROUND_COLUMNS, RoundServer
from rayfl.server import driver as _async

ROUNDS_FILE = "rounds.parquet"
WORKER_START_TIMEOUT_S = 300.0
T_TARGET = 0.75  # the paper's accuracy target (t75)


def rounds_to(accuracy: list[float] | np.ndarray, target: float = T_TARGET) -> int | None:
    """Rounds completed when the accuracy first reaches ``target`` (None if never).

    ``accuracy[t]`` is the accuracy after round t (0-based), so the answer is t + 1.

    >>> rounds_to([0.5, 0.7, 0.76, 0.74])
    3
    """
    hits = np.flatnonzero(np.nan_to_num(np.asarray(accuracy, dtype=float), nan=-1.0) >= target)
    return int(hits[0]) + 1 if hits.size else None


def run_rounds(
    cfg: ExperimentConfig,
    *,
    output: str | os.PathLike | None = None,
    address: str | None = None,
    progress: bool | None = None,
    dataset: Any = None,
    callback: Callable[[list[dict[str, Any]]], None] | None = None,
    resume: str | os.PathLike | None = None,
) -> _async.RunResult:
    """Runs ``cfg.iterations`` synchronous rounds and writes the run folder (see module doc).

    Arguments as :func:`rayfl.run` (``dataset``: a ``DatasetRefs`` already in the object store).
    """
    if cfg.mode != "sync":
        raise RayflError(f"run_rounds needs mode: sync, got mode: {cfg.mode}")
    if resume is not None:
        raise RayflError("sync runs write no checkpoint and cannot be resumed: start it again")
    # --- data first: bad data fails before any folder or Ray exists ---
    ds, part = _async.run_data(cfg, dataset)
    sizes = part.sizes()
    run_dir = _async.prepare_run_dir(
        Path(output) if output is not None else _async.default_run_dir(cfg)
    )
    atomic_write_bytes(run_dir / CONFIG_FILE, dump_config(cfg).encode())
    started_ray = _async.ensure_ray(address)
    log = RunLog(run_dir)
    records: list[dict[str, Any]] = []
    workers: list[Any] = []
    bar = _async._progress(cfg, progress)
    bar.unit = "round"
    t0 = time.perf_counter()
    status = "running"
    server: RoundServer | None = None
    try:
        data = _async.put_run_data(ds, part, dataset)
        del ds, part
        # --- the worker pool: the clients' side, private numbers included ---
        workers = make_pool(cfg, max_concurrency=4)
        try:
            info = ray.get([w.attach.remote(data) for w in workers], timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RayflError(
                f"{len(workers)} client workers could not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s: lower client.num_cpus / client.num_gpus or "
                "client.num_workers"
            ) from None
        server = RoundServer(cfg, data, workers, sizes)
        last_flush = time.perf_counter()
        # --- the rounds ---
        for _ in range(cfg.iterations):
            row, record, updates = server.round()
            log.extend([row], updates)
            records.append(record)
            if callback is not None:
                callback([row])
            bar.update(1)
            _postfix(bar, row, server)
            if time.perf_counter() - last_flush > 5.0:
                _flush(run_dir, log, records)
                last_flush = time.perf_counter()
        model = server.model
        from rayfl.models import set_flat

        set_flat(model, server.w)
        torch.save(model.state_dict(), run_dir / MODEL_FILE)
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except RayflError:
        status = "failed"
        raise
    finally:
        bar.close()
        _flush(run_dir, log, records)
        summary = {
            "name": cfg.name,
            "status": status,
            "rayfl_version": __version__,
            "seed": cfg.seed,
            "mode": "sync",
            "selection": cfg.selection.kind,
            **summarize(log.metrics),
            **_round_summary(records),
            "driver_wall_s": time.perf_counter() - t0,
        }
        if status == "finished":
            summary["num_workers"] = len(workers)
            summary["worker_nodes"] = sorted({w["node_id"] for w in info})
            summary["num_parameters"] = int(server.w.size) if server is not None else None
        if server is not None:
            summary["worker_failures"] = server.pool.failures
        write_summary(run_dir, summary)
        for w in workers:
            ray.kill(w)
        if started_ray:
            ray.shutdown()
    assert server is not None
    return _async.RunResult(run_dir=run_dir, config=cfg, summary=summary, weights=server.w)


def _flush(run_dir: Path, log: RunLog, records: list[dict[str, Any]]) -> None:
    log.flush()
    if records:
        write_table(run_dir / ROUNDS_FILE, [{c: r[c] for c in ROUND_COLUMNS} for r in records])


def _round_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    if not records:
        return {}
    acc = [r["accuracy"] for r in records]
    pays = [sum(r["payments"]) for r in records]
    return {
        "t75": rounds_to(acc),
        "rounds_skipped": int(sum(r["skipped"] for r in records)),
        "total_payments": float(sum(pays)),
        "final_carried": records[-1]["carried"],
        "mean_social_welfare": float(np.nanmean([r["social_welfare"] for r in records])),
    }


def _postfix(bar: Any, row: dict[str, Any], server: RoundServer) -> None:
    post: dict[str, Any] = {}
    acc = next((a for a in reversed(server.accuracy) if a == a), None)
    if acc is not None:
        post["acc"] = f"{acc:.4f}"
    post["loss"] = f"{row.get('train/loss', float('nan')):.3f}"
    post["C"] = row["agg/k"]
    if "incentive/carried" in row:
        post["carried"] = f"{row['incentive/carried']:.2f}"
    bar.set_postfix(post, refresh=False)
