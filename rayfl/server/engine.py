"""The K-async engine as the run driver sees it: the server actor, driven in chunks.

The server (:class:`rayfl.server.loop.KAsyncServer`) runs as a Ray actor; the driver calls
``run(CHUNK)`` repeatedly with two calls in flight, so the server never idles while the driver
writes files. The actor runs calls in order, so a ``checkpoint()`` call queued after a chunk sees
exactly the iterations before it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rayfl.config import ExperimentConfig
from rayfl.environment import by_worker
from rayfl.errors import RayflError
from rayfl.runtime.engine import Chunk
from rayfl.types import SharedData

CHUNK = 10  # iterations per server call: how often the driver sees progress
INTERRUPT_DRAIN_S = 30.0  # how long an interrupted run waits for the chunks in flight


class KAsyncEngine:
    """Drives a :class:`KAsyncServer` actor (see the module docstring)."""

    unit = "it"
    actor = "the server actor"

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.server: Any = None
        self.workers: list[Any] = []  # the pool the driver starts beside the server
        self.weights = np.zeros(0, dtype=np.float32)
        self._info: dict[str, Any] = {}
        self._calls: list[tuple[str, Any]] = []  # ("chunk" | "checkpoint", ObjectRef), in order
        self._requested = 0  # iterations asked of the server so far
        self._stopping = False

    def records(self, run_dir: Path) -> None:
        return None

    def prestart(self) -> None:
        """Creates the server actor and the worker pool: their processes start and import
        torch side by side while the driver puts the data in the object store (the server
        used to start the workers itself, after its own start: ~1-2 s more per run)."""
        from rayfl.server.loop import KAsyncServer  # torch: imported once Ray is starting
        from rayfl.server.scheduler import make_worker_pool

        cfg = self.cfg
        server_cls = ray.remote(KAsyncServer).options(
            num_cpus=cfg.server.num_cpus, num_gpus=cfg.server.num_gpus, max_concurrency=1
        )
        self.server = server_cls.remote(cfg)
        # Owned by the driver (close() kills them); Ray restarts a dead one while it lives.
        self.workers = make_worker_pool(cfg)

    def start(self, data: SharedData, restore: dict[str, Any] | None) -> None:
        if self.server is None:
            self.prestart()
        self._info = _get(self.server.start.remote(data, restore, self.workers))
        self._requested = self._info["iteration"]

    def chunks(self) -> Iterator[Chunk]:
        self._request()
        self._request()
        while self._calls:
            kind, ref = self._calls[0]
            value = _get(ref)  # an interrupt while waiting leaves the call for interrupted()
            if kind == "chunk" and not self._stopping:
                self._request()
            self._calls.pop(0)
            if kind == "checkpoint":
                yield Chunk(checkpoint=value)
                continue
            yield Chunk(value["metrics"], value["updates"])
            if "error" in value:  # the rows before it are logged; the run ends with it
                raise value["error"]

    def _request(self) -> None:
        """Asks for the next chunk (cut at the next checkpoint), and that checkpoint."""
        every, done = self.cfg.checkpoint_every, self._requested
        n = min(CHUNK, self.cfg.iterations - done)
        if every:
            n = min(n, every - done % every)
        if n <= 0:
            return
        self._calls.append(("chunk", self.server.run.remote(n)))
        self._requested += n
        if every and self._requested % every == 0 and self._requested < self.cfg.iterations:
            self._calls.append(("checkpoint", self.server.checkpoint.remote()))

    def stop(self) -> None:
        self._stopping = True

    def checkpoint(self) -> dict[str, Any]:
        return _get(self.server.checkpoint.remote())

    def finish(self, model_path: Path) -> None:
        self._info = ray.get(self.server.describe.remote())
        self.weights = ray.get(self.server.weights.remote())
        import torch

        torch.save(ray.get(self.server.state_dict.remote()), model_path)

    def interrupted(self, log: Callable[[Chunk], None]) -> dict[str, Any] | None:
        """Logs the chunks still in flight, then asks for a checkpoint; gives up after
        INTERRUPT_DRAIN_S (the last periodic checkpoint stays)."""
        if self.server is None or not self._info:
            return None
        deadline = time.monotonic() + INTERRUPT_DRAIN_S
        for kind, ref in self._calls:
            value = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            if kind == "chunk":
                log(Chunk(value["metrics"], value["updates"]))
        self._calls.clear()
        return ray.get(
            self.server.checkpoint.remote(), timeout=max(0.1, deadline - time.monotonic())
        )

    def summary(self, finished: bool) -> dict[str, Any]:
        if not finished:
            return {}
        info = self._info
        return {
            "num_workers": len(info["workers"]),
            "num_parameters": info["num_parameters"],
            "updates_aggregated": info["updates_aggregated"],
            "worker_nodes": sorted({w["node_id"] for w in info["workers"] if w.get("node_id")}),
            "worker_failures": info["worker_failures"],
            "rejected_updates": info["rejected_updates"],
            "maintained": info["maintained"],
            "remodels": info["remodels"],
            "wasted_jobs": info["wasted_jobs"],
            "jobs_lost": info["jobs_lost"],
            "worker_environments": by_worker(info["workers"]),
            "aggregation_backend": info["aggregation_backend"],
        }

    def postfix(self, last: dict[str, Any], last_eval: dict[str, Any] | None) -> dict[str, Any]:
        post: dict[str, Any] = {}
        if last_eval is not None:
            post["acc"] = f"{last_eval['eval/accuracy']:.4f}"
        post["loss"] = f"{last.get('train/loss', float('nan')):.3f}"
        post["K"] = last.get("agg/k")
        post["vt"] = f"{last.get('sys/virtual_time', 0.0):.1f}"
        return post

    def close(self) -> None:
        if self.server is not None:
            ray.kill(self.server)  # the workers it grew are owned by it and go with it
        for worker in self.workers:
            ray.kill(worker)  # the driver's own, started beside the server
        self.workers = []


def _get(ref: Any) -> Any:
    """``ray.get`` that re-raises a user error from the server actor as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, RayflError):
            raise e.cause from None
        raise
