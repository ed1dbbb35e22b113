"""Plain synchronous FedAvg (McMahan et al. 2017) in one process: the baseline of ``short.py``.

What a user would write without rayfl: one PyTorch loop, no Ray. Each round draws M clients,
runs E local epochs of mini-batch SGD from w(t) for each in turn, and sets w(t+1) to the
size-weighted mean of their weights; the model is evaluated once, after the last round, and
saved. It uses rayfl's bundled MNIST loader and partitioner (same data), rayfl's model factory
(same initial weights) and the same seeded draws as ``mode: sync`` with ``selection.kind:
random`` (same clients, same mini-batches), so its final accuracy matches rayfl's up to float
rounding (torch's thread count changes the order of the convolution's sums).

    python benchmarks/plain_fedavg.py [--rounds 10] [--threads N] [--out DIR]

Heavy imports happen inside :func:`main`, so a caller timing the process counts them.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

SEED = 0
NUM_CLIENTS = 100
SHARDS_PER_CLIENT = 2
SHARD_SIZE = 300
CLIENTS_PER_ROUND = 10  # M
EPOCHS = 1  # E
LR = 0.05
BATCH = 32
EVAL_SAMPLES = 2000
EVAL_BATCH = 1000
# rayfl.seeding's stream ids, so the draws are rayfl's: selection, local shuffles, eval subset.
SELECTION, ROUND_BATCH, EVAL_SUBSET = 22, 24, 5


class Marks:
    """Wall-clock timestamps (time.time(), seconds since the epoch) of named moments."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def mark(self, name: str) -> None:
        self.at[name] = time.time()

    def span(self, name: str, start: float, end: float) -> None:
        self.spans.setdefault(name, []).append((start, end))


def rng(*ids: int) -> Any:
    import numpy as np

    return np.random.default_rng([SEED, *ids])


def local_epochs(model: Any, x: Any, y: Any, own: Any, client: int, t: int, norm: Any) -> Any:
    """E epochs of SGD on one client's samples ``own``; returns its flat weights (P,)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    draw = rng(ROUND_BATCH, client, t)
    for _ in range(EPOCHS):
        order = own[draw.permutation(own.size)]
        for start in range(0, order.size, BATCH):
            take = np.sort(order[start : start + BATCH])
            xb = norm(torch.from_numpy(x[take]).float())
            loss = F.cross_entropy(model(xb), torch.from_numpy(y[take]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().double()


def evaluate(model: Any, x: Any, y: Any, norm: Any) -> float:
    """Accuracy on ``EVAL_SAMPLES`` seeded test images (rayfl's ``eval.max_samples`` subset)."""
    import numpy as np
    import torch

    pick = np.sort(rng(EVAL_SUBSET).choice(len(y), size=EVAL_SAMPLES, replace=False))
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, pick.size, EVAL_BATCH):
            take = pick[start : start + EVAL_BATCH]
            logits = model(norm(torch.from_numpy(x[take]).float()))
            correct += int((logits.argmax(1) == torch.from_numpy(y[take])).sum())
    return correct / pick.size


def fedavg(rounds: int, threads: int | None, out: str | None, marks: Marks) -> dict[str, Any]:
    """The whole experiment; records the end of each phase in ``marks``."""
    import torch

    from rayfl.config import ModelConfig
    from rayfl.data import load_dataset, partition
    from rayfl.models import build_model

    if threads:
        torch.set_num_threads(threads)
    marks.mark("imports")
    ds = load_dataset("mnist")
    part = partition(
        ds.y_train, "shards", NUM_CLIENTS, SEED, shards_per_client=SHARDS_PER_CLIENT,
        shard_size=SHARD_SIZE,
    )  # fmt: skip
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:  # uint8 0-255 -> (x / 255 - mean) / std
        return (x / 255.0 - mean) / std

    marks.mark("data")
    model = build_model(ModelConfig(name="paper_cnn"), ds.input_shape, ds.num_classes, SEED)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    marks.mark("model")
    for t in range(rounds):
        started = time.time()
        chosen = rng(SELECTION, t).choice(NUM_CLIENTS, size=CLIENTS_PER_ROUND, replace=False)
        total = torch.zeros(w.numel(), dtype=torch.float64)
        sizes = [int(part.offsets[c + 1] - part.offsets[c]) for c in chosen]
        for c, size in zip(chosen, sizes, strict=True):
            torch.nn.utils.vector_to_parameters(w.clone(), model.parameters())
            own = part.indices[part.offsets[c] : part.offsets[c + 1]]
            total += (
                size
                / sum(sizes)
                * local_epochs(model, ds.x_train, ds.y_train, own, int(c), t, norm)
            )
        w = total.float()
        marks.span("round", started, time.time())
    torch.nn.utils.vector_to_parameters(w.clone(), model.parameters())
    accuracy = evaluate(model, ds.x_test, ds.y_test, norm)
    marks.mark("eval")
    if out:
        torch.save(model.state_dict(), f"{out}/model.pt")
    marks.mark("saved")
    return {"final_accuracy": accuracy, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--out", help="folder for model.pt")
    parser.add_argument("--json", help="write the phase timestamps and results here")
    args = parser.parse_args()
    marks = Marks()
    marks.mark("start")
    result = fedavg(args.rounds, args.threads, args.out, marks)
    print(f"{args.rounds} rounds, final accuracy {result['final_accuracy']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"marks": marks.at, "spans": marks.spans, **result}, f)


if __name__ == "__main__":
    main()
