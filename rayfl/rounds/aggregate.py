"""The server's aggregation step of a synchronous round: FedAvg, or any rule chain and server
optimizer (FedAvgM, FedAdam, FedYogi, DP-FedAvg, SCAFFOLD's control variate, a user's).

The selected clients return their trained weights w_i. The chain sees the *pseudo-gradients*
Delta_i = w(t) - w_i (K, P) float32 with FedAvg's weights |D_i| / sum_j |D_j|, zero staleness, the
run's seed and N; the server optimizer makes w(t+1) from w(t) and the chain's direction and
``aggregation.lr`` (the server learning rate eta_g). SGD at eta_g = 1 on the plain weighted mean is
FedAvg, w(t+1) = sum_i |D_i| w_i / sum_j |D_j|, and for that chain (the default of ``mode: sync``)
the server takes the weighted average itself, in float64 as rayfl always has: that is what
w(t) - 1 * (w(t) - avg) computes up to the last bit, and it keeps every synchronous preset's
bytes. Every other chain runs as above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfl.aggregation import (
    arrays,
    build_optimizer,
    build_rule_list,
    chain,
    init_rule_state,
    normalize_rules,
    start_step,
)
from rayfl.aggregation.backend import Placement, to_host_tree
from rayfl.aggregation.backend import choose as choose_backend
from rayfl.aggregation.build import checkpointable, entry
from rayfl.aggregation.recipes import fedavg
from rayfl.clients.rounds import RoundUpdate
from rayfl.config import ExperimentConfig
from rayfl.server.aggregate import check_finite, stacked_reports


def is_plain_fedavg(cfg: ExperimentConfig) -> bool:
    """The default synchronous aggregation: the ``fedavg`` recipe, server SGD at lr 1."""
    agg = cfg.aggregation
    return (
        normalize_rules(agg.rules) == fedavg()
        and entry("aggregation.optimizer", agg.optimizer) == ("sgd", {})
        and agg.lr == 1.0
    )


class RoundAggregator:
    """The rule chain, the server optimizer and their states for synchronous rounds."""

    def __init__(self, cfg: ExperimentConfig, w: np.ndarray):
        self.cfg = cfg
        self.plain = is_plain_fedavg(cfg)
        rules = build_rule_list(cfg.aggregation.rules)  # imports user rules in this process
        self.rule = chain(*(r for _, r in rules))
        self.optimizer = build_optimizer(cfg.aggregation.optimizer)
        # The rounds server has no GPU (it aggregates once a round): auto is numpy here, torch
        # runs on its CPU.
        optimizer = ("aggregation.optimizer", self.optimizer)
        kind = choose_backend(cfg.aggregation.backend, rules, optimizer, has_gpu=False)
        self.placement = Placement(kind, "cpu")
        w_native = self.placement.native(w)
        self.rule_state = init_rule_state(rules, w_native)
        self.optimizer_state = checkpointable(
            "aggregation.optimizer", self.optimizer.init(w_native)
        )
        self.last_metrics: dict[str, float] = {}  # the last round's agg/* and dp/* metrics

    def broadcast(self) -> dict[str, np.ndarray] | None:
        """What the rules send to the clients with w(t) (Rule.broadcast), or None."""
        if self.rule.broadcast is None:
            return None
        return dict(to_host_tree(self.rule.broadcast(self.rule_state)))

    def aggregate(
        self, t: int, w: np.ndarray, updates: Sequence[RoundUpdate]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """w(t+1) from w(t) and the round's updates, and the chain's metrics (none for plain
        FedAvg, whose rows keep their columns)."""
        sizes = np.array([u.num_samples for u in updates], dtype=np.float64)
        weights = sizes / sizes.sum()
        if self.plain:
            avg = np.zeros(w.size, dtype=np.float64)
            for p, u in zip(weights, updates, strict=True):
                avg += p * u.weights
            return avg.astype(np.float32), {}
        models = np.stack([u.weights for u in updates])
        native = self.placement.native
        step = start_step(
            t,
            native((w[None, :] - models).astype(np.float32, copy=False)),
            np.zeros(len(updates), dtype=np.int64),
            [u.loss for u in updates],
            self.cfg.aggregation.lr,
            [u.client_id for u in updates],
            weights=weights,
            reports=stacked_reports([u.report for u in updates]),
            seed=self.cfg.seed,
            num_clients=self.cfg.data.num_clients,
            local_models=lambda: native(models),
        )
        w_native = native(w)
        step, rule_state = self.rule.update(step, self.rule_state, w_native)
        made, self.optimizer_state = self.optimizer.apply(step, self.optimizer_state, w_native)
        new = np.asarray(arrays.to_host(made))
        check_finite(t, new, self.cfg)
        self.rule_state = self.rule.commit(step, rule_state, made)
        self.last_metrics = {
            k: float(v) for k, v in step.metrics.items() if k.startswith(("agg/", "dp/"))
        }
        return new, self.last_metrics

    def privacy(self) -> dict[str, float]:
        """The privacy spent so far, from the last round's ``dp/*`` metrics (DP-FedAvg's
        ``dp_noise``): {"epsilon", "delta", "noise_std"}; empty without one."""
        return {k[3:]: v for k, v in self.last_metrics.items() if k.startswith("dp/")}

    def checkpoint(self) -> dict[str, Any]:
        return {
            "rule_state": to_host_tree(self.rule_state),
            "optimizer_state": to_host_tree(self.optimizer_state),
        }

    def restore(self, state: dict[str, Any], conform: Any) -> None:
        """Continues from :meth:`checkpoint`'s state (missing in checkpoints of plain FedAvg
        from before rule chains ran in rounds: their states were empty)."""
        if "rule_state" in state:
            place = self.placement.native_tree
            self.rule_state = place(
                conform(state["rule_state"], to_host_tree(self.rule_state), "aggregation.rules")
            )
            self.optimizer_state = place(
                conform(
                    state["optimizer_state"],
                    to_host_tree(self.optimizer_state),
                    "aggregation.optimizer",
                )
            )
