"""Aggregation: composable rules (optax-style ``(init, update)`` pairs) and the recipes built from them."""

from rayfl.aggregation.base import Rule, Step, chain, final_direction, start_step
from rayfl.aggregation.recipes import RECIPES, kasync, wkafl
from rayfl.aggregation.rules import (
    RULES,
    EmptyState,
    build_rules,
    clip_by_norm,
    constant_lr,
    estimate,
    mean,
    momentum_clip,
    similarity_select,
    stage_two_clip,
    staleness_lr,
    staleness_weights,
    weighted_sum,
)

__all__ = [
    "RECIPES",
    "RULES",
    "EmptyState",
    "Rule",
    "Step",
    "build_rules",
    "chain",
    "clip_by_norm",
    "constant_lr",
    "estimate",
    "final_direction",
    "kasync",
    "mean",
    "momentum_clip",
    "similarity_select",
    "stage_two_clip",
    "staleness_lr",
    "staleness_weights",
    "start_step",
    "weighted_sum",
    "wkafl",
]
