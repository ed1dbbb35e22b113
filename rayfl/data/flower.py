"""Flower Datasets' partitioners as rayfl partitions: ``data.partition: flwr:<Partitioner>``.

Any partitioner of ``flwr_datasets.partitioner`` by its class name, with its parameters in
``data.partition_params``:

    data:
      partition: flwr:DirichletPartitioner
      partition_params: {alpha: 0.3, min_partition_size: 10}

rayfl fills what the run already knows: ``num_partitions`` (``data.num_clients``),
``partition_by`` (``label``: the training labels' column), and ``seed`` (derived from the run's
seed, so the split is the run's, not the library's default 42). Besides ``label``, the
partitioner sees the columns the data set kept (``keep_columns`` of an ``hf:`` data set), e.g.
``flwr:NaturalIdPartitioner`` with ``partition_by: writer_id``. The partition becomes rayfl's
compact CSR index arrays (a :class:`~rayfl.data.Partition`), so 100k+ clients stay cheap.

Needs ``pip install 'rayfl[flwr]'``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from rayfl import seeding
from rayfl.errors import ConfigError, DataError

PREFIX = "flwr:"
INDEX = "__rayfl_index"


def is_flwr(kind: str) -> bool:
    return isinstance(kind, str) and kind.startswith(PREFIX)


def flwr_partition(
    kind: str,
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    params: Mapping[str, Any] | None,
    columns: Mapping[str, np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Splits the training samples with Flower Datasets' partitioner ``kind``: one index array
    per client (``rayfl.data.partition`` makes them a :class:`~rayfl.data.Partition`)."""
    try:
        import datasets
        from flwr_datasets import partitioner as partitioners
    except ImportError:
        raise DataError(
            f"data.partition={kind!r} needs Flower Datasets: pip install 'rayfl[flwr]'"
        ) from None
    cls = _partitioner_class(partitioners, kind)
    kwargs = _arguments(cls, kind, num_clients, seed, params)
    table = {"label": np.asarray(labels), INDEX: np.arange(len(labels)), **dict(columns or {})}
    try:
        split = cls(**kwargs)
        split.dataset = datasets.Dataset.from_dict(table)
        n = split.num_partitions
        if n != num_clients:
            raise DataError(
                f"data.partition={kind!r} made {n} partitions, not data.num_clients="
                f"{num_clients}: set data.num_clients={n}"
            )
        parts = [np.asarray(split.load_partition(i)[INDEX], dtype=np.int64) for i in range(n)]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - the library's reason, in one line, naming our field
        message = (" ".join(str(e).split()) or type(e).__name__)[:300]
        raise DataError(
            f"data.partition={kind!r} with data.partition_params={dict(params or {})} failed: "
            f"{message}"
        ) from None
    return parts


def _partitioner_class(partitioners: Any, kind: str) -> type:
    name = kind[len(PREFIX) :]
    known = sorted(
        n for n in getattr(partitioners, "__all__", dir(partitioners)) if n.endswith("Partitioner")
    )
    cls = getattr(partitioners, name, None)
    if not inspect.isclass(cls) or name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean 'flwr:{close[0]}'? " if close else ""
        raise ConfigError(
            f"data.partition={kind!r} is not a Flower Datasets partitioner: {hint}use one of "
            f"{', '.join(known)}"
        )
    return cls


def _arguments(
    cls: type, kind: str, num_clients: int, seed: int, params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The partitioner's keyword arguments: the config's, plus what the run knows."""
    signature = inspect.signature(cls).parameters
    kwargs = dict(params or {})
    for key in kwargs:
        if key not in signature:
            close = difflib.get_close_matches(key, list(signature), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(signature)}"
            raise ConfigError(f"data.partition_params.{key} is not a parameter of {kind}: {hint}")
    defaults = {
        "num_partitions": num_clients,
        "partition_by": "label",
        "seed": seeding.derive(seed, seeding.PARTITION) % 2**32,  # numpy's legacy seeds: 32 bits
    }
    for key, value in defaults.items():
        if key in signature:
            kwargs.setdefault(key, value)
    return kwargs
