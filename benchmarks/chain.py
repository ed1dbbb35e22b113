"""The server's rule chain alone: time per update of one K-async aggregation, no Ray.

Profile (issue 17's scale profile): the ``wkafl`` preset's chain (momentum_clip,
staleness_weights, estimate, similarity_select, stage_two_clip, weighted_sum, staleness_lr) and
SGD, K = 100 updates of P = 25,450 floats (the 784-32-10 MLP), staleness 0-4, as the server's
``aggregate`` runs them (the stack of the K arriving vectors included). Every fifth update is
scaled above momentum_clip's C1, so the clipping path runs too. It reports the median over
``--repeats`` blocks of ``--iterations`` iterations of the wall time per iteration and per update.

    python benchmarks/chain.py [--iterations 200] [--repeats 5] [--json out.json]
                               [--backend numpy|torch] [--device cpu|cuda] [--params P]

``--backend torch --device cuda`` runs the chain on a GPU (``aggregation.backend``): the stack
of K updates crosses to the device once per iteration and w_{t+1} comes back once, both timed;
``--params 582026`` is the paper CNN's size.

Run it from two checkouts (``PYTHONPATH=<tree>``) to compare code side by side: the bytes of
the final model are printed, so a change that should keep them can be checked at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import time

import numpy as np

from rayfl.aggregation.backend import Placement
from rayfl.aggregation.base import chain
from rayfl.aggregation.build import build_optimizer, build_rule_list, init_rule_state
from rayfl.config import load_config
from rayfl.server.aggregate import aggregate
from rayfl.types import Update

K, P = 100, 25_450


def make_updates(rng: np.random.Generator, params: int) -> np.ndarray:
    """200 update vectors to draw the K of each iteration from; every fifth above C1 = 100."""
    vectors = (rng.standard_normal((200, params)) * 0.01).astype(np.float32)
    vectors[::5] *= 10_000
    return vectors


def run_block(iterations: int, start: int, state: dict) -> float:
    """Runs ``iterations`` aggregations from iteration ``start``; seconds of wall time."""
    rule, opt, vectors = state["rule"], state["opt"], state["vectors"]
    tick = time.perf_counter()
    for t in range(start, start + iterations):
        updates = [
            Update(i, max(0, t - i % 5), vectors[(t * 7 + i) % len(vectors)], 0.5) for i in range(K)
        ]
        agg = aggregate(
            rule, state["rule_state"], opt, state["opt_state"], t, updates, state["w"], 0.05,
            state["placement"], seed=0, num_clients=1000, local_models=None,
        )  # fmt: skip
        state["rule_state"] = rule.commit(agg.step, agg.rule_state, agg.candidate_native)
        state["w"], state["opt_state"] = agg.candidate_native, agg.optimizer_state
        state["w_host"] = agg.candidate
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    parser.add_argument("--device", default="cpu", help="the torch backend's device")
    parser.add_argument("--params", type=int, default=P, help="P, the model's size")
    args = parser.parse_args()
    cfg = load_config("wkafl", ["model.name=mlp", "model.hidden=[32]", f"aggregation.k={K}"])
    rules = build_rule_list(cfg.aggregation.rules)
    rng = np.random.default_rng(0)
    w = rng.standard_normal(args.params).astype(np.float32)
    opt = build_optimizer(cfg.aggregation.optimizer)
    placement = Placement(args.backend, args.device)
    w_native = placement.native(w)
    state = {
        "rule": chain(*(r for _, r in rules)),
        "rule_state": init_rule_state(rules, w_native),
        "opt": opt,
        "opt_state": opt.init(w_native),
        "w": w_native,
        "w_host": w,
        "placement": placement,
        "vectors": make_updates(rng, args.params),
    }
    run_block(5, 0, state)  # warm-up: imports, first allocations
    seconds = [
        run_block(args.iterations, 5 + r * args.iterations, state) / args.iterations
        for r in range(args.repeats)
    ]
    per_iteration = statistics.median(seconds)
    result = {
        "k": K,
        "params": args.params,
        "backend": repr(placement),
        "ms_per_iteration": round(per_iteration * 1e3, 3),
        "ms_per_update": round(per_iteration * 1e3 / K, 4),
        "blocks_ms_per_iteration": [round(s * 1e3, 3) for s in seconds],
        "final_weights_sha256": hashlib.sha256(state["w_host"].tobytes()).hexdigest(),
        "machine": f"{platform.machine()}, {platform.processor() or platform.platform()}",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
