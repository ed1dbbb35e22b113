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
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from rayfl.errors import ConfigError

MODEL_NAMES = ("paper_cnn", "mlp")
_FACTORY_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _default_rules() -> dict[str, Any]:
    from rayfl.aggregation.recipes import wkafl

    return wkafl()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how it is split over the clients."""

    dataset: str = "mnist"
    """mnist (bundled, offline) | emnist-mnist | emnist-digits | emnist-balanced | fashion-mnist | cifar10."""
    data_dir: str | None = None
    """Folder for torchvision data sets; null uses the bundled MNIST."""
    download: bool = False
    """Download the data set into data_dir if it is not there."""
    partition: str = "paper"
    """iid | dirichlet | shards | paper (AKAFL-RJ spec section 7)."""
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

        _one_of("data.dataset", self.dataset, DATASETS)
        _one_of("data.partition", self.partition, tuple(PARTITIONERS))
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
        if self.name not in MODEL_NAMES and not _FACTORY_PATH.match(self.name):
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

    def __post_init__(self) -> None:
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
        if self.num_cpus == 0 and self.num_gpus == 0 and self.num_workers is None:
            raise ConfigError(
                "client.num_cpus and client.num_gpus are both 0: reserve some resource per "
                "worker or set client.num_workers"
            )


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


@dataclasses.dataclass(frozen=True)
class AggregationConfig:
    """How the server combines the K updates of an iteration (spec section 3)."""

    k: int = 10
    """K (K_0 with adaptive K): updates aggregated per iteration."""
    lr: float = 0.05
    """eta, the server's base learning rate."""
    rules: dict[str, Any] = dataclasses.field(default_factory=_default_rules)
    """Ordered rule chain {rule_name: {param: value}}; see rayfl.aggregation.RULES."""
    control: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Control rules {adaptive_k: {...}, remodel: {...}, judgement: {...}}; empty = fixed K."""
    staleness: Literal["true", "nominal"] = "true"
    """true: a client computes on the version it received; nominal: on the newest version
    (the public WKAFL code), staleness then only enters the weights and the lr (spec section 7)."""

    def __post_init__(self) -> None:
        _positive("aggregation.k", self.k)
        _positive("aggregation.lr", self.lr)
        if not self.rules:
            raise ConfigError(
                "aggregation.rules is empty: list at least one rule, e.g. {mean: {}, "
                "weighted_sum: {}, constant_lr: {}}"
            )
        from rayfl.aggregation import build_rules

        build_rules(self.rules)  # raises ConfigError naming aggregation.rules.<rule>.<param>
        from rayfl.aggregation.control import build_controls

        build_controls(self.control)


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
class ExperimentConfig:
    """One experiment: everything needed to reproduce a run from its seed."""

    name: str = "experiment"
    """A short name, used for the run folder."""
    seed: int = 0
    """The run's seed; every random draw derives from it."""
    iterations: int = 1000
    """T, the number of server iterations (aggregations)."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    clock: ClockConfig = dataclasses.field(default_factory=ClockConfig)
    aggregation: AggregationConfig = dataclasses.field(default_factory=AggregationConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not re.match(r"^[\w.-]+$", self.name):
            raise ConfigError(
                f"name={self.name!r} may only hold letters, digits, '_', '.' and '-': rename it"
            )
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} is negative: use a seed >= 0")
        _positive("iterations", self.iterations)
        if self.aggregation.staleness == "nominal" and self.clock.kind != "virtual":
            raise ConfigError(
                "aggregation.staleness=nominal needs clock.kind=virtual: use staleness true"
            )
        if self.aggregation.k > self.data.num_clients:
            raise ConfigError(
                f"aggregation.k={self.aggregation.k} exceeds data.num_clients="
                f"{self.data.num_clients}: lower aggregation.k or add clients"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe dict (tuples become lists) that ``from_dict`` reads back."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentConfig:
        """Builds and validates a config from a nested mapping (as read from YAML)."""
        return _build(cls, raw, "")


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
                rules = node.get("rules")
                if rules is None:
                    rules = _default_rules()
                    node["rules"] = rules
                rule = keys[depth + 1]
                if rule not in rules:
                    raise ConfigError(
                        f"{where}: rule {rule!r} is not in this experiment's chain "
                        f"({', '.join(rules)}): add it in the YAML's aggregation.rules"
                    )
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
