"""A plain single-process PyTorch K-async loop: the baseline rayfl's engine is measured against.

It computes the same updates (same client, version and seed, hence the same mini-batches) in the
same virtual-clock order and aggregates them with the same rule chain, with no Ray at all, so its
final weights must equal rayfl's within float tolerance (asserted by ``overhead.py``).
"""

from __future__ import annotations

import heapq
import time

import numpy as np
import torch

from rayfl.aggregation import build_optimizer, build_rules, start_step
from rayfl.clients.local import LocalTrainer
from rayfl.clients.shipped import build_task
from rayfl.clients.task import DataSpec
from rayfl.config import ExperimentConfig
from rayfl.data import load_dataset, partition
from rayfl.models import build_model, get_flat
from rayfl.runtime.data import input_scaling
from rayfl.speed import SpeedModel


def plain_run(
    cfg: ExperimentConfig, threads: int | None = None
) -> tuple[np.ndarray, float, list[float]]:
    """Runs cfg.iterations K-async iterations in-process. Returns (weights, seconds, losses)."""
    if threads is not None:
        torch.set_num_threads(threads)
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    d = cfg.data
    part = partition(
        ds.y_train,
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
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, cfg.seed)
    w = get_flat(model)
    # The inputs as the run's data.normalize scales them (x / 255 for the spec's profiles).
    mean, std = input_scaling(d.normalize, tuple(ds.mean), tuple(ds.std))
    spec = DataSpec.of(ds.x_train, ds.num_classes, mean, std)
    computer = LocalTrainer(
        build_task(cfg.client.task, cfg.client.task_params, spec),
        cfg.client.task,
        model,
        ds.x_train,
        ds.y_train,
        part.indices,
        part.offsets,
        batch_size=cfg.client.batch_size,
        local_steps=cfg.client.local_steps,
        local_lr=cfg.client.local_lr,
        seed=cfg.seed,
    )
    speed = SpeedModel(
        cfg.clock, d.num_clients, cfg.client.batch_size * cfg.client.local_steps, w.nbytes, cfg.seed
    )
    rule = build_rules(cfg.aggregation.rules)
    state = rule.init(w)
    optimizer = build_optimizer(cfg.aggregation.optimizer)
    opt_state = optimizer.init(w)
    versions = {0: w}
    held = {0: d.num_clients}
    heap = [(speed.duration(c, 0), c, 0) for c in range(d.num_clients)]
    heapq.heapify(heap)
    losses = []
    start = time.perf_counter()
    for t in range(cfg.iterations):
        popped = [heapq.heappop(heap) for _ in range(cfg.aggregation.k)]
        now = popped[-1][0]
        results = [computer.update(c, v, versions[v])[:2] for _, c, v in popped]
        for _, _, v in popped:
            held[v] -= 1
            if held[v] == 0 and v != t:
                del versions[v], held[v]
        step = start_step(
            t,
            np.stack([g for g, _ in results]),
            [t - v for _, _, v in popped],
            [loss for _, loss in results],
            cfg.aggregation.lr,
            [c for _, c, _ in popped],
        )
        step, state = rule.update(step, state, w)
        w, opt_state = optimizer.apply(step, opt_state, w)
        state = rule.commit(step, state, w)
        losses.append(step.metrics["train/loss"])
        versions[t + 1], held[t + 1] = w, 0
        for _, c, _ in popped:
            held[t + 1] += 1
            heapq.heappush(heap, (now + speed.duration(c, t + 1), c, t + 1))
        if held.get(t) == 0:
            del versions[t], held[t]
    return w, time.perf_counter() - start, losses


if __name__ == "__main__":
    import sys

    from rayfl.config import load_config

    cfg = load_config(sys.argv[1] if len(sys.argv) > 1 else "wkafl", sys.argv[2:])
    w, secs, losses = plain_run(cfg)
    print(
        f"{cfg.iterations} iterations in {secs:.1f} s; loss first {np.mean(losses[:20]):.3f} last {np.mean(losses[-20:]):.3f}"
    )
