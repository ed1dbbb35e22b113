"""``run_rounds``: a synchronous run (``mode: sync``) from config to run folder.

Called by :func:`rayfl.run` for ``mode: sync``. Same run folder as the K-async engine
(config.yaml, metrics.parquet with ``eval/accuracy``, updates.parquet, model.pt, summary.json, so
``rayfl plot`` works), plus ``rounds.parquet``: one row per round with the selection, the bids,
caps, payments, bargaining steps, leftover and carried budget, utilities, social welfare, Nash
product and accuracy (columns: :data:`rayfl.rounds.loop.ROUND_COLUMNS`).

The server side runs in this process (the driver); the clients train on the worker pool
(``make_pool``: one worker per ``client.num_cpus``, or ``client.num_workers``).

Checkpoints as the K-async engine's (``checkpoint.pkl`` every ``checkpoint_every`` rounds, at the
end, and on Ctrl-C; ``rayfl run --resume RUN_DIR``): the server's state at a round boundary
(:meth:`RoundServer.checkpoint`). A resumed run ends on the same weights as an unbroken one.
Storage URIs (``--output s3://...``) work as for the K-async engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
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
from rayfl.storage import Mirror

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
    callback: Callable[[list[dict[str, Any]]], Any] | None = None,
    restore: dict[str, Any] | None = None,
    resume_dir: Path | None = None,
    mirror: Mirror | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> _async.RunResult:
    """Runs ``cfg.iterations`` synchronous rounds and writes the run folder (see module doc).

    Called by :func:`rayfl.run` (arguments as there; ``dataset``: a ``DatasetRefs`` already in
    the object store), which reads ``restore`` from ``resume_dir`` and makes ``mirror`` for a
    storage URI.
    """
    if cfg.mode != "sync":
        raise RayflError(f"run_rounds needs mode: sync, got mode: {cfg.mode}")
    # --- data first: bad data fails before any folder or Ray exists ---
    ds, part = _async.run_data(cfg, dataset)
    sizes = part.sizes()
    run_dir = _async.open_run_dir(cfg, output, mirror, resume_dir)
    where = mirror.uri if mirror is not None else str(run_dir)  # what the user calls the run
    atomic_write_bytes(run_dir / CONFIG_FILE, dump_config(cfg).encode())
    started_ray = _async.ensure_ray(address)
    log = RunLog(run_dir)
    records: list[dict[str, Any]] = []
    if restore is not None:
        log.load(before_iteration=restore["t"])
        records = _load_records(run_dir, before_round=restore["t"])
    workers: list[Any] = []
    bar = _async._progress(cfg, progress, initial=0 if restore is None else restore["t"])
    bar.unit = "round"
    t0 = time.perf_counter()
    status = "running"
    server: RoundServer | None = None
    last: dict[str, Any] | None = None  # the state after the last complete round
    checkpointed = restore is not None
    every = cfg.checkpoint_every

    def checkpoint(state: dict[str, Any]) -> None:
        nonlocal checkpointed
        _flush(run_dir, log, records)  # metrics first: a checkpoint never runs ahead of them
        _async.write_checkpoint(run_dir, state)
        checkpointed = True
        if mirror is not None:
            mirror.push()
        if on_checkpoint is not None:
            on_checkpoint(run_dir)

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
        if restore is not None:
            server.restore(restore)
            del restore
        last_flush = time.perf_counter()
        stop = False
        # --- the rounds ---
        while server.t < cfg.iterations and not stop:
            row, record, updates = server.round()
            log.extend([row], updates)
            records.append(record)
            last = server.checkpoint() if every else None
            stop = callback is not None and callback([row]) is True
            bar.update(1)
            _postfix(bar, row, server)
            if every and server.t % every == 0 and server.t < cfg.iterations:
                checkpoint(last)  # type: ignore[arg-type]
                last_flush = time.perf_counter()
            elif time.perf_counter() - last_flush > 5.0 or "eval/accuracy" in row:
                _flush(run_dir, log, records)
                last_flush = time.perf_counter()
                if mirror is not None:
                    mirror.push(force=False)
        if every:  # a finished run can be extended: rayfl run --resume DIR --set iterations=N
            checkpoint(server.checkpoint())
        model = server.model
        from rayfl.models import set_flat

        set_flat(model, server.w)
        torch.save(model.state_dict(), run_dir / MODEL_FILE)
        status = "stopped" if stop else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        if last is not None:
            # The state after the last complete round, with exactly its metrics (a round cut
            # short leaves no row and no record).
            _trim(log, records, last["t"])
            checkpoint(last)
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
            **summarize(log.rows()),
            **_round_summary(records),
            "driver_wall_s": time.perf_counter() - t0,
        }
        if status in ("finished", "stopped"):
            summary["num_workers"] = len(workers)
            summary["worker_nodes"] = sorted({w["node_id"] for w in info})
            summary["num_parameters"] = int(server.w.size) if server is not None else None
        elif checkpointed:
            summary["resume"] = f"rayfl run --resume {where}"
        if server is not None:
            summary["worker_failures"] = server.pool.failures
        if mirror is not None:
            summary["storage"] = mirror.uri
        write_summary(run_dir, summary)
        if mirror is not None:
            mirror.push()
        for w in workers:
            ray.kill(w)
        if started_ray:
            ray.shutdown()
    assert server is not None
    return _async.RunResult(run_dir=run_dir, config=cfg, summary=summary, weights=server.w)


def _trim(log: RunLog, records: list[dict[str, Any]], t: int) -> None:
    """Keeps only the rows and records of rounds before t."""
    log.trim(t)
    records[:] = [r for r in records if r["round"] < t]


def _load_records(run_dir: Path, before_round: int) -> list[dict[str, Any]]:
    """rounds.parquet's records of the rounds before ``before_round`` (a resumed run)."""
    path = run_dir / ROUNDS_FILE
    if not path.is_file():
        return []
    return [r for r in pq.read_table(path).to_pylist() if r["round"] < before_round]


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
