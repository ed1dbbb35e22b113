"""Client workers: Ray actors that each serve many virtual clients.

A worker maps the shared training images and the partition from the Ray object store (zero copy:
one copy per node, whatever the number of workers or clients) and computes jobs
``(client_id, version)`` on request. It is an async actor: an injected real-clock delay is an
``asyncio.sleep`` that does not block computation, so many clients can be "in flight" on one
worker while its single compute thread works on others. Compute runs on the GPU when Ray assigned
this worker one (``num_gpus``, fractions allowed) and CUDA is usable, else on one CPU thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import os
from typing import Any

import numpy as np
import ray
import torch

from rayfl.config import ExperimentConfig
from rayfl.errors import ConfigError
from rayfl.models import build_model
from rayfl.server.types import Job, Update
from rayfl.training import UpdateComputer


@dataclasses.dataclass(frozen=True)
class SharedData:
    """ObjectRefs of the arrays every worker maps (put once by the driver)."""

    x_train: Any  # ObjectRef of (n, C, H, W) uint8
    y_train: Any  # ObjectRef of (n,) int64
    x_test: Any
    y_test: Any
    indices: Any  # ObjectRef of the partition's concatenated indices
    offsets: Any  # ObjectRef of (N + 1,) int64
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ClientWorker:
    """Computes client updates; wrap with ``ray.remote`` (see ``make_pool``)."""

    def __init__(
        self,
        index: int,
        cfg: ExperimentConfig,
        data: SharedData,
        x: np.ndarray,
        y: np.ndarray,
        indices: np.ndarray,
        offsets: np.ndarray,
    ):
        # x, y, indices, offsets arrive as top-level ObjectRefs, which Ray resolves to read-only
        # numpy views of the node's shared object store: no copy per worker or per client.
        self.index = index
        gpu_ids = ray.get_gpu_ids()
        if gpu_ids and torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
            torch.set_num_threads(max(1, math.floor(cfg.client.num_cpus) or 1))
        self.device = device
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        self.computer = UpdateComputer(
            model,
            x,
            y,
            indices,
            offsets,
            data.mean,
            data.std,
            batch_size=cfg.client.batch_size,
            local_steps=cfg.client.local_steps,
            local_lr=cfg.client.local_lr,
            seed=cfg.seed,
            device=device,
        )
        # One compute thread: jobs run one at a time, in the order they were submitted.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def info(self) -> dict[str, Any]:
        """Where this worker runs: node id, pid, device, assigned GPU ids."""
        ctx = ray.get_runtime_context()
        return {
            "index": self.index,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "device": str(self.device),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    async def compute(self, job: Job, weights: np.ndarray, delay_s: float = 0.0) -> Update:
        """The update of ``job``; ``weights`` is the flat w_v (Ray resolves the ObjectRef)."""
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # injected straggler delay: others compute meanwhile
        loop = asyncio.get_running_loop()
        vector, loss = await loop.run_in_executor(
            self._executor, self.computer.compute, job.client_id, job.version, weights
        )
        return Update(job.client_id, job.version, vector, loss, self.index)

    async def compute_batch(
        self, jobs: list[tuple[Job, int]], *weights: np.ndarray
    ) -> list[Update]:
        """Updates for several jobs; job j uses ``weights[index_j]`` (Ray resolves the refs).

        One actor call for a batch amortises Ray's per-call overhead (virtual clock: the server
        knows the order of the next jobs, so it sends them in batches).
        """
        loop = asyncio.get_running_loop()

        def work() -> list[Update]:
            out = []
            for job, i in jobs:
                vector, loss = self.computer.compute(job.client_id, job.version, weights[i])
                out.append(Update(job.client_id, job.version, vector, loss, self.index))
            return out

        return await loop.run_in_executor(self._executor, work)


def pool_size(cfg: ExperimentConfig, resources: dict[str, float]) -> int:
    """Workers that fit the cluster's ``resources`` at the configured per-worker CPUs/GPUs."""
    if cfg.client.num_workers is not None:
        return min(cfg.client.num_workers, cfg.data.num_clients)
    fits = []
    cpus = resources.get("CPU", 0.0) - cfg.server.num_cpus
    if cfg.client.num_cpus > 0:
        fits.append(math.floor(cpus / cfg.client.num_cpus + 1e-9))
    if cfg.client.num_gpus > 0:
        gpus = resources.get("GPU", 0.0) - cfg.server.num_gpus
        if gpus < cfg.client.num_gpus:
            raise ConfigError(
                f"client.num_gpus={cfg.client.num_gpus} but the cluster has {gpus:g} GPUs free: "
                "set client.num_gpus=0 or start Ray with GPUs"
            )
        fits.append(math.floor(gpus / cfg.client.num_gpus + 1e-9))
    n = min(fits)
    if n < 1:
        raise ConfigError(
            f"no client worker fits the cluster ({resources.get('CPU', 0):g} CPUs): lower "
            "client.num_cpus or server.num_cpus, or set client.num_workers"
        )
    return min(n, cfg.data.num_clients)


def make_pool(cfg: ExperimentConfig, data: SharedData, max_concurrency: int) -> list[Any]:
    """Starts the worker actors and waits until they are ready."""
    n = pool_size(cfg, ray.cluster_resources())
    actor_cls = ray.remote(ClientWorker)
    options: dict[str, Any] = {
        "num_cpus": cfg.client.num_cpus,
        "num_gpus": cfg.client.num_gpus,
        "max_concurrency": max_concurrency,
    }
    if ray.util.get_current_placement_group() is None:
        # Spread workers over the nodes; inside a placement group (a Tune trial) they stay in
        # the group's bundles instead.
        options["scheduling_strategy"] = "SPREAD"
    return [
        actor_cls.options(**options).remote(
            i, cfg, data, data.x_train, data.y_train, data.indices, data.offsets
        )
        for i in range(n)
    ]
