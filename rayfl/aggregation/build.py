"""From a config's ``aggregation.rules`` list and ``aggregation.optimizer`` to working objects.

Both are written the same way, as *entries*: a name (``weighted_sum``) or a one-key mapping
``{name: {param: value}}``, where a name is a shipped one or an import path
``package.module:factory`` to a user's own (resolved by :mod:`rayfl.registry` in the process that
runs it: the server actor). ``aggregation.rules`` is an ordered list, so a rule may repeat; the
mapping form of earlier versions (``{momentum_clip: {...}, weighted_sum: {}}``) is still read.

The chain's shape is checked here, once, with one-line errors: rules stand in stage order
(:data:`~rayfl.aggregation.base.STAGES`: per-update rules, at most one aggregator, direction
rules, at most one lr rule), a factory returns a rule whose functions take the right arguments,
and a rule's state can be checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayfl.aggregation.backend import to_host_tree
from rayfl.aggregation.base import BACKENDS, STAGES, Rule, ServerOptimizer, chain
from rayfl.aggregation.optimizers import OPTIMIZERS
from rayfl.aggregation.privacy import PRIVACY_RULES
from rayfl.aggregation.rules import RULES as CORE_RULES
from rayfl.aggregation.scaffold import SCAFFOLD_RULES
from rayfl.errors import ConfigError
from rayfl.registry import build, check_callable, check_shape

RULES = {**CORE_RULES, **PRIVACY_RULES, **SCAFFOLD_RULES}
"""Every shipped rule, by name: the spec's (rules.py), DP-FedAvg's (privacy.py), SCAFFOLD's."""
RULES_FIELD = "aggregation.rules"
RULE_METHODS = {"init": "init(params)", "update": "update(step, state, params)"}
OPTIMIZER_METHODS = {"init": "init(params)", "apply": "apply(step, state, params)"}
OPTIMIZER_FIELD = "aggregation.optimizer"


def entry(field: str, item: Any) -> tuple[str, dict[str, Any]]:
    """``name`` or ``{name: params}`` -> (name, params)."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, Mapping) and len(item) == 1:
        ((name, params),) = item.items()
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ConfigError(
                f"{field.split('[')[0]}.{name}={params!r} must be a mapping of parameters: write "
                f"`{name}: {{}}` for the defaults"
            )
        return str(name), dict(params)
    raise ConfigError(
        f"{field}={item!r} is not an entry: write a name (`weighted_sum`) or a one-key mapping "
        "(`similarity_select: {beta: 10}`)"
    )


def rule_entries(spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (name, params) pairs of ``aggregation.rules``: a list of entries, or a mapping."""
    if isinstance(spec, Mapping):  # the mapping form of rayfl <= 0.x: one entry per key
        spec = [{name: params} for name, params in spec.items()]
    if not isinstance(spec, Sequence) or isinstance(spec, str):
        raise ConfigError(
            f"{RULES_FIELD} must be a list of rules, got {type(spec).__name__}: write e.g. "
            "`rules: [mean, weighted_sum, constant_lr]`"
        )
    if not spec:
        raise ConfigError(f"{RULES_FIELD} is empty: list the rules to chain, e.g. a recipe: kasync")
    return [entry(f"{RULES_FIELD}[{i}]", item) for i, item in enumerate(spec)]


def rule_names(spec: Any) -> list[str]:
    """The rules' names in chain order, e.g. ``['mean', 'weighted_sum', 'constant_lr']``."""
    return [name for name, _ in rule_entries(spec)]


def normalize_rules(spec: Any) -> list[dict[str, dict[str, Any]]]:
    """``aggregation.rules`` in its one written form, a list of ``{name: params}``."""
    return [{name: params} for name, params in rule_entries(spec)]


def build_rule_list(spec: Any) -> list[tuple[str, Rule]]:
    """Builds every rule of ``aggregation.rules``; (field, rule) pairs in chain order.

    Raises:
        ConfigError: a bad entry, an unknown name or import path, a bad parameter, a factory
            that does not return a rule, or rules out of stage order.
    """
    out = []
    for i, (name, params) in enumerate(rule_entries(spec)):
        field = f"{RULES_FIELD}.{name}"
        rule = build(f"{RULES_FIELD}[{i}]", name, RULES, params, "rule", params_field=field)
        out.append((f"{RULES_FIELD}[{i}] {name}", _checked_rule(field, rule)))
    check_stages(out)
    return out


def build_rules(spec: Any) -> Rule:
    """The chain of ``aggregation.rules``, as one :class:`Rule`."""
    return chain(*(rule for _, rule in build_rule_list(spec)))


def check_stages(rules: Sequence[tuple[str, Rule]]) -> None:
    """Rules in :data:`STAGES` order, at most one aggregator and one lr rule; else ConfigError."""
    last = 0
    seen: dict[str, str] = {}
    for where, rule in rules:
        stage = STAGES.index(rule.stage)
        if stage < last:
            before = next(w for w, r in rules if STAGES.index(r.stage) == last)
            raise ConfigError(
                f"{where} (stage {rule.stage}) comes after {before} (stage {STAGES[last]}): "
                f"order the rules by stage: {' -> '.join(STAGES)}"
            )
        if rule.stage in ("aggregate", "lr") and rule.stage in seen:
            raise ConfigError(
                f"{where} is a second {rule.stage} rule after {seen[rule.stage]}: a chain has "
                f"at most one; remove one of them"
            )
        seen.setdefault(rule.stage, where)
        last = stage


def init_rule_state(rules: Sequence[tuple[str, Rule]], params: np.ndarray) -> tuple[Any, ...]:
    """The chain's initial state (as ``chain(...).init``), each rule's checked to pickle."""
    return tuple(checkpointable(where, r.init(params)) for where, r in rules)


def build_optimizer(spec: Any) -> ServerOptimizer:
    """The server optimizer of ``aggregation.optimizer`` (a name or ``{name: params}``)."""
    name, params = entry(OPTIMIZER_FIELD, spec)
    field = f"{OPTIMIZER_FIELD}.{name}" if params else OPTIMIZER_FIELD
    opt = build(field, name, OPTIMIZERS, params, "server optimizer")
    check_shape(f"{OPTIMIZER_FIELD}={name!r}", opt, "ServerOptimizer", OPTIMIZER_METHODS)
    return ServerOptimizer(opt.init, opt.apply, _checked_backends(field, opt))


def checkpointable(where: str, state: Any) -> Any:
    """``state`` if a checkpoint can store it without pickle (:mod:`rayfl.runtime.safestate`),
    else a ConfigError naming ``where``."""
    from rayfl.runtime.safestate import UnsafeState, encode

    try:
        encode(to_host_tree(state), {}, "state")
    except UnsafeState as e:
        raise ConfigError(
            f"{where}: its state ({type(state).__name__}) cannot be checkpointed: {e}"
        ) from None
    return state


def _checked_rule(field: str, rule: Any) -> Rule:
    """A factory's product as a Rule, after checking its shape."""
    check_shape(field, rule, "Rule", RULE_METHODS)
    stage = getattr(rule, "stage", "updates")
    if stage not in STAGES:
        raise ConfigError(f"{field}: its stage {stage!r} is not one of {', '.join(STAGES)}")
    commit = getattr(rule, "commit", None)
    if commit is None:
        commit = Rule(rule.init, rule.update).commit  # the default: state unchanged
    else:
        check_callable(field, commit, "its commit(step, state, params)", 3)
    broadcast = getattr(rule, "broadcast", None)
    if broadcast is not None:
        check_callable(field, broadcast, "its broadcast(state)", 1)
    return Rule(rule.init, rule.update, stage, commit, broadcast, _checked_backends(field, rule))


def _checked_backends(field: str, part: Any) -> tuple[str, ...]:
    """A rule's or optimizer's ``backends`` (default numpy only), checked."""
    backends = getattr(part, "backends", ("numpy",))
    if isinstance(backends, str):
        backends = (backends,)
    backends = tuple(backends)
    if not backends or any(b not in BACKENDS for b in backends):
        raise ConfigError(
            f"{field}: its backends {backends!r} must name one or more of {', '.join(BACKENDS)}"
        )
    return backends
