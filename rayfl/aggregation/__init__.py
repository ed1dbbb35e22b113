"""Aggregation: composable rules and server optimizers (optax-style, explicit state), the recipes
built from them, and the control rules of AKAFL-RJ."""

from rayfl.aggregation import arrays
from rayfl.aggregation.base import (
    STAGES,
    Rule,
    ServerOptimizer,
    Step,
    chain,
    final_direction,
    start_step,
)
from rayfl.aggregation.build import (
    RULES,
    build_optimizer,
    build_rule_list,
    build_rules,
    init_rule_state,
    normalize_rules,
    rule_entries,
    rule_names,
)
from rayfl.aggregation.optimizers import OPTIMIZERS, sgd
from rayfl.aggregation.recipes import RECIPES, kasync, wkafl
from rayfl.aggregation.rules import (
    EmptyState,
    MomentumState,
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
    "arrays",
    "OPTIMIZERS",
    "RECIPES",
    "RULES",
    "STAGES",
    "EmptyState",
    "MomentumState",
    "Rule",
    "ServerOptimizer",
    "Step",
    "build_optimizer",
    "build_rule_list",
    "build_rules",
    "chain",
    "clip_by_norm",
    "constant_lr",
    "estimate",
    "final_direction",
    "init_rule_state",
    "kasync",
    "mean",
    "momentum_clip",
    "normalize_rules",
    "rule_entries",
    "rule_names",
    "sgd",
    "similarity_select",
    "stage_two_clip",
    "staleness_lr",
    "staleness_weights",
    "start_step",
    "weighted_sum",
    "wkafl",
]
