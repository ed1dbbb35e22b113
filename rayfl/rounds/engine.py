"""The synchronous engine as the run driver sees it (``mode: sync``).

The server side (:class:`rayfl.rounds.loop.RoundServer`) runs in the driver's process; the
clients train on the client worker pool (``make_pool``: one worker per ``client.num_cpus``, or
``client.num_workers``). Each round is one :class:`~rayfl.runtime.engine.Chunk` with its row of
``rounds.parquet`` (:mod:`rayfl.rounds.records`). Checkpoints are the server's state at a round
boundary (:meth:`RoundServer.checkpoint`); a resumed run ends on the same weights as an unbroken
one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from rayfl.config import ExperimentConfig
from rayfl.environment import by_worker
from rayfl.errors import RayflError
from rayfl.rounds.records import RoundRecords, round_summary
from rayfl.runtime.engine import Chunk
from rayfl.types import SharedData

if TYPE_CHECKING:  # torch, imported once Ray is starting (rayfl.api warms it up meanwhile)
    from rayfl.rounds.loop import RoundServer

WORKER_START_TIMEOUT_S = 300.0


class RoundsEngine:
    """Runs :class:`RoundServer` rounds in this process (see the module docstring)."""

    unit = "round"
    actor = "a client worker"

    def __init__(self, cfg: ExperimentConfig, sizes: np.ndarray):
        if cfg.mode != "sync":
            raise RayflError(f"the rounds engine needs mode: sync, got mode: {cfg.mode}")
        self.cfg = cfg
        self.sizes = sizes  # (N,) |D_i|
        self.server: RoundServer | None = None
        self.workers: list[Any] = []
        self._info: list[dict[str, Any]] = []
        self._records: RoundRecords | None = None
        self._last: dict[str, Any] | None = None  # the state after the last complete round
        self._stopping = False
        self.weights = np.zeros(0, dtype=np.float32)

    def records(self, run_dir: Path) -> RoundRecords:
        self._records = RoundRecords(run_dir)
        return self._records

    def prestart(self) -> None:
        """Starts the worker pool (the clients' side, private numbers included): the workers'
        processes start and import torch while the driver puts the data in the object store."""
        from rayfl.clients.worker import make_pool

        self.workers = make_pool(self.cfg, max_concurrency=4)

    def start(self, data: SharedData, restore: dict[str, Any] | None) -> None:
        from rayfl.rounds.loop import RoundServer

        if not self.workers:
            self.prestart()
        attached = [w.attach.remote(data) for w in self.workers]
        # The server's side (w(0), its evaluation) is built while the workers map the data.
        self.server = RoundServer(self.cfg, data, self.workers, self.sizes)
        try:
            self._info = ray.get(attached, timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RayflError(
                f"{len(self.workers)} client workers could not start within "
                f"{WORKER_START_TIMEOUT_S:.0f} s: lower client.num_cpus / client.num_gpus or "
                "client.num_workers"
            ) from None
        if restore is not None:
            self.server.restore(restore)

    def chunks(self) -> Iterator[Chunk]:
        server, every = self.server, self.cfg.checkpoint_every
        assert server is not None
        while server.t < self.cfg.iterations and not self._stopping:
            row, record, updates = server.round()
            self._last = server.checkpoint() if every else None
            due = every and server.t % every == 0 and server.t < self.cfg.iterations
            yield Chunk([row], updates, [record], checkpoint=self._last if due else None)

    def stop(self) -> None:
        self._stopping = True

    def checkpoint(self) -> dict[str, Any]:
        assert self.server is not None
        return self.server.checkpoint()

    def finish(self, model_path: Path) -> None:
        import torch

        from rayfl.models import set_flat

        assert self.server is not None
        set_flat(self.server.model, self.server.w)
        torch.save(self.server.model.state_dict(), model_path)
        self.weights = self.server.w

    def interrupted(self, log: Callable[[Chunk], None]) -> dict[str, Any] | None:
        """The state after the last complete round (a round cut short left no row)."""
        return self._last

    def summary(self, finished: bool) -> dict[str, Any]:
        records = self._records.records if self._records is not None else []
        out: dict[str, Any] = {
            "mode": "sync",
            "selection": self.cfg.selection.kind,
            **round_summary(records),
        }
        if finished:
            assert self.server is not None
            out["num_workers"] = len(self.workers)
            out["worker_nodes"] = sorted({w["node_id"] for w in self._info})
            out["worker_environments"] = by_worker(self._info)
            out["num_parameters"] = int(self.server.w.size)
        if self.server is not None:
            out["worker_failures"] = self.server.pool.failures
            spent = self.server.aggregator.privacy()
            if spent:
                out["privacy"] = spent
        return out

    def postfix(self, last: dict[str, Any], last_eval: dict[str, Any] | None) -> dict[str, Any]:
        post: dict[str, Any] = {}
        if last_eval is not None:
            post["acc"] = f"{last_eval['eval/accuracy']:.4f}"
        post["loss"] = f"{last.get('train/loss', float('nan')):.3f}"
        post["C"] = last["agg/k"]
        if "incentive/carried" in last:
            post["carried"] = f"{last['incentive/carried']:.2f}"
        return post

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
