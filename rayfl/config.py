"""Experiment configuration: YAML -> frozen dataclasses, validated with one-line actionable errors.

The YAML nesting mirrors the dataclasses below (``data.num_clients``, ``aggregation.rules``, ...).
A config comes from a shipped preset (``rayfl presets``) or a YAML file, optionally ``extends:``
another preset or file, and any field can be overridden with ``--set key.path=value`` (the value is
parsed as YAML and type-checked like the file). This module imports no Ray and no torch.

Example:
    >>> cfg = load_config("wkafl", ["iterations=200", "aggregation.k=5"])
    >>> cfg.aggregation.k
    5
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from rayfl.errors import ConfigError

MODEL_NAMES = ("paper_cnn", "mlp")


def _default_rules() -> dict[str, Any]:
    from rayfl.aggregation.recipes import wkafl

    return wkafl()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how it is split over the clients."""

    dataset: str = "mnist"
    """mnist (bundled, offline) | emnist-mnist | emnist-digits | emnist-balanced | fashion-mnist |
    cifar10 | hf:<Hugging Face name or saved folder> (rayfl/data/hub.py) | an import path
    'my_pkg.data:load' to a loader load(**dataset_params) -> Dataset."""
    dataset_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a user data set loader."""
    data_dir: str | None = None
    """Folder for torchvision data sets; null uses the bundled MNIST."""
    download: bool = False
    """Download the data set into data_dir if it is not there."""
    normalize: Literal["standard", "unit"] = "standard"
    """How the default client task scales image pixels: standard ((x / 255 - mean) / std per
    channel, the data set's constants) | unit (x / 255). The AKAFL-RJ spec does not fix it; the
    WKAFL code and many FL papers feed MNIST as x / 255 (docs/reproduction.md)."""
    partition: str = "paper"
    """iid | dirichlet | shards | paper (AKAFL-RJ spec section 7) | flwr:<Flower Datasets
    partitioner> (rayfl/data/flower.py) | an import path 'my_pkg.parts:split' to
    split(labels, num_clients, rng, **partition_params) -> Partition."""
    partition_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a user partitioner."""
    num_clients: int = 100
    """N, the number of (virtual) clients."""
    alpha: float = 0.5
    """dirichlet: concentration; smaller is more non-IID."""
    shards_per_client: int = 2
    """shards: shards per client (McMahan et al. 2017)."""
    shard_size: int | None = None
    """shards: samples per shard; null = len(train) // (num_clients * shards_per_client)."""
    classes_max: int = 2
    """paper: each client holds between 1 and classes_max classes."""
    samples_min: int = 20
    """paper: fewest samples per client."""
    samples_max: int = 200
    """paper: most samples per client."""

    def __post_init__(self) -> None:
        from rayfl.data import DATASETS, PARTITIONERS
        from rayfl.registry import check_params, resolve

        # hf:<name> and flwr:<Partitioner> are checked when the data is loaded and split
        if not self.dataset.startswith("hf:"):
            loader = resolve("data.dataset", self.dataset, dict.fromkeys(DATASETS), "data set")
            if loader is not None:  # a user's loader: its parameters are checked here, once
                check_params("data.dataset_params", loader, self.dataset_params)
        if not self.partition.startswith("flwr:"):
            split = resolve("data.partition", self.partition, PARTITIONERS, "partitioner")
            if self.partition not in PARTITIONERS:
                check_params("data.partition_params", split, self.partition_params, engine_args=3)
        _positive("data.num_clients", self.num_clients)
        _positive("data.alpha", self.alpha)
        _positive("data.shards_per_client", self.shards_per_client)
        if self.shard_size is not None:
            _positive("data.shard_size", self.shard_size)
        _positive("data.classes_max", self.classes_max)
        _positive("data.samples_min", self.samples_min)
        if self.samples_max < self.samples_min:
            raise ConfigError(
                f"data.samples_max={self.samples_max} is below data.samples_min="
                f"{self.samples_min}: raise samples_max or lower samples_min"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network every client trains."""

    name: str = "paper_cnn"
    """paper_cnn | mlp | an import path 'my_pkg.models:make_net' to a factory
    factory(input_shape, num_classes, **kwargs) -> torch.nn.Module."""
    hidden: tuple[int, ...] = (200,)
    """mlp: hidden layer widths."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra keyword arguments for a user factory."""

    def __post_init__(self) -> None:
        from rayfl.registry import is_import_path

        if self.name not in MODEL_NAMES and not is_import_path(self.name):
            raise ConfigError(
                f"model.name={self.name!r} is not a known model: use one of "
                f"{', '.join(MODEL_NAMES)} or an import path 'package.module:factory'"
            )
        for h in self.hidden:
            _positive("model.hidden", h)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Local training and the Ray worker actors that compute client updates."""

    batch_size: int = 16
    """B, mini-batch size of one local step."""
    local_steps: int = 1
    """E; 1 sends the mini-batch gradient, E > 1 the pseudo-gradient of E local SGD steps."""
    local_lr: float = 0.05
    """Learning rate of the local SGD steps when local_steps > 1."""
    num_workers: int | None = None
    """Worker actors in the pool; null sizes it from the cluster's resources."""
    num_cpus: float = 1.0
    """CPUs reserved per worker actor (fractions allowed)."""
    num_gpus: float = 0.0
    """GPUs reserved per worker actor (fractions such as 0.25 pack 4 workers on a GPU)."""
    max_restarts: int = -1
    """Times Ray restarts a worker actor that died (killed process, OOM, lost node); its jobs
    are re-dispatched to the live workers meanwhile. -1 (default) = without limit: a long run on
    preemptible nodes loses workers many times. A worker that crashes on every call still ends
    the run: a batch that fails 10 times on different workers is an error."""
    faults: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fault injection for robustness experiments: {client_ids: [...], kind: nan | inf | huge |
    shape | dtype}: those clients send broken updates (the server must reject them)."""
    task: str = "classification"
    """The client's learning problem (rayfl.clients.task.ClientTask): its batch transform, loss,
    gradient, local optimizer and per-client state. classification (uint8 images, cross-entropy,
    plain SGD, no state) or an import path 'package.module:factory' to a user's task."""
    task_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of client.task's factory, checked against its signature."""
    batched: str | bool = "auto"
    """Compute a worker's batch of K-async jobs in one torch.func call (vmap over the jobs;
    rayfl.clients.batched): auto (on for a worker that computes on CUDA, off on CPU) | on | off
    (true / false too). The same updates as one job at a time within float tolerance, not bit
    for bit, so auto keeps CPU results' bytes. For the default task or one declaring batchable
    = True, on a model without buffers; auto otherwise computes one job at a time, on is an
    error. The virtual clock's calls only (the real clock and rounds send one job per call)."""
    max_batch_jobs: int = 16
    """client.batched: the most jobs vmapped at once (a call with more is split); lower it if a
    GPU worker runs out of memory."""

    def __post_init__(self) -> None:
        # YAML reads on / off as booleans: keep the one written form
        if isinstance(self.batched, bool):
            object.__setattr__(self, "batched", "on" if self.batched else "off")
        _one_of("client.batched", self.batched, BATCHED_MODES)
        _positive("client.max_batch_jobs", self.max_batch_jobs)
        # torch-free: the tasks are built in the workers
        from rayfl.clients.shipped import TASKS, check_task_params
        from rayfl.registry import check_params, resolve

        factory = resolve("client.task", self.task, TASKS, "client task")
        check_params("client.task_params", factory, self.task_params)
        check_task_params(self.task, self.task_params)
        _positive("client.batch_size", self.batch_size)
        _positive("client.local_steps", self.local_steps)
        _positive("client.local_lr", self.local_lr)
        if self.num_workers is not None:
            _positive("client.num_workers", self.num_workers)
        if self.num_cpus < 0:
            raise ConfigError(f"client.num_cpus={self.num_cpus} is negative: use 0 or more")
        if self.num_gpus < 0 or (self.num_gpus > 1 and self.num_gpus != int(self.num_gpus)):
            raise ConfigError(
                f"client.num_gpus={self.num_gpus} is invalid: use 0, a fraction like 0.25, "
                "or a whole number of GPUs"
            )
        if self.max_restarts < -1:
            raise ConfigError(
                f"client.max_restarts={self.max_restarts} is invalid: use -1 (no limit) or >= 0"
            )
        _check_faults(self.faults)
        if self.num_cpus == 0 and self.num_gpus == 0 and self.num_workers is None:
            raise ConfigError(
                "client.num_cpus and client.num_gpus are both 0: reserve some resource per "
                "worker or set client.num_workers"
            )


FAULT_KINDS = ("nan", "inf", "huge", "shape", "dtype")
BATCHED_MODES = ("auto", "on", "off")


def _check_faults(faults: Mapping[str, Any]) -> None:
    if not faults:
        return
    unknown = set(faults) - {"client_ids", "kind"}
    if unknown:
        raise ConfigError(
            f"client.faults.{sorted(unknown)[0]} is not a field: use client_ids and kind"
        )
    ids = faults.get("client_ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ConfigError("client.faults.client_ids must be a list of client ids, e.g. [3, 7]")
    _one_of("client.faults.kind", faults.get("kind"), FAULT_KINDS)


@dataclasses.dataclass(frozen=True)
class ClockConfig:
    """Which updates arrive first: a seeded virtual clock or the real cluster (spec section 2)."""

    kind: Literal["virtual", "real"] = "virtual"
    """virtual (seeded, reproducible on any cluster) | real (ray.wait on the in-flight jobs)."""
    speed_low: float = 0.2
    """Per-client speed a_i ~ U(speed_low, speed_high), virtual time units per sample."""
    speed_high: float = 0.8
    """Upper end of the per-client speed range."""
    bandwidth: float | None = None
    """Model bytes per time unit for the communication term; null = no communication time."""
    straggler_fraction: float = 0.0
    """Fraction of clients slowed by straggler_slowdown."""
    straggler_slowdown: float = 10.0
    """How many times slower a straggler is."""
    time_scale: float = 0.0
    """real clock: seconds of injected delay per virtual time unit (0 = no injected delay)."""
    lookahead: int | None = None
    """virtual clock: jobs computed ahead of aggregation; null = max(2K, 4 x workers)."""
    concurrency: int | None = None
    """Most clients training at once, C (FedBuff's concurrency, cross-device FL): when an update
    is taken the next client is drawn uniformly (seeded) from the idle ones. null = every client
    always trains (the AKAFL-RJ model). K-async engine, both clocks; aggregation.k <= C <= N."""

    def __post_init__(self) -> None:
        _positive("clock.speed_low", self.speed_low)
        if self.speed_high < self.speed_low:
            raise ConfigError(
                f"clock.speed_high={self.speed_high} is below clock.speed_low={self.speed_low}: "
                "swap them"
            )
        if self.bandwidth is not None:
            _positive("clock.bandwidth", self.bandwidth)
        if not 0.0 <= self.straggler_fraction <= 1.0:
            raise ConfigError(
                f"clock.straggler_fraction={self.straggler_fraction} is outside [0, 1]: "
                "use a fraction such as 0.1"
            )
        if self.straggler_slowdown < 1.0:
            raise ConfigError(
                f"clock.straggler_slowdown={self.straggler_slowdown} is below 1: stragglers "
                "are slower, use a factor such as 10"
            )
        if self.time_scale < 0:
            raise ConfigError(f"clock.time_scale={self.time_scale} is negative: use 0 or more")
        if self.lookahead is not None:
            _positive("clock.lookahead", self.lookahead)
        if self.concurrency is not None:
            _positive("clock.concurrency", self.concurrency)


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    """How the server combines the K updates of an iteration (spec section 3)."""

    k: int = 10
    """K (K_0 with adaptive K): updates aggregated per iteration."""
    lr: float = 0.05
    """eta, the server's base learning rate."""
    rules: Any = dataclasses.field(default_factory=_default_rules)
    """The rule chain, in order: a list of rule names or {name: {param: value}}; a name is one of
    rayfl.aggregation.RULES or an import path 'pkg.module:factory' (docs/extending.md)."""
    optimizer: Any = "sgd"
    """The server optimizer that makes w_{t+1} from w_t and the chain's direction and lr: a name
    (sgd) or {name: {param: value}}, or an import path 'pkg.module:factory'."""
    control: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Control rules {adaptive_k: {...}, remodel: {...}, judgement: {...}}; empty = fixed K."""
    max_update_norm: float | None = 1.0e6
    """Updates with a larger L2 norm (or NaN/inf, or the wrong shape/dtype) are rejected before
    aggregation and counted (agg/rejected); null = no norm check."""
    staleness: Literal["true", "nominal"] = "true"
    """true: a client computes on the version it received; nominal: on the newest version
    (the public WKAFL code), staleness then only enters the weights and the lr (spec section 7)."""
    backend: Literal["auto", "numpy", "torch"] = "auto"
    """Where the rule chain and the server optimizer compute: numpy on the host, torch on the
    server's device (its GPU with server.num_gpus > 0), or auto: torch when the server has a GPU
    and every rule accepts it, else numpy (rayfl.aggregation.backend)."""

    def __post_init__(self) -> None:
        _positive("aggregation.k", self.k)
        _positive("aggregation.lr", self.lr)
        if self.max_update_norm is not None:
            _positive("aggregation.max_update_norm", self.max_update_norm)
        from rayfl.aggregation import build_optimizer, build_rule_list, normalize_rules
        from rayfl.aggregation.backend import choose as choose_backend
        from rayfl.aggregation.control import build_controls

        object.__setattr__(self, "rules", normalize_rules(self.rules))  # the one written form
        rules = build_rule_list(self.rules)  # ConfigError naming aggregation.rules.<rule>.<param>
        optimizer = ("aggregation.optimizer", build_optimizer(self.optimizer))
        build_controls(self.control)
        choose_backend(self.backend, rules, optimizer, has_gpu=False)  # a chain it cannot run


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Server-side evaluation on the test set."""

    every: int = 50
    """Evaluate every this many iterations (and after the last one)."""
    max_samples: int | None = None
    """Evaluate on a fixed seeded subset of this size; null = the whole test set."""
    batch_size: int = 1000
    """Evaluation batch size."""
    validation_samples: int = 1000
    """Size of judgement's fixed seeded validation subset of the test set."""

    def __post_init__(self) -> None:
        _positive("eval.every", self.every)
        _positive("eval.validation_samples", self.validation_samples)
        _positive("eval.batch_size", self.batch_size)
        if self.max_samples is not None:
            _positive("eval.max_samples", self.max_samples)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The server actor's resources."""

    num_cpus: float = 0.0
    """CPUs reserved for the server actor (0: it shares the node with the workers)."""
    num_gpus: float = 0.0
    """GPUs reserved for the server actor (used for evaluation)."""

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("server.num_cpus and server.num_gpus must be 0 or more")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Who trains in a synchronous round (``mode: sync``; incentive spec sections 1, 4 and 9)."""

    kind: str = "random"
    """random (M clients uniformly) | pow-d (Cho et al. 2022) | incentive (bids and bargaining) |
    an import path 'my_pkg.module:factory' to a user's selector (docs/extending.md)."""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of a user selector's factory (``kind: my_pkg.module:factory``)."""
    k_fraction: float = 0.1
    """K in (0, 1]: M(t) = max(1, floor(K * n(t))) clients per round; K * n < 1 selects 1."""
    d: int = 16
    """pow-d: candidates drawn per round (by data size), M <= d <= data.num_clients."""
    epochs: int = 1
    """E, local epochs per round (SGD with client.batch_size and client.local_lr)."""
    loss_batches: int = 2
    """pow-d and incentive: F_i(w(t)) is the mean loss on this many local mini-batches."""

    def __post_init__(self) -> None:
        from rayfl.registry import check_params, resolve
        from rayfl.selection.shipped import SELECTORS

        factory = resolve("selection.kind", self.kind, SELECTORS, "selector")
        check_params("selection.params", factory, self.params)
        if not 0.0 < self.k_fraction <= 1.0:
            raise ConfigError(
                f"selection.k_fraction={self.k_fraction} is outside (0, 1]: use a fraction of "
                "the clients, e.g. 0.1"
            )
        _positive("selection.d", self.d)
        _positive("selection.epochs", self.epochs)
        _positive("selection.loss_batches", self.loss_batches)


@dataclasses.dataclass(frozen=True)
class IncentiveConfig:
    """The incentive mechanism's constants (incentive spec sections 2, 3, 5 and 8)."""

    budget: float = 10.0
    """R_S, the reward budget added each round (> 0); the unspent part carries over."""
    beta_s: float = 0.002
    """beta_S > 0, the server's concession per offer."""
    delta_s: float = 0.95
    """delta_S in [0, 1), the server's discount factor per bargaining step (announced)."""
    max_steps: int = 10_000
    """Bargaining steps 0..max_steps; no agreement by then breaks that bargaining off."""
    beta_i_low: float = 0.0019
    """Clients' concession rates beta_i ~ U(beta_i_low, beta_i_high), > 0."""
    beta_i_high: float = 0.0021
    """Upper end of beta_i."""
    delta_i_low: float = 0.94
    """Clients' discount factors delta_i ~ U(delta_i_low, delta_i_high), inside (0, 1)."""
    delta_i_high: float = 0.96
    """Upper end of delta_i."""
    gamma_mean: float = 1.0
    """Loss sensitivity gamma_i ~ N(mean, std) truncated to > 0."""
    gamma_std: float = 0.3
    """Standard deviation of gamma_i."""
    mu_mean: float = 1.0
    """Training-time sensitivity mu_i ~ N(mean, std) truncated to > 0."""
    mu_std: float = 0.3
    """Standard deviation of mu_i."""
    c_comp: float = 0.001
    """Client computation cost per sample and epoch (cost phi_i)."""
    c_comm: float = 0.1
    """Client communication cost per round."""
    c_s: float = 0.05
    """Server communication cost per selected client (section 8, reporting only)."""
    gain_scale: float = 100.0
    """lambda: server gain per unit of accuracy gained (section 8, reporting only)."""
    bargaining: bool = True
    """Section 5 on (default): each selected bidder bargains its price by alternating offers.
    false (ablation): it is paid its bid R_{i,S} as is, with no offers exchanged: the bid is the
    least it accepts (its utility is then at its disagreement point), so paying it is the
    server's best price, and the whole surplus cap - bid stays in the pool."""
    additional_selection: bool = True
    """Section 6 on (default): slots left open after bargaining are offered again, under the
    pooled leftover, to the clients not yet selected. false (ablation): one pass only; a round
    may then train fewer than M clients (bargains that broke down)."""
    carry_over: bool = True
    """On (default): the round's unspent budget is carried over, R(t + 1) = R_S + r(t). false
    (ablation): it is dropped, r(t) = 0, and every round's budget is R_S."""

    def __post_init__(self) -> None:
        from rayfl.selection import BargainParams, BidParams

        if not self.budget > 0:
            raise ConfigError(
                f"incentive.budget={self.budget} must be > 0: use a per-round reward, e.g. 10.0"
            )
        BargainParams(self.beta_s, self.delta_s, self.max_steps)  # names incentive.beta_s, ...
        self.population()  # names incentive.beta_i_low, incentive.delta_i_high, ...
        BidParams(1, self.c_comp, self.c_comm)
        if self.c_s < 0:
            raise ConfigError(f"incentive.c_s={self.c_s} is negative: use a cost >= 0, e.g. 0.05")

    def mechanism(self) -> Any:
        """Which parts of the mechanism run (a ``MechanismParts``; the ablation's switches)."""
        from rayfl.selection.selectors import MechanismParts

        return MechanismParts(self.bargaining, self.additional_selection, self.carry_over)

    def population(self) -> Any:
        """The clients' private-parameter distributions (a ``PopulationParams``)."""
        from rayfl.selection import PopulationParams

        return PopulationParams(**{f: getattr(self, f) for f in _POPULATION_FIELDS})


_POPULATION_FIELDS = (
    "gamma_mean",
    "gamma_std",
    "mu_mean",
    "mu_std",
    "delta_i_low",
    "delta_i_high",
    "beta_i_low",
    "beta_i_high",
)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: everything needed to reproduce a run from its seed."""

    name: str = "experiment"
    """A short name, used for the run folder."""
    seed: int = 0
    """The run's seed; every random draw derives from it."""
    iterations: int = 1000
    """T, the number of server iterations (aggregations)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint (checkpoint.pkl) every this many iterations; 0 = never."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    clock: ClockConfig = dataclasses.field(default_factory=ClockConfig)
    aggregation: AggregationConfig = dataclasses.field(default_factory=AggregationConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    mode: Literal["async", "sync"] = "async"
    """async: the K-async engine; sync: synchronous FedAvg rounds (rayfl.rounds), iterations =
    rounds, clients picked by ``selection``."""
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    incentive: IncentiveConfig = dataclasses.field(default_factory=IncentiveConfig)
    tracking: tuple[str, ...] = ()
    """Experiment trackers that mirror the run as it goes: any of tensorboard, mlflow, wandb (or
    an import path to a tracker factory); e.g. [tensorboard, mlflow]. See rayfl/tracking."""

    def __post_init__(self) -> None:
        if not re.match(r"^[\w.-]+$", self.name):
            raise ConfigError(
                f"name={self.name!r} may only hold letters, digits, '_', '.' and '-': rename it"
            )
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} is negative: use a seed >= 0")
        _positive("iterations", self.iterations)
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every={self.checkpoint_every} is negative: use 0 (never) or more"
            )
        if self.aggregation.staleness == "nominal" and self.clock.kind != "virtual":
            raise ConfigError(
                "aggregation.staleness=nominal needs clock.kind=virtual: use staleness true"
            )
        from rayfl.registry import resolve
        from rayfl.tracking import TRACKERS

        for i, tracker in enumerate(self.tracking):
            resolve(f"tracking[{i}]", tracker, TRACKERS, "tracker")
        if len(set(self.tracking)) < len(self.tracking):
            raise ConfigError(
                f"tracking={list(self.tracking)} names a tracker twice: list each once"
            )
        _check_privacy(self)
        _check_scaffold(self)
        if self.mode == "sync":
            _check_sync(self)
        elif self.aggregation.k > self.data.num_clients:
            raise ConfigError(
                f"aggregation.k={self.aggregation.k} exceeds data.num_clients="
                f"{self.data.num_clients}: lower aggregation.k or add clients"
            )
        else:
            _check_concurrency(self)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe dict (tuples become lists) that ``from_dict`` reads back."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentConfig:
        """Builds and validates a config from a nested mapping (as read from YAML)."""
        return _build(cls, _sync_defaults(raw), "")


def _sync_defaults(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``mode: sync`` aggregates with FedAvg unless the config says otherwise: the ``fedavg``
    recipe and server lr 1 (the K-async defaults, WKAFL at 0.05, are meaningless there)."""
    if raw.get("mode") != "sync":
        return raw
    agg = raw.get("aggregation")
    agg = dict(agg) if isinstance(agg, Mapping) else {}
    if "rules" not in agg:
        from rayfl.aggregation.recipes import fedavg

        agg["rules"] = fedavg()
    agg.setdefault("lr", 1.0)
    return {**raw, "aggregation": agg}


def _check_concurrency(cfg: ExperimentConfig) -> None:
    """K <= C <= N: an iteration waits for K updates of the C clients in training."""
    c, k, n = cfg.clock.concurrency, cfg.aggregation.k, cfg.data.num_clients
    if c is None:
        return
    if c < k:
        raise ConfigError(
            f"clock.concurrency={c} is below aggregation.k={k}: an iteration waits for K updates "
            f"of the clients in training, use concurrency >= {k}"
        )
    if c > n:
        raise ConfigError(
            f"clock.concurrency={c} exceeds data.num_clients={n}: use at most {n}, or null for "
            "every client"
        )
    if cfg.aggregation.control:
        raise ConfigError(
            "clock.concurrency with aggregation.control: adaptive K, remodel and judgement "
            "assume every client always trains; use one or the other"
        )


def _check_scaffold(cfg: ExperimentConfig) -> None:
    """The scaffold task reads the server's control variate c, which the scaffold rule keeps."""
    from rayfl.aggregation import rule_names

    if cfg.client.task == "scaffold" and "scaffold" not in rule_names(cfg.aggregation.rules):
        raise ConfigError(
            "client.task=scaffold needs the scaffold rule in aggregation.rules (it keeps and "
            "sends the server's control variate): e.g. rules: [scaffold, weighted_sum, constant_lr]"
        )


def _check_privacy(cfg: ExperimentConfig) -> None:
    """DP-FedAvg's accountant assumes uniform sampling of a fixed number of clients a round: the
    synchronous engine's ``random`` selector. pow-d and the incentive mechanism pick clients by
    their losses or bids, and the K-async engine by arrival time; it cannot account for those."""
    from rayfl.aggregation import rule_names

    if "dp_noise" not in rule_names(cfg.aggregation.rules):
        return
    if cfg.mode != "sync" or cfg.selection.kind != "random":
        got = f"mode: {cfg.mode}" if cfg.mode != "sync" else f"selection.kind: {cfg.selection.kind}"
        raise ConfigError(
            f"aggregation.rules.dp_noise cannot account for the privacy of {got}: its accountant "
            "needs uniform sampling of a fixed number of clients, i.e. mode: sync with "
            "selection.kind: random"
        )


def _check_sync(cfg: ExperimentConfig) -> None:
    """Cross-field checks of a synchronous run (pow-d's d against N and M)."""
    sel, n = cfg.selection, cfg.data.num_clients
    if sel.kind != "pow-d":
        return
    if sel.d > n:
        raise ConfigError(
            f"selection.d={sel.d} exceeds data.num_clients={n}: pow-d draws d distinct "
            f"candidates, use d <= {n}"
        )
    m = max(1, math.floor(sel.k_fraction * n + 1e-9))
    if sel.d < m:
        raise ConfigError(
            f"selection.d={sel.d} is below M={m} (selection.k_fraction * data.num_clients): "
            f"pow-d picks M among d candidates, use d >= {m}"
        )


# --- loading ----------------------------------------------------------------------------------


def preset_names() -> list[str]:
    """The names of the presets shipped inside the package."""
    root = importlib.resources.files("rayfl") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    """The YAML text of a shipped preset."""
    path = importlib.resources.files("rayfl") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(_unknown_preset(name))
    return path.read_text()


def load_config(
    source: str | Path | Mapping[str, Any] | ExperimentConfig = "wkafl",
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Loads a preset name, a YAML path or a mapping, applies ``key.path=value`` overrides.

    Raises:
        ConfigError: with a one-line message naming the field and the fix.
    """
    if isinstance(source, ExperimentConfig):
        raw = source.to_dict()
    elif isinstance(source, Mapping):
        raw = _resolve_extends(dict(source), seen=())
    else:
        raw = _read_source(str(source), seen=())
    for item in overrides:
        _apply_override(raw, item)
    return ExperimentConfig.from_dict(raw)


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what a run folder's config.yaml holds)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _read_source(source: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if source in seen:
        raise ConfigError(f"'extends' loop: {' -> '.join((*seen, source))}: remove one extends")
    looks_like_path = source.endswith((".yaml", ".yml")) or "/" in source or "\\" in source
    if looks_like_path:
        path = Path(source)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist: check the path") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"config file {source} is unreadable ({e.__class__.__name__}): "
                "check its permissions and encoding"
            ) from None
    else:
        text = preset_text(source)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{where}: fix the syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source} holds a {type(raw).__name__}, not a mapping: a config is 'key: value' lines"
        )
    return _resolve_extends(raw, (*seen, source))


def _resolve_extends(raw: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if not isinstance(base_name, str):
        raise ConfigError("extends must be a preset name or a YAML path")
    base = _read_source(base_name, seen)
    return _merge(base, raw)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merges ``top`` over ``base``; rule chains (aggregation.rules, .control) are replaced whole."""
    out = dict(base)
    for key, value in top.items():
        if key != "rules" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} has no '=': write --set key.path=value")
    path, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    set_path(raw, path.strip(), value, where=f"--set {path.strip()}")


def set_path(raw: dict[str, Any], path: str, value: Any, where: str | None = None) -> None:
    """Sets the config field at dotted ``path`` in a raw (YAML) mapping, checking the path exists.

    ``where`` prefixes error messages (default: the path). The value is type-checked later, when
    the mapping is built into an ``ExperimentConfig``.
    """
    where = where or path
    keys = path.split(".")
    if not all(keys):
        raise ConfigError(f"{where}: empty key in {path!r}: write key.path=value")
    cls: Any = ExperimentConfig
    node = raw
    for depth, key in enumerate(keys[:-1]):
        prefix = ".".join(keys[: depth + 1])
        if cls is not None:
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if key not in fields:
                raise ConfigError(_unknown_key(prefix, key, fields))
            hint = typing.get_type_hints(cls)[key]
            cls = hint if dataclasses.is_dataclass(hint) else None
            if cls is None and prefix == "aggregation.rules":
                _set_rule_param(node, keys[depth + 1 :], value, where)
                return
        child = node.get(key)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: {prefix} is not a mapping")
        else:
            child = dict(child)
        node[key] = child
        node = child
    last = keys[-1]
    if cls is not None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if last not in fields:
            raise ConfigError(_unknown_key(path, last, fields))
    node[last] = value


def _set_rule_param(node: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    """``aggregation.rules.<rule>.<param>=value``, <rule> a rule's name (if it is in the chain
    once) or its position in the list."""
    from rayfl.aggregation import normalize_rules

    rules = normalize_rules(node["rules"] if node.get("rules") is not None else _default_rules())
    node["rules"] = rules
    if len(keys) != 2:
        raise ConfigError(f"{where}: write aggregation.rules.<rule or position>.<param>=value")
    rule, param = keys
    names = [next(iter(r)) for r in rules]
    if rule.isdigit() and int(rule) < len(rules):
        at = [int(rule)]
    else:
        at = [i for i, name in enumerate(names) if name == rule]
    if not at:
        raise ConfigError(
            f"{where}: rule {rule!r} is not in this experiment's chain ({', '.join(names)}): "
            "add it in the YAML's aggregation.rules"
        )
    if len(at) > 1:
        raise ConfigError(
            f"{where}: rule {rule!r} is in the chain {len(at)} times (positions "
            f"{', '.join(map(str, at))}): name it by position, aggregation.rules.{at[0]}.{param}"
        )
    name = names[at[0]]
    rules[at[0]] = {name: {**rules[at[0]][name], param: value}}


# --- typed construction -----------------------------------------------------------------------


def _build(cls: Any, raw: Any, path: str) -> Any:
    where = path or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{where} must be a mapping, got {type(raw).__name__}: write key: value lines"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(_unknown_key(full, str(key), fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in raw:
        full = f"{path}.{name}" if path else name
        kwargs[name] = _coerce(raw[name], hints[name], full)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], path)
        for a in inner:
            try:
                return _coerce(value, a, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} has the wrong type: expected {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:
            value = str(value).lower()  # YAML reads `true` as a bool: staleness: true
        if value not in args:
            raise ConfigError(_one_of_msg(path, value, args))
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _type_error(path, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(path, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(path, value, "a string")
        return value
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, value, "a list")
        return tuple(_coerce(v, args[0], path) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(path, value, "a mapping")
        return {str(k): v for k, v in value.items()}
    raise ConfigError(f"{path}: unsupported field type {tp!r}")  # a bug in rayfl, not user input


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _type_error(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: expected {expected}, got {value!r} ({type(value).__name__})")


def _unknown_key(full: str, key: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
    return f"unknown key {full!r}: {hint}"


def _unknown_preset(name: str) -> str:
    names = preset_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"no preset named {name!r}: {hint}see `rayfl presets` ({', '.join(names)}), "
        "or pass a path to a .yaml file"
    )


def _one_of_msg(path: str, value: Any, options: Sequence[Any]) -> str:
    return f"{path}={value!r} is not one of {', '.join(map(str, options))}: pick one of them"


def _one_of(path: str, value: Any, options: Sequence[Any]) -> None:
    if value not in options:
        raise ConfigError(_one_of_msg(path, value, options))


def _positive(path: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{path}={value} must be > 0: use a positive value")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
