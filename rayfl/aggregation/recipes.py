"""Recipes: the ``aggregation.rules`` lists of the paper's baselines (AKAFL-RJ spec sections 1, 3).

A recipe is data, not a class: an ordered list of ``{rule name: parameters}``, exactly what a
preset YAML holds under ``aggregation.rules`` and what :func:`~rayfl.aggregation.build.build_rules`
chains. Every recipe ends with exactly one lr rule, so every run records ``agg/lr``.

- ``kasync``: K-async SGD (Dutta et al., AISTATS 2018): plain average, fixed learning rate.
- ``wkafl``: WKAFL (Zhou et al., IEEE TPDS 2022), spec section 3 steps 2-9 with its defaults.

AKAFL, AKAFL-R and AKAFL-RJ aggregate with the ``wkafl`` chain; what they add (adaptive K,
remodel, judgement) are control rules of the server loop, configured outside this mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

RuleSpec = list[dict[str, dict[str, Any]]]


def kasync() -> RuleSpec:
    """K-async SGD: g_t = mean_i g_i, eta_t = eta."""
    return [{"mean": {}}, {"weighted_sum": {}}, {"constant_lr": {}}]


def wkafl(
    alpha: float = 0.1,
    c1: float = 100.0,
    lam: float = 1.0 - math.log(2.0),
    c_min: float = 0.3,
    beta: float = 10.0,
    c2: float = 10.0,
    t2: int = 1000,
    gamma: float = 0.1,
    lr_form: str = "inverse",
) -> RuleSpec:
    """WKAFL (spec 3.2-3.9): momentum and clip, staleness weights, estimate, similarity selection,
    stage-two clip, weighted sum, staleness-aware learning rate. Defaults are the spec's."""
    return [
        {"momentum_clip": {"alpha": alpha, "c1": c1}},
        {"staleness_weights": {"lam": lam}},
        {"estimate": {}},
        {"similarity_select": {"c_min": c_min, "beta": beta}},
        {"stage_two_clip": {"c2": c2, "t2": t2}},
        {"weighted_sum": {}},
        {"staleness_lr": {"gamma": gamma, "form": lr_form}},
    ]


def fedavg() -> RuleSpec:
    """FedAvg's server step (McMahan et al. 2017), the default of ``mode: sync``: the weighted
    mean of the pseudo-gradients w(t) - w_i with |D_i| weights and the server lr (1 = FedAvg)."""
    return [{"weighted_sum": {}}, {"constant_lr": {}}]


RECIPES: dict[str, Callable[..., RuleSpec]] = {"kasync": kasync, "wkafl": wkafl, "fedavg": fedavg}
