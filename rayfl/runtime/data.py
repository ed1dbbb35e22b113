"""The run's data: load and partition it (numpy, before any folder or Ray exists, so bad data
fails first), then put the arrays in the object store once; every worker on a node maps the same
copy. A Ray Tune search puts the data set once for all its trials (:func:`share_dataset`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import ray

from rayfl.config import ExperimentConfig
from rayfl.data import Dataset, Partition, load_dataset, partition
from rayfl.errors import RayflError
from rayfl.types import SharedData


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
    columns: dict[str, np.ndarray]  # the set's other per-sample columns, for partitioning
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def share_dataset(cfg: ExperimentConfig) -> DatasetRefs:
    """Loads ``cfg``'s data set and puts its arrays in the object store once."""
    ds = load_dataset(
        cfg.data.dataset, cfg.data.data_dir, cfg.data.download, cfg.data.dataset_params
    )
    return DatasetRefs(
        name=ds.name,
        data_dir=cfg.data.data_dir,
        x_train=ray.put(ds.x_train),
        y_train=ray.put(ds.y_train),
        x_test=ray.put(ds.x_test),
        y_test=ray.put(ds.y_test),
        labels=np.asarray(ds.y_train),
        columns=dict(ds.columns),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=tuple(ds.mean),
        std=tuple(ds.std),
    )


def _partition(
    cfg: ExperimentConfig, labels: np.ndarray, columns: dict[str, np.ndarray] | None = None
) -> Partition:
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
        params=d.partition_params,
        columns=columns,
    )


def load_data(cfg: ExperimentConfig) -> tuple[Dataset, Partition]:
    """Loads the data set and partitions it (numpy; no Ray). Raises DataError on bad input."""
    ds = load_dataset(
        cfg.data.dataset, cfg.data.data_dir, cfg.data.download, cfg.data.dataset_params
    )
    return ds, _partition(cfg, ds.y_train, ds.columns)


def input_scaling(
    normalize: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the default batch transform uses for ``data.normalize``: ``standard``
    keeps the data set's per-channel constants ((x / 255 - mean) / std), ``unit`` gives
    x / 255 (mean 0, std 1: the scale of the WKAFL code and of many FL papers' MNIST)."""
    if normalize == "unit":
        return tuple(0.0 for _ in mean), tuple(1.0 for _ in std)
    return mean, std


def put_data(ds: Dataset, part: Partition, normalize: str = "standard") -> SharedData:
    """Puts the arrays in the object store once; every worker on a node maps the same copy."""
    mean, std = input_scaling(normalize, tuple(ds.mean), tuple(ds.std))
    return SharedData(
        x_train=ray.put(ds.x_train),
        y_train=ray.put(ds.y_train),
        x_test=ray.put(ds.x_test),
        y_test=ray.put(ds.y_test),
        indices=ray.put(part.indices),
        offsets=ray.put(part.offsets),
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        mean=mean,
        std=std,
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
    return None, _partition(cfg, dataset.labels, dataset.columns)


def put_run_data(
    ds: Dataset | None, part: Partition, dataset: DatasetRefs | None, normalize: str = "standard"
) -> SharedData:
    """:func:`put_data`, or only the partition when ``dataset`` already shares the arrays;
    ``normalize`` is ``data.normalize`` (:func:`input_scaling`)."""
    if dataset is None:
        assert ds is not None
        return put_data(ds, part, normalize)
    mean, std = input_scaling(normalize, dataset.mean, dataset.std)
    return SharedData(
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        indices=ray.put(part.indices),
        offsets=ray.put(part.offsets),
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        mean=mean,
        std=std,
    )
