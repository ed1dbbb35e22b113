"""``rayfl.run``: load data, start the server actor, drive it in chunks, write the run folder.

It starts Ray only if none is running (so it works inside a Ray Tune trial or a Ray job) and never
shuts down a Ray it did not start.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from rayfl import __version__, interrupts
from rayfl.clients.worker import SharedData
from rayfl.config import ExperimentConfig, dump_config, load_config
from rayfl.data import Dataset, Partition, load_dataset, partition
from rayfl.errors import RayflError
from rayfl.metrics import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RunLog,
    atomic_write,
    atomic_write_bytes,
    read_metrics,
    summarize,
    write_summary,
)
from rayfl.server.loop import KAsyncServer
from rayfl.storage import Mirror, is_uri

CHUNK = 10  # iterations per server call: how often the driver sees progress


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


def default_run_dir(cfg: ExperimentConfig, root: str | os.PathLike = "runs") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def prepare_run_dir(path: Path, resuming: bool = False) -> Path:
    if not resuming and (path / METRICS_FILE).exists():
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


def ensure_ray(address: str | None = None) -> bool:
    """Connects to or starts Ray if none is running; True if this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    interrupts.reinstall()  # ray.init replaced the CLI's SIGTERM handler with Ray's own
    return True


@dataclasses.dataclass(frozen=True)
class DatasetRefs:
    """A data set already in the object store (e.g. put once for all the trials of a search)."""

    name: str
    data_dir: str | None
    x_train: Any  # ObjectRefs
    y_train: Any
    x_test: Any
    y_test: Any
    labels: np.ndarray  # (n_train,) int64, a local copy for partitioning
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def share_dataset(cfg: ExperimentConfig) -> DatasetRefs:
    """Loads ``cfg``'s data set and puts its arrays in the object store once."""
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    return DatasetRefs(
        name=ds.name,
        data_dir=cfg.data.data_dir,
        x_train=ray.put(ds.x_train),
        y_train=ray.put(ds.y_train),
        x_test=ray.put(ds.x_test),
        y_test=ray.put(ds.y_test),
        labels=np.asarray(ds.y_train),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )


def _partition(cfg: ExperimentConfig, labels: np.ndarray) -> Partition:
    d = cfg.data
    return partition(
        labels,
        d.partition,
        d.num_clients,
        cfg.seed,
        alpha=d.alpha,
        shards_per_client=d.shards_per_client,
        shard_size=d.shard_size,
        classes_max=d.classes_max,
        samples_min=d.samples_min,
        samples_max=d.samples_max,
    )


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Partition]:
    """Loads the data set and partitions it (numpy; no Ray). Raises DataError on bad input."""
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    return ds, _partition(cfg, ds.y_train)


def put_data(ds: Dataset, part: Partition) -> SharedData:
    """Puts the arrays in the object store once; every worker on a node maps the same copy."""
    return SharedData(
        x_train=ray.put(ds.x_train),
        y_train=ray.put(ds.y_train),
        x_test=ray.put(ds.x_test),
        y_test=ray.put(ds.y_test),
        indices=ray.put(part.indices),
        offsets=ray.put(part.offsets),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )


def run_data(
    cfg: ExperimentConfig, dataset: DatasetRefs | None
) -> tuple[Dataset | None, Partition]:
    """The run's data set (None when ``dataset`` already shares it) and its partition.

    Raises DataError on bad data (before any folder or Ray exists), RayflError when the shared
    ``dataset`` is not the one ``cfg`` asks for.
    """
    if dataset is None:
        return load_data(cfg)
    if dataset.name != cfg.data.dataset or dataset.data_dir != cfg.data.data_dir:
        raise RayflError(
            f"the shared data set is {dataset.name!r}, the config asks for "
            f"{cfg.data.dataset!r}: share the config's data set (and do not search over "
            "data.dataset or data.data_dir)"
        )
    return None, _partition(cfg, dataset.labels)


def put_run_data(ds: Dataset | None, part: Partition, dataset: DatasetRefs | None) -> SharedData:
    """:func:`put_data`, or only the partition when ``dataset`` already shares the arrays."""
    if dataset is None:
        assert ds is not None
        return put_data(ds, part)
    return SharedData(
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        indices=ray.put(part.indices),
        offsets=ray.put(part.offsets),
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        mean=dataset.mean,
        std=dataset.std,
    )


def share_data(cfg: ExperimentConfig) -> SharedData:
    """``load_data`` then ``put_data``."""
    return put_data(*load_data(cfg))


def _progress(cfg: ExperimentConfig, enabled: bool | None, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        total=cfg.iterations,
        initial=initial,
        desc=cfg.name,
        unit="it",
        dynamic_ncols=True,
        disable=not enabled,
        leave=True,
    )


def run(
    config: ExperimentConfig | str | os.PathLike | Mapping[str, Any] = "akafl-rj",
    *,
    overrides: Sequence[str] = (),
    output: str | os.PathLike | None = None,
    address: str | None = None,
    progress: bool | None = None,
    dataset: DatasetRefs | None = None,
    callback: Callable[[list[dict[str, Any]]], None] | None = None,
    resume: str | os.PathLike | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> RunResult:
    """Runs one experiment and writes its run folder.

    Args:
        config: an ``ExperimentConfig``, a preset name, a YAML path or a mapping. Ignored with
            ``resume`` (the run folder's config.yaml is used, with ``overrides`` on top).
        overrides: ``key.path=value`` strings applied on top (as ``--set``).
        output: the run folder, or a storage URI (``s3://...``, ``gs://...``, ``file://...``)
            that every node can reach; default ``runs/<name>-<timestamp>``.
        address: a Ray cluster to connect to if Ray is not running yet (as ``ray.init``).
        progress: show a progress bar; default when stderr is a terminal.
        dataset: the data set already in the object store (``share_dataset``); it must be the
            config's data set. Used by Ray Tune so that trials share one copy.
        callback: called with each chunk of metric rows as they arrive (e.g. ``tune.report``);
            if it returns True the run stops early and cleanly (status "stopped").
        resume: a run folder (or storage URI) with a checkpoint: continue that run where its last checkpoint
            left off (virtual clock: the final weights equal an uninterrupted run's).
        on_checkpoint: called with the run folder after each checkpoint is written.

    Returns:
        A ``RunResult`` with the run folder, summary and final weights.

    Example:
        >>> result = rayfl.run("akafl-rj", overrides=["iterations=100"])  # doctest: +SKIP
        >>> result.final_accuracy  # doctest: +SKIP
    """
    restore: dict[str, Any] | None = None
    mirror: Mirror | None = None
    if resume is not None and is_uri(resume):
        mirror = Mirror(str(resume))
        resume = mirror.pull()
    elif is_uri(output):
        mirror = Mirror(str(output))
    if resume is not None:
        run_dir = Path(resume)
        restore = read_checkpoint(run_dir)
        cfg = load_config(str(run_dir / CONFIG_FILE), overrides)
        if restore["t"] >= cfg.iterations:
            raise RayflError(
                f"{run_dir} already ran {restore['t']} of {cfg.iterations} iterations: "
                "raise iterations with --set iterations=N to go on"
            )
    else:
        cfg = (
            config
            if isinstance(config, ExperimentConfig) and not overrides
            else load_config(config, overrides)
        )
    if cfg.mode == "sync":  # synchronous rounds with client selection: rayfl.rounds
        if restore is not None and restore.get("mode", "async") != "sync":
            raise RayflError(f"--resume {resume}: the checkpoint is not a mode: sync run's")
        from rayfl.rounds.driver import run_rounds

        return run_rounds(
            cfg,
            output=output,
            address=address,
            progress=progress,
            dataset=dataset,
            callback=callback,
            restore=restore,
            resume_dir=Path(resume) if resume is not None else None,
            mirror=mirror,
            on_checkpoint=on_checkpoint,
        )
    if restore is not None and restore.get("mode", "async") != "async":
        raise RayflError(f"--resume {resume}: the checkpoint is a mode: sync run's, not async")
    ds, part = run_data(cfg, dataset)  # bad data fails here, before any folder or Ray exists
    run_dir = open_run_dir(cfg, output, mirror, run_dir if restore is not None else None)
    where = mirror.uri if mirror is not None else str(run_dir)  # what the user calls the run
    atomic_write_bytes(run_dir / CONFIG_FILE, dump_config(cfg).encode())
    started_ray = ensure_ray(address)
    log = RunLog(run_dir)
    if restore is not None:
        log.load(before_iteration=restore["t"])
    server = None
    bar = _progress(cfg, progress, initial=0 if restore is None else restore["t"])
    t0 = time.perf_counter()
    status = "running"
    checkpointed = restore is not None
    calls: list[tuple[str, Any]] = []
    try:
        data = put_run_data(ds, part, dataset)
        del ds, part  # the object store holds the arrays now
        server_cls = ray.remote(KAsyncServer).options(
            num_cpus=cfg.server.num_cpus, num_gpus=cfg.server.num_gpus, max_concurrency=1
        )
        server = server_cls.remote(cfg, data)
        info = _get(server.start.remote(restore))
        del restore  # the server holds it now
        # Two calls in flight so the server never idles while the driver writes files. The
        # actor runs calls in order, so a checkpoint call sees exactly the chunks before it.
        requested = info["iteration"]
        every = cfg.checkpoint_every

        def request() -> None:
            nonlocal requested
            n = min(CHUNK, cfg.iterations - requested)
            if every:
                n = min(n, every - requested % every)
            if n > 0:
                calls.append(("chunk", server.run.remote(n)))
                requested += n
                if every and requested % every == 0 and requested < cfg.iterations:
                    calls.append(("checkpoint", server.checkpoint.remote()))

        request()
        request()
        stop = False
        while calls:
            kind, ref = calls.pop(0)
            if kind == "checkpoint":
                log.flush()  # metrics first: a checkpoint never runs ahead of them
                write_checkpoint(run_dir, _get(ref))
                checkpointed = True
                if mirror is not None:
                    mirror.push()
                if on_checkpoint is not None:
                    on_checkpoint(run_dir)
                continue
            chunk = _get(ref)
            if not stop:
                request()
            log.extend(chunk["metrics"], chunk["updates"])
            if callback is not None and callback(chunk["metrics"]) is True:
                stop = True  # the callback asked to end early: drain what is in flight
            bar.update(len(chunk["metrics"]))
            _postfix(bar, log)
            if log.flush(force=False) and mirror is not None:
                mirror.push(force=False)
        if every:  # a finished run can be extended: rayfl run --resume DIR --set iterations=N
            write_checkpoint(run_dir, _get(server.checkpoint.remote()))
            checkpointed = True
        info = ray.get(server.describe.remote())
        weights = ray.get(server.weights.remote())
        state = ray.get(server.state_dict.remote())
        torch.save(state, run_dir / MODEL_FILE)
        status = "stopped" if stop else "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        if server is not None and cfg.checkpoint_every:
            checkpointed = _checkpoint_on_interrupt(server, calls, log, run_dir) or checkpointed
            if checkpointed and mirror is not None:
                mirror.push()
        raise
    except RayflError:
        status = "failed"
        raise
    # OwnerDiedError: the server died while the driver read the versions of a checkpoint.
    except (ray.exceptions.RayActorError, ray.exceptions.OwnerDiedError) as e:
        status = "failed"
        hint = f"; resume with: rayfl run --resume {where}" if checkpointed else ""
        raise RayflError(
            f"the server actor died ({e.__class__.__name__}); results so far are in {where}{hint}"
        ) from None
    finally:
        bar.close()
        log.flush()
        summary = {
            "name": cfg.name,
            "status": status,
            "rayfl_version": __version__,
            "seed": cfg.seed,
            **summarize(log.rows()),
            "driver_wall_s": time.perf_counter() - t0,
        }
        if status in ("finished", "stopped"):
            summary["num_workers"] = len(info["workers"])
            summary["num_parameters"] = info["num_parameters"]
            summary["updates_aggregated"] = info["updates_aggregated"]
            summary["worker_nodes"] = sorted(
                {w["node_id"] for w in info["workers"] if w.get("node_id")}
            )
            summary["worker_failures"] = info["worker_failures"]
            summary["rejected_updates"] = info["rejected_updates"]
            summary["maintained"] = info["maintained"]
            summary["remodels"] = info["remodels"]
            summary["wasted_jobs"] = info["wasted_jobs"]
            summary["jobs_lost"] = info["jobs_lost"]
        elif checkpointed:
            summary["resume"] = f"rayfl run --resume {where}"
        if mirror is not None:
            summary["storage"] = mirror.uri
        write_summary(run_dir, summary)
        if mirror is not None:
            mirror.push()
        if server is not None:
            ray.kill(server)  # its worker actors are owned by it and go with it
        if started_ray:
            ray.shutdown()
    return RunResult(run_dir=run_dir, config=cfg, summary=summary, weights=weights)


def _checkpoint_on_interrupt(
    server: Any, calls: list[tuple[str, Any]], log: RunLog, run_dir: Path
) -> bool:
    """After Ctrl-C: log the chunks still in flight, then write a checkpoint that matches the
    metrics exactly. Gives up quietly (keeping the last periodic checkpoint) after 30 s or on a
    second Ctrl-C. True if it wrote one."""
    try:
        deadline = time.monotonic() + 30.0
        for kind, ref in calls:
            value = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            if kind == "chunk":
                log.extend(value["metrics"], value["updates"])
        state = ray.get(server.checkpoint.remote(), timeout=max(0.1, deadline - time.monotonic()))
        if state["t"] != log.iterations_done:
            return False  # a chunk was lost mid-way: the checkpoint would run ahead of the metrics
        log.flush()
        write_checkpoint(run_dir, state)
        return True
    except (KeyboardInterrupt, Exception):
        return False


def write_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Writes the server's state to RUN_DIR/checkpoint.pkl atomically (write, then rename).

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


def _get(ref: Any) -> Any:
    """``ray.get`` that re-raises a user error from the server actor as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RayflError):
            raise e.cause from None
        raise


def _postfix(bar: Any, log: RunLog) -> None:
    last = log.last
    if last is None:
        return
    ev = log.last_eval()
    post = {}
    if ev is not None:
        post["acc"] = f"{ev['eval/accuracy']:.4f}"
    post["loss"] = f"{last.get('train/loss', float('nan')):.3f}"
    post["K"] = last.get("agg/k")
    post["vt"] = f"{last.get('sys/virtual_time', 0.0):.1f}"
    bar.set_postfix(post, refresh=False)
