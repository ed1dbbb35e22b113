"""The glossary of rayfl, as types. Use these words and no synonyms.

- **iteration** (t): one server aggregation; K-async iterations are numbered 0, 1, ..., T-1.
- **round**: one synchronous FedAvg step (selection, local training, averaging).
- **version** (v): the global model after v iterations; w_v. The initial model is version 0.
- **client_id** (i): a virtual client, 0 <= i < N. Many virtual clients share one worker actor.
- **job**: one client computing one update on one version; at most one per client at a time.
- **staleness** (tau): t - v for an update computed on version v and aggregated at iteration t.
- **k** (K_t): the number of updates aggregated at iteration t.
- **worker**: a Ray actor process that computes jobs for any client.
- **shared data**: the arrays every worker maps from the object store (``SharedData``).
- **client state**: what a client task keeps from one of a client's jobs to its next (SCAFFOLD's
  control variate); the server stores it (``rayfl.clients.state``) and sends it with each job.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, order=True)
class Job:
    """A dispatched job: ``client_id`` computes on ``version``; ``finish`` orders the virtual clock."""

    finish: float  # virtual time units (virtual clock) or dispatch wall seconds (real clock)
    client_id: int
    version: int


@dataclasses.dataclass(frozen=True)
class Update:
    """What a worker returns for a job: the update vector, the mini-batch loss and the client's
    new state (kept by the server only if it accepts the update)."""

    client_id: int
    version: int
    vector: np.ndarray  # (P,) float32
    loss: float
    worker: int = -1  # index of the worker actor that computed it
    state: bytes | None = None  # the client's new state, packed; None: the task keeps none
    report: dict[str, np.ndarray] | None = None  # ClientTask.report: what rules read beside it


@dataclasses.dataclass(frozen=True)
class SharedData:
    """ObjectRefs of the arrays every worker maps (put once by the driver)."""

    x_train: Any  # ObjectRef of (n, ...) samples: (n, C, H, W) uint8 for the image sets
    y_train: Any  # ObjectRef of (n, ...) targets: (n,) int64 labels for the image sets
    x_test: Any
    y_test: Any
    indices: Any  # ObjectRef of the partition's concatenated indices
    offsets: Any  # ObjectRef of (N + 1,) int64
    input_shape: tuple[int, ...]  # one sample's shape
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
