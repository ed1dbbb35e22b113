"""Batched client compute on CUDA against CPU (issue 17): the same jobs' updates four ways.

The reference is the one-job path on CPU (what every preset's bytes come from). For the paper
CNN on the bundled MNIST, B = 4 and 16, E = 1 and 3 local steps, 16 jobs on 4 versions:

- CPU batched vs the reference;
- CUDA one-job, CUDA batched vs the reference, in strict float32 (TF32 off), and CUDA batched
  vs CUDA one-job;
- CUDA batched vs the reference with torch's defaults (cuDNN convolutions in TF32 on Ampere and
  later: 10-bit mantissas, so about 1e-3 apart; reported, checked loosely);
- the worker's own check (``batched_jobs`` with ``client.batched=auto`` picks the batched path
  on CUDA) and the out-of-memory message (a tiny memory cap, then a batch that cannot fit);
- the server's rule chain (WKAFL's rules and FedAdam, K = 100, the paper CNN's P) on torch
  (``aggregation.backend=torch``) on the CPU and on CUDA against numpy: the same selections, the
  model within float32 tolerance.

The error of one comparison is max |a - b| / max |b| over the jobs' update vectors (and the
loss's relative difference). Without CUDA only the CPU comparison runs.

    python benchmarks/gpu_correctness.py     # prints JSON; exit status 1 if a check fails
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import torch

from rayfl.clients.batched import BatchedJobs, JobArgs, batched_jobs
from rayfl.clients.gpu import cap_memory, out_of_memory_as_error
from rayfl.clients.local import LocalTrainer, Result
from rayfl.clients.shipped import build_task
from rayfl.clients.task import DataSpec
from rayfl.config import ClientConfig, ModelConfig
from rayfl.data import load_bundled_mnist
from rayfl.errors import RayflError
from rayfl.models import build_model, get_flat

STRICT = 1e-4  # float32 on both sides, kernels summing in other orders
TF32 = 5e-2  # cuDNN's TF32 convolutions: a sanity bound, not a precision claim
SAMPLES_PER_CLIENT = 50


def trainer(device: str, batch_size: int, local_steps: int) -> LocalTrainer:
    """The paper CNN on the bundled MNIST's first 1,000 images, 20 clients of 50."""
    ds = load_bundled_mnist()
    x, y = ds.x_train[:1000], ds.y_train[:1000]
    spec = DataSpec.of(x, ds.num_classes, ds.mean, ds.std)
    model = build_model(ModelConfig("paper_cnn"), ds.input_shape, ds.num_classes, seed=0)
    return LocalTrainer(
        build_task("classification", {}, spec),
        "classification",
        model,
        x,
        y,
        np.arange(1000, dtype=np.int64),
        np.arange(0, 1001, SAMPLES_PER_CLIENT, dtype=np.int64),
        batch_size=batch_size,
        local_steps=local_steps,
        local_lr=0.05,
        seed=0,
        device=device,
    )


def jobs(w: np.ndarray) -> list[JobArgs]:
    """16 jobs of 16 clients on 4 versions (w and three perturbations of it)."""
    rng = np.random.default_rng(0)
    versions = [w] + [w + rng.normal(0, 0.01, w.shape).astype(np.float32) for _ in range(3)]
    return [JobArgs(c, c % 4, versions[c % 4]) for c in range(16)]


def error(got: list[Result], want: list[Result]) -> dict[str, float]:
    a = np.stack([r.vector for r in got])
    b = np.stack([r.vector for r in want])
    losses = np.array([r.loss for r in got]), np.array([r.loss for r in want])
    return {
        "update": float(np.abs(a - b).max() / np.abs(b).max()),
        "loss": float(np.abs(losses[0] - losses[1]).max() / np.abs(losses[1]).max()),
    }


def compare(batch_size: int, local_steps: int) -> dict[str, Any]:
    """One (B, E) case: each comparison's error."""
    cpu = trainer("cpu", batch_size, local_steps)
    todo = jobs(get_flat(cpu.model))
    ref = [cpu.update(*j) for j in todo]
    out: dict[str, Any] = {"batch_size": batch_size, "local_steps": local_steps}
    out["cpu_batched"] = error(BatchedJobs(cpu, 16).compute(todo), ref)
    if not torch.cuda.is_available():
        return out
    gpu = trainer("cuda", batch_size, local_steps)
    for strict in (True, False):
        torch.backends.cudnn.allow_tf32 = not strict  # torch's default is True
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default
        one = [gpu.update(*j) for j in todo]
        batched = BatchedJobs(gpu, 16).compute(todo)
        if strict:
            out["cuda_one_job"] = error(one, ref)
            out["cuda_batched"] = error(batched, ref)
            out["cuda_batched_vs_cuda_one_job"] = error(batched, one)
        else:
            out["cuda_batched_tf32"] = error(batched, ref)
    torch.backends.cudnn.allow_tf32 = True
    return out


def worker_checks() -> dict[str, Any]:
    """On CUDA: the worker's choice under auto, and the one-line out-of-memory error."""
    gpu = trainer("cuda", 16, 3)
    device = torch.device("cuda")
    chosen = batched_jobs(gpu, "auto", 16)[1]
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    cap_memory(device, 8 * 2**20 / total)  # 8 MiB: less than 16 jobs' stacked weights
    cfg = ClientConfig(num_gpus=0.25, batch_size=16, local_steps=3)
    message = ""
    try:
        with out_of_memory_as_error(device, cfg, 16):
            BatchedJobs(gpu, 16).compute(jobs(get_flat(gpu.model)))
    except RayflError as e:
        message = str(e)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"auto_path": chosen, "oom_message": message}


def chain_check(device: str, iterations: int = 6, k: int = 100) -> dict[str, Any]:
    """The WKAFL chain and FedAdam on torch (``device``) against numpy, from the same updates."""
    from rayfl.aggregation import OPTIMIZERS, RECIPES, build_rules, start_step
    from rayfl.aggregation.backend import Placement, to_host_tree

    rng = np.random.default_rng(0)
    p = 582_026  # the paper CNN
    base = rng.standard_normal(p).astype(np.float32)
    vectors = (base + 2.0 * rng.standard_normal((k, p))).astype(np.float32) * np.float32(0.01)
    vectors[::7] *= 20_000  # above momentum_clip's C1
    finals, selected = [], []
    for placement in (Placement("numpy"), Placement("torch", device)):
        rule, opt = build_rules(RECIPES["wkafl"]()), OPTIMIZERS["fedadam"]()
        w = placement.native(base.copy())
        rule_state, opt_state = rule.init(w), opt.init(w)
        picks = []
        for t in range(iterations):
            updates = placement.native(np.roll(vectors, t, axis=0))
            step = start_step(t + 1000, updates, np.arange(k) % 9, np.ones(k), 0.05)
            step, rule_state = rule.update(step, rule_state, w)
            w, opt_state = opt.apply(step, opt_state, w)
            rule_state = rule.commit(step, rule_state, w)
            picks.append(step.metrics["agg/selected"])
        finals.append(np.asarray(to_host_tree(w)))
        selected.append(picks)
    err = float(np.abs(finals[1] - finals[0]).max() / np.abs(finals[0]).max())
    return {"device": device, "model": err, "same_selections": selected[0] == selected[1]}


def correctness() -> dict[str, Any]:
    """Every case and whether all are within their tolerances (``ok``)."""
    cases = [compare(b, e) for b in (4, 16) for e in (1, 3)]
    ok = True
    for case in cases:
        for name, err in case.items():
            if isinstance(err, dict):
                bound = TF32 if name.endswith("tf32") else STRICT
                err["ok"] = err["update"] <= bound and err["loss"] <= bound
                ok = ok and err["ok"]
    out: dict[str, Any] = {"cuda": torch.cuda.is_available(), "cases": cases}
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    out["chain"] = [chain_check(d) for d in devices]
    for check in out["chain"]:
        check["ok"] = check["model"] <= STRICT and check["same_selections"]
        ok = ok and check["ok"]
    if torch.cuda.is_available():
        out["worker"] = worker_checks()
        ok = ok and out["worker"]["auto_path"] == "batched"
        ok = ok and "client.num_gpus=0.25" in out["worker"]["oom_message"]
    out["ok"] = ok
    return out


if __name__ == "__main__":
    result = correctness()
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)
