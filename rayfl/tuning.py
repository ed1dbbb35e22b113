"""Hyperparameter search with Ray Tune over rayfl experiments, from YAML files (tune_configs/).

A search file names a base experiment (a preset or YAML), optional ``set`` overrides, and a
``search`` block mapping config paths to distributions::

    base: wkafl
    set: [iterations=300]
    search:
      aggregation.rules.similarity_select.beta: {loguniform: [1, 30]}
      aggregation.k: {choice: [5, 10]}
      seed: {grid: [0, 1, 2]}
    metric: accuracy_last          # or {accuracy_last: 1.0, dev_accuracy: -10.0}
    mode: max
    num_samples: 8
    scheduler: {name: asha, grace_period: 2, reduction_factor: 2}

Each trial runs the engine (``rayfl.run``) and reports after every evaluation (``tune.report``),
so ASHA can stop bad trials early. Each trial reserves its server and client workers with a
placement group (a head bundle plus one bundle per worker with its CPUs and fractional GPU), so
trials never starve each other and fractional GPUs pack across trials. The data set goes once
through the object store (``tune.with_parameters``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
import yaml
from ray import tune as ray_tune

from rayfl.config import ExperimentConfig, dump_config, load_config, set_path
from rayfl.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")
METRICS = (
    "accuracy",  # the latest evaluation's test accuracy
    "accuracy_last",  # mean accuracy over the last `last_n` evaluations
    "dev_accuracy",  # DevAccuracy D_t (AKAFL-RJ eq. 3-4) of the evaluation series
    "time_to_target",  # virtual time of the first evaluation with accuracy >= target
    # (NOT_REACHED before: finite, so schedulers and loggers can compare it)
    "iterations_to_target",  # iterations (rounds in sync mode: t75) to the target accuracy
    "virtual_time",
    "train_loss",
)
# Besides these: "mean:<column>" and "last:<column>" of any metric column the run writes, e.g.
# mean:incentive/social_welfare or last:incentive/ape (the incentive mechanism's metrics).
COLUMN_METRIC = ("mean:", "last:")
TRIAL_RETRIES = 2  # times a failed trial is restarted from its last checkpoint
NOT_REACHED = 1e12
SEARCH_KEYS = (
    "base",
    "set",
    "search",
    "metric",
    "mode",
    "num_samples",
    "max_concurrent_trials",
    "scheduler",
    "search_alg",
    "seed",
    "storage_path",
    "name",
    "workers_per_trial",
    "last_n",
    "target_accuracy",
    "delta1",
    "delta2",
)


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config field."""

    path: str  # dotted config path, e.g. aggregation.rules.similarity_select.beta
    kind: str  # one of DISTRIBUTIONS
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """A parsed, validated search file."""

    base: str
    overrides: tuple[str, ...]
    params: tuple[Param, ...]
    metric: str | dict[str, float] = "accuracy_last"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: int = 0  # 0 = as many as the cluster fits
    scheduler: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "fifo"})
    search_alg: str = "random"
    seed: int = 0  # seeds the search algorithm's own sampling
    storage_path: str = "~/ray_results"
    name: str = "rayfl-tune"
    workers_per_trial: int = 1
    last_n: int = 5
    target_accuracy: float = 0.9
    delta1: float = 0.9
    delta2: float = 0.9

    def base_config(self) -> ExperimentConfig:
        return load_config(self.base, self.overrides)

    def trial_config(self, values: Mapping[str, Any]) -> ExperimentConfig:
        """The experiment a trial runs: the base with the sampled values set."""
        raw = self.base_config().to_dict()
        for path, value in values.items():
            set_path(raw, path, _plain(value), where=f"search.{path}")
        raw.setdefault("client", {})["num_workers"] = self.workers_per_trial
        raw["tracking"] = []  # a search tracks its trials with Tune's own callbacks instead
        return ExperimentConfig.from_dict(raw)


# --- parsing ----------------------------------------------------------------------------------


def load_search(
    source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()
) -> SearchSpec:
    """Reads and validates a search YAML; ``overrides`` are ``--set`` items for the base config.

    Raises:
        ConfigError: one line naming the field (``search.<path>``, ``metric``, ...) and the fix.
    """
    raw, where = _read_search(source)
    for key in raw:
        if key not in SEARCH_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in {where}: valid keys are {', '.join(SEARCH_KEYS)}"
            )
    if "base" not in raw:
        raise ConfigError(f"{where} has no 'base': name the preset or YAML the search starts from")
    base = _base_path(str(raw["base"]), source)
    sets = raw.get("set") or []
    if isinstance(sets, str) or not isinstance(sets, list):
        raise ConfigError("set must be a list of key.path=value strings")
    overrides_all = (*[str(s) for s in sets], *overrides)
    base_cfg = load_config(base, overrides_all)  # validates the base and the overrides
    search = raw.get("search") or {}
    if not isinstance(search, dict) or not search:
        raise ConfigError(
            "search must map config paths to distributions, e.g. aggregation.k: {choice: [5, 10]}"
        )
    params = tuple(_parse_param(str(path), spec) for path, spec in search.items())
    kwargs = _search_options(raw)
    metric = raw.get("metric", "accuracy_last")
    spec = SearchSpec(
        base=base, overrides=tuple(overrides_all), params=params, metric=metric, **kwargs
    )
    _validate(spec, base_cfg)
    return spec


def _read_search(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The search spec as a dict, and what to call it in messages (the file, or "search spec")."""
    if isinstance(source, Mapping):
        raw = dict(source)
        where = "search spec"
    else:
        where = str(source)
        try:
            raw = yaml.safe_load(Path(source).read_text())
        except FileNotFoundError:
            raise ConfigError(f"search file {source} does not exist: check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"search file {source} is unreadable ({e.__class__.__name__})"
            ) from None
        except yaml.YAMLError:
            raise ConfigError(f"{source} is not valid YAML: fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping with base:, search:, metric: ...")
    return raw, where


def _base_path(base: str, source: str | os.PathLike | Mapping[str, Any]) -> str:
    """``base`` as given, or a relative YAML path resolved beside the search file if it is there."""
    if (
        not isinstance(source, Mapping)
        and base.endswith((".yaml", ".yml"))
        and not Path(base).is_absolute()
    ):
        candidate = Path(source).parent / base
        if candidate.exists():
            return str(candidate)
    return base


def _search_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`SearchSpec` fields the search file sets, besides base, params and metric."""
    kwargs: dict[str, Any] = {}
    for key in (
        "mode",
        "num_samples",
        "max_concurrent_trials",
        "search_alg",
        "seed",
        "name",
        "workers_per_trial",
        "last_n",
        "target_accuracy",
        "delta1",
        "delta2",
    ):
        if key in raw:
            kwargs[key] = raw[key]
    if "storage_path" in raw:
        kwargs["storage_path"] = str(raw["storage_path"])
    if "scheduler" in raw:
        kwargs["scheduler"] = _parse_scheduler(raw["scheduler"])
    return kwargs


def _parse_param(path: str, spec: Any) -> Param:
    where = f"search.{path}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where} must be one distribution, e.g. {{uniform: [0.1, 0.9]}} or {{choice: [5, 10]}}"
        )
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: unknown distribution {kind!r}: use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a list, e.g. {{{kind}: [...]}}")
    if kind in ("uniform", "loguniform", "randint", "quniform"):
        need = 3 if kind == "quniform" else 2
        if len(args) != need or not all(_is_number(a) for a in args):
            shape = "[low, high, q]" if kind == "quniform" else "[low, high]"
            raise ConfigError(f"{where}: {kind} takes {shape} numbers, got {args!r}")
        low, high = args[0], args[1]
        if low > high:
            raise ConfigError(f"{where}: {kind} low={low} is above high={high}: swap them")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: randint takes integers [low, high) , got {args!r}")
        if kind == "quniform" and args[2] <= 0:
            raise ConfigError(f"{where}: quniform step q must be > 0, got {args[2]}")
    return Param(path, kind, tuple(args))


def _parse_scheduler(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or raw.get("name") not in ("asha", "fifo"):
        raise ConfigError(
            "scheduler must be fifo or {name: asha, grace_period: N, reduction_factor: R}"
        )
    allowed = {"name", "grace_period", "reduction_factor"} if raw["name"] == "asha" else {"name"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"scheduler.{key} is not an option of {raw['name']}: use {', '.join(sorted(allowed))}"
            )
    if raw["name"] == "asha":
        gp, rf = raw.get("grace_period", 1), raw.get("reduction_factor", 2)
        if not isinstance(gp, int) or gp < 1:
            raise ConfigError(
                f"scheduler.grace_period={gp!r} must be an integer >= 1 (evaluations)"
            )
        if not _is_number(rf) or rf <= 1:
            raise ConfigError(f"scheduler.reduction_factor={rf!r} must be > 1, e.g. 2")
    return dict(raw)


def _validate(spec: SearchSpec, base: ExperimentConfig) -> None:
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"mode={spec.mode!r} must be max or min")
    names = [spec.metric] if isinstance(spec.metric, str) else list(spec.metric)
    if not isinstance(spec.metric, (str, dict)) or not names:
        raise ConfigError("metric must be a name or a mapping {name: weight}")
    for name in names:
        if name not in METRICS and not (name.startswith(COLUMN_METRIC) and len(name) > 5):
            raise ConfigError(
                f"metric {name!r} is not one of {', '.join(METRICS)}, mean:<column> or "
                "last:<column>: pick one"
            )
    if isinstance(spec.metric, dict) and not all(_is_number(w) for w in spec.metric.values()):
        raise ConfigError(
            "metric weights must be numbers, e.g. {accuracy_last: 1.0, dev_accuracy: -10}"
        )
    for key in ("num_samples", "workers_per_trial", "last_n"):
        value = getattr(spec, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be an integer >= 1")
    if not isinstance(spec.max_concurrent_trials, int) or spec.max_concurrent_trials < 0:
        raise ConfigError("max_concurrent_trials must be an integer >= 0 (0: as many as fit)")
    if spec.search_alg not in ("random", "grid", "optuna"):
        raise ConfigError(f"search_alg={spec.search_alg!r} must be random, grid or optuna")
    if spec.search_alg == "grid":
        for p in spec.params:
            if p.kind not in ("grid", "choice"):
                raise ConfigError(
                    f"search.{p.path}: search_alg grid takes only grid/choice lists, not {p.kind}"
                )
    if spec.search_alg == "optuna" and any(p.kind == "grid" for p in spec.params):
        raise ConfigError("search_alg optuna does not take grid lists: use choice")
    # Every searched path must exist and accept the distribution's values.
    for p in spec.params:
        for value in _corners(p):
            spec.trial_config({p.path: value})


def _corners(p: Param) -> list[Any]:
    if p.kind in ("choice", "grid"):
        return list(p.args)
    if p.kind == "randint":
        return [p.args[0], max(p.args[0], p.args[1] - 1)]
    return [p.args[0], p.args[1]]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return x


# --- the search space and the trainable --------------------------------------------------------


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """Ray Tune's param_space for the spec (flat keys: the config paths)."""
    space: dict[str, Any] = {}
    for p in spec.params:
        a = p.args
        if p.kind == "uniform":
            space[p.path] = ray_tune.uniform(a[0], a[1])
        elif p.kind == "loguniform":
            space[p.path] = ray_tune.loguniform(a[0], a[1])
        elif p.kind == "quniform":
            space[p.path] = ray_tune.quniform(a[0], a[1], a[2])
        elif p.kind == "randint":
            space[p.path] = ray_tune.randint(a[0], a[1])
        elif p.kind == "choice" and spec.search_alg != "grid":
            space[p.path] = ray_tune.choice(list(a))
        else:
            space[p.path] = ray_tune.grid_search(list(a))
    return space


def trial_resources(cfg: ExperimentConfig, workers: int) -> ray_tune.PlacementGroupFactory:
    """Head bundle (the trainable and the server actor) plus one bundle per client worker."""
    head = {"CPU": max(cfg.server.num_cpus, 0.01)}
    if cfg.server.num_gpus:
        head["GPU"] = cfg.server.num_gpus
    worker = {
        k: v for k, v in {"CPU": cfg.client.num_cpus, "GPU": cfg.client.num_gpus}.items() if v
    }
    if not worker:
        raise ConfigError(
            "client.num_cpus and client.num_gpus are both 0: a trial's workers need a resource"
        )
    return ray_tune.PlacementGroupFactory([head] + [dict(worker) for _ in range(workers)])


def ewma_dev_accuracy(acc: Sequence[float], delta1: float = 0.9, delta2: float = 0.9) -> float:
    """DevAccuracy D_t (AKAFL-RJ spec eq. 3-4) at the end of an accuracy series.

    A_t = delta1 A_{t-1} + (1 - delta1) acc_t (A_0 = acc_0); D_t = delta2 D_{t-1} +
    (1 - delta2) |A_t - A_{t-1}| (D_0 = 0).
    """
    if not len(acc):
        return math.nan
    a_prev, d = float(acc[0]), 0.0
    for x in acc[1:]:
        a = delta1 * a_prev + (1 - delta1) * float(x)
        d = delta2 * d + (1 - delta2) * abs(a - a_prev)
        a_prev = a
    return d


def trial_metrics(
    rows: Sequence[Mapping[str, Any]], spec: SearchSpec, started_at: float = math.nan
) -> dict[str, float]:
    """The metrics a trial reports, from its metric rows so far."""
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    acc = [float(r["eval/accuracy"]) for r in evals]
    last = rows[-1]
    hit = [r for r in evals if r["eval/accuracy"] >= spec.target_accuracy]
    reached = [r.get("sys/virtual_time", math.nan) for r in hit]
    out = {
        "accuracy": acc[-1] if acc else math.nan,
        "accuracy_last": float(np.mean(acc[-spec.last_n :])) if acc else math.nan,
        "dev_accuracy": ewma_dev_accuracy(acc, spec.delta1, spec.delta2),
        "time_to_target": float(reached[0]) if reached else NOT_REACHED,
        "iterations_to_target": float(hit[0]["iteration"] + 1) if hit else NOT_REACHED,
        "virtual_time": float(last.get("sys/virtual_time", math.nan)),
        "train_loss": float(last.get("train/loss", math.nan)),
        "iteration": int(last["iteration"]) + 1,
        "trial_started_at": started_at,  # wall clock (time.time()) when the trial began
        "reported_at": time.time(),
    }
    for name in [spec.metric] if isinstance(spec.metric, str) else list(spec.metric):
        if name.startswith(COLUMN_METRIC):
            kind, _, column = name.partition(":")
            values = [float(r[column]) for r in rows if r.get(column) is not None]
            values = [v for v in values if math.isfinite(v)]
            if not values:
                out[name] = math.nan
            else:
                out[name] = float(np.mean(values)) if kind == "mean" else values[-1]
    if isinstance(spec.metric, str):
        out["objective"] = out[spec.metric]
    else:
        out["objective"] = float(sum(w * out[name] for name, w in spec.metric.items()))
    return out


def _trainable(config: dict[str, Any], spec: SearchSpec | None = None, dataset: Any = None) -> None:
    """One trial: ``rayfl.run`` reporting after every evaluation, checkpointing through Tune.

    Each engine checkpoint (``checkpoint_every``) rides on the next report as a Tune
    checkpoint; a restored trial (``Tuner.restore``, or a retry after a failure) resumes the
    run from it instead of starting over.
    """
    from ray.tune import Checkpoint

    from rayfl.api import run

    assert spec is not None
    started_at = time.time()
    cfg = spec.trial_config(config)
    rows: list[dict[str, Any]] = []
    files = _checkpoint_files()
    trial_dir = Path(ray_tune.get_context().get_trial_dir())
    run_dir = trial_dir / "run"
    pending: list[Path] = []  # a copy of the newest engine checkpoint, not yet reported

    def on_checkpoint(path: Path) -> None:
        snapshot = Path(tempfile.mkdtemp(prefix="rayfl-ckpt-"))
        _copy_files(path, snapshot, files)
        for old in pending:
            shutil.rmtree(old, ignore_errors=True)
        pending[:] = [snapshot]

    def on_chunk(chunk: list[dict[str, Any]]) -> None:
        for row in chunk:
            rows.append(row)
            if row.get("eval/accuracy") is not None:
                metrics = trial_metrics(rows, spec, started_at)
                if pending:
                    snapshot = pending.pop()
                    ray_tune.report(metrics, checkpoint=Checkpoint.from_directory(snapshot))
                    shutil.rmtree(snapshot, ignore_errors=True)  # Tune has copied it
                else:
                    ray_tune.report(metrics)

    resume = None
    restored = ray_tune.get_checkpoint()
    if restored is not None:
        resume = _restore_run(restored, run_dir, files, rows)
    elif run_dir.exists():
        shutil.rmtree(run_dir)  # a retried trial without a checkpoint starts over
    run(
        cfg,
        output=None if resume else run_dir,
        resume=resume,
        progress=False,
        dataset=dataset,
        callback=on_chunk,
        on_checkpoint=on_checkpoint,
    )


def _checkpoint_files() -> tuple[str, ...]:
    """The files of a run folder that a checkpoint of the run needs."""
    from rayfl.metrics import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, UPDATES_FILE
    from rayfl.rounds.records import ROUNDS_FILE

    return (CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, UPDATES_FILE, ROUNDS_FILE)  # sync: rounds


def _copy_files(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Copies the files ``names`` that ``src`` holds into ``dst``."""
    from rayfl.partlog import PartLog, write_parquet

    for name in names:
        table = PartLog(src / name)
        if name.endswith(".parquet") and table.exists():  # the file and its parts, as one file
            write_parquet(dst / name, table.table())
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _restore_run(
    restored: Any, run_dir: Path, files: Sequence[str], rows: list[dict[str, Any]]
) -> Path:
    """Puts a Tune checkpoint's run files into a fresh ``run_dir`` and the metric rows logged
    before the checkpoint into ``rows``; returns ``run_dir``, the run to resume."""
    from rayfl.metrics import RunLog
    from rayfl.runtime.checkpoint import read_checkpoint

    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with restored.as_directory() as d:
        _copy_files(Path(d), run_dir, files)
    log = RunLog(run_dir)
    log.load(before_iteration=read_checkpoint(run_dir)["t"])
    rows.extend(log.rows())
    return run_dir


# --- running a search -------------------------------------------------------------------------


@dataclasses.dataclass
class TuneOutcome:
    """What ``rayfl.tune.tune`` returns."""

    path: (
        Path  # the experiment folder (Tune's results, trials.parquet, best_config.yaml, search.png)
    )
    best_config: ExperimentConfig
    best_metrics: dict[str, Any]
    trials: Any  # pandas.DataFrame of all trials
    mode: str = "max"


def tune(
    source: str | os.PathLike | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    address: str | None = None,
    resume: bool = False,
    storage_path: str | None = None,
    verbose: int = 1,
) -> TuneOutcome:
    """Runs (or resumes) a search; writes trials.parquet, best_config.yaml and search.png.

    Starts Ray only if none is running and never shuts down a Ray it did not start.
    """
    from rayfl.runtime.data import share_dataset
    from rayfl.runtime.session import ensure_ray

    spec = load_search(source, overrides)
    if storage_path is not None:
        spec = dataclasses.replace(spec, storage_path=storage_path)
    root = spec.storage_path
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    exp_path = f"{root.rstrip('/')}/{spec.name}"
    started = ensure_ray(address)
    try:
        base = spec.base_config()
        dataset = share_dataset(base)
        trainable = ray_tune.with_parameters(_trainable, spec=spec, dataset=dataset)
        trainable = ray_tune.with_resources(
            trainable, trial_resources(base, spec.workers_per_trial)
        )
        if resume:
            if not ray_tune.Tuner.can_restore(exp_path):
                raise ConfigError(
                    f"no search to resume at {exp_path}: run it without --resume first"
                )
            tuner = ray_tune.Tuner.restore(
                exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = _new_tuner(spec, base, trainable, root, verbose)
        results = tuner.fit()
        return _write_outputs(spec, results, exp_path)
    finally:
        if started:
            ray.shutdown()


def _new_tuner(
    spec: SearchSpec, base: ExperimentConfig, trainable: Any, root: str, verbose: int
) -> ray_tune.Tuner:
    """A fresh search of ``spec`` under ``root``: its scheduler and search algorithm over its
    param space; a failed trial is retried from its checkpoint."""
    scheduler = _scheduler(spec, base)
    search_alg = _search_alg(spec)
    return ray_tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=ray_tune.TuneConfig(
            metric="objective",
            mode=spec.mode,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials or None,
            scheduler=scheduler,
            search_alg=search_alg,
        ),
        run_config=ray_tune.RunConfig(
            name=spec.name,
            storage_path=root,
            verbose=verbose,
            # A trial whose run fails (a lost node) is retried from its checkpoint.
            failure_config=ray_tune.FailureConfig(max_failures=TRIAL_RETRIES),
            callbacks=tracking_callbacks(base.tracking, spec.name),
        ),
    )


def tracking_callbacks(names: Sequence[str], experiment: str) -> list[Any]:
    """Ray Tune's own logger callbacks for the base config's ``tracking``: one MLflow run or W&B
    run per trial, with its config and every reported result. TensorBoard needs none: Tune writes
    event files in each trial's folder already (``tensorboard --logdir <storage_path>/<name>``)."""
    callbacks: list[Any] = []
    if "mlflow" in names:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"), experiment_name=experiment
            )
        )
    if "wandb" in names:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(
            WandbLoggerCallback(
                project=os.environ.get("WANDB_PROJECT", "rayfl"),
                group=experiment,
                mode=os.environ.get("WANDB_MODE", "offline"),
            )
        )
    unknown = [n for n in names if n not in ("tensorboard", "mlflow", "wandb")]
    if unknown:
        raise ConfigError(
            f"tracking={unknown[0]!r}: a search tracks through Ray Tune's callbacks, which know "
            "tensorboard, mlflow and wandb only: track the search with those"
        )
    return callbacks


def _scheduler(spec: SearchSpec, base: ExperimentConfig) -> Any:
    """ASHA over the trial's evaluations (its ``training_iteration``s), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    evals = max(1, math.ceil(base.iterations / base.eval.every))
    if spec.scheduler["name"] == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=evals,
            grace_period=min(spec.scheduler.get("grace_period", 1), evals),
            reduction_factor=spec.scheduler.get("reduction_factor", 2),
        )
    return FIFOScheduler()


def _search_alg(spec: SearchSpec) -> Any:
    """Optuna's sampler, or Tune's random / grid variant generator, seeded by ``spec.seed``."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch

            return OptunaSearch(seed=spec.seed)
        except (ImportError, AssertionError):
            raise ConfigError(
                "search_alg optuna needs Optuna: pip install 'rayfl[optuna]'"
            ) from None
    return BasicVariantGenerator(random_state=spec.seed)


def _write_outputs(spec: SearchSpec, results: Any, exp_path: str) -> TuneOutcome:
    import pandas as pd
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    rows = []
    for r in results:
        row: dict[str, Any] = {"trial_id": (r.metrics or {}).get("trial_id")}
        row.update({f"config/{k}": v for k, v in (r.config or {}).items()})
        for key in (
            "objective",
            *METRICS,
            "iteration",
            "training_iteration",
            "trial_started_at",
            "reported_at",
        ):
            row[key] = (r.metrics or {}).get(key)
        row["error"] = None if r.error is None else str(r.error).splitlines()[0][:200]
        rows.append(row)
    trials = pd.DataFrame(rows)
    best = results.get_best_result(metric="objective", mode=spec.mode, filter_nan_and_inf=True)
    best_cfg = spec.trial_config(best.config)
    best_metrics = {
        k: v for k, v in (best.metrics or {}).items() if isinstance(v, (int, float, str))
    }
    fs, path = (
        pafs.FileSystem.from_uri(exp_path)
        if "://" in exp_path
        else (pafs.LocalFileSystem(), exp_path)
    )
    fs.create_dir(path, recursive=True)
    table = _arrow_table(trials)
    with fs.open_output_stream(f"{path}/trials.parquet") as f:
        pq.write_table(table, f)
    header = (
        f"# best trial of search {spec.name!r}: objective={best_metrics.get('objective')} "
        f"({spec.mode}); run it with `rayfl run best_config.yaml`\n"
    )
    with fs.open_output_stream(f"{path}/best_config.yaml") as f:
        f.write((header + dump_config(best_cfg)).encode())
    with fs.open_output_stream(f"{path}/best_metrics.json") as f:
        f.write((json.dumps(best_metrics, indent=2, default=str) + "\n").encode())
    png = _plot_search(trials, spec)
    if png is not None:
        with fs.open_output_stream(f"{path}/search.png") as f:
            f.write(png)
    local = Path(path) if isinstance(fs, pafs.LocalFileSystem) else Path(exp_path)
    return TuneOutcome(
        path=local, best_config=best_cfg, best_metrics=best_metrics, trials=trials, mode=spec.mode
    )


def _arrow_table(df: Any) -> Any:
    import pyarrow as pa

    cols = {}
    for c in df.columns:
        values = df[c].tolist()
        kinds = {
            type(v)
            for v in values
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        }
        if len(kinds) > 1 or (kinds and not kinds <= {int, float, str, bool}):
            values = [None if v is None else str(v) for v in values]
        cols[c] = values
    return pa.table(cols)


def _plot_search(trials: Any, spec: SearchSpec) -> bytes | None:
    """A PNG of the objective against each searched parameter (one panel each)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    params = [p.path for p in spec.params if f"config/{p.path}" in trials]
    if not params or "objective" not in trials:
        return None
    fig = Figure(figsize=(4.2 * len(params), 3.4), dpi=110)
    FigureCanvasAgg(fig)
    for i, path in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        x = trials[f"config/{path}"]
        y = trials["objective"]
        ok = y.notna() & np.isfinite(y.astype(float))
        if x.dtype == object:
            labels = [str(v) for v in x]
            cats = sorted(set(labels))
            xs = [cats.index(v) for v in labels]
            ax.set_xticks(range(len(cats)), cats)
            ax.scatter(np.asarray(xs)[ok], y[ok])
        else:
            ax.scatter(x[ok], y[ok])
            kind = next(p.kind for p in spec.params if p.path == path)
            if kind == "loguniform":
                ax.set_xscale("log")
        ax.set_xlabel(path.split(".")[-1] if len(path) > 28 else path)
        ax.set_ylabel(f"objective ({spec.mode})")
        ax.grid(alpha=0.3)
    fig.suptitle(f"search {spec.name}: objective per trial")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
